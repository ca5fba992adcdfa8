"""Tollhouse: an AI usage governance gateway."""

__version__ = "0.1.0"
