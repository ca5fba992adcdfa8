"""API families: every configured provider speaks one of these wire protocols."""

from enum import StrEnum


class Family(StrEnum):
    openai = "openai"
    anthropic = "anthropic"
    gemini = "gemini"
