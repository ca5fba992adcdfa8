"""Family → protocol implementation."""

from __future__ import annotations

from tollhouse.providers.anthropic import AnthropicProtocol
from tollhouse.providers.base import ProviderProtocol
from tollhouse.providers.family import Family
from tollhouse.providers.gemini import GeminiProtocol
from tollhouse.providers.openai import OpenAIProtocol

_PROTOCOLS: dict[Family, ProviderProtocol] = {
    Family.openai: OpenAIProtocol(),
    Family.anthropic: AnthropicProtocol(),
    Family.gemini: GeminiProtocol(),
}


def protocol_for(family: Family) -> ProviderProtocol:
    return _PROTOCOLS[family]
