"""Known AI API hosts and their vendors: what `GET /api/v1/hosts` flags as `known_ai`.

Maintained by hand; an entry is an exact host or a pattern whose `*` stands for one or more labels
(`bedrock-runtime.*.amazonaws.com` covers every region). Add a vendor here when a new one appears in the
hosts list of a fleet.
"""

from __future__ import annotations

import re
from functools import lru_cache

# (host pattern, vendor)
CATALOGUE: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "OpenAI"),
    ("chatgpt.com", "OpenAI"),
    ("*.chatgpt.com", "OpenAI"),
    ("chat.openai.com", "OpenAI"),
    ("*.openai.azure.com", "Azure OpenAI"),
    ("*.services.ai.azure.com", "Azure AI Foundry"),
    ("*.cognitiveservices.azure.com", "Azure AI Services"),
    ("api.anthropic.com", "Anthropic"),
    ("claude.ai", "Anthropic"),
    ("generativelanguage.googleapis.com", "Google Gemini"),
    ("aiplatform.googleapis.com", "Google Vertex AI"),
    ("*-aiplatform.googleapis.com", "Google Vertex AI"),
    ("gemini.google.com", "Google Gemini"),
    ("cloudcode-pa.googleapis.com", "Google Gemini Code Assist"),
    ("bedrock-runtime.*.amazonaws.com", "AWS Bedrock"),
    ("bedrock.*.amazonaws.com", "AWS Bedrock"),
    ("bedrock-agent-runtime.*.amazonaws.com", "AWS Bedrock"),
    ("api.mistral.ai", "Mistral"),
    ("codestral.mistral.ai", "Mistral"),
    ("api.cohere.com", "Cohere"),
    ("api.cohere.ai", "Cohere"),
    ("api.groq.com", "Groq"),
    ("api.together.xyz", "Together AI"),
    ("api.together.ai", "Together AI"),
    ("api.fireworks.ai", "Fireworks AI"),
    ("api.deepseek.com", "DeepSeek"),
    ("api.perplexity.ai", "Perplexity"),
    ("api.x.ai", "xAI"),
    ("openrouter.ai", "OpenRouter"),
    ("api-inference.huggingface.co", "Hugging Face"),
    ("router.huggingface.co", "Hugging Face"),
    ("*.endpoints.huggingface.cloud", "Hugging Face"),
    ("api.replicate.com", "Replicate"),
    ("api.ai21.com", "AI21 Labs"),
    ("api.cerebras.ai", "Cerebras"),
    ("api.sambanova.ai", "SambaNova"),
    ("api.deepinfra.com", "DeepInfra"),
    ("api.voyageai.com", "Voyage AI"),
    ("api.elevenlabs.io", "ElevenLabs"),
    ("api.stability.ai", "Stability AI"),
    ("api.moonshot.ai", "Moonshot AI"),
    ("dashscope.aliyuncs.com", "Alibaba Qwen"),
    ("dashscope-intl.aliyuncs.com", "Alibaba Qwen"),
    ("api.githubcopilot.com", "GitHub Copilot"),
    ("*.githubcopilot.com", "GitHub Copilot"),
    ("copilot-proxy.githubusercontent.com", "GitHub Copilot"),
    ("api2.cursor.sh", "Cursor"),
    ("*.cursor.sh", "Cursor"),
    ("api.codeium.com", "Codeium / Windsurf"),
    ("server.codeium.com", "Codeium / Windsurf"),
    ("api.tabnine.com", "Tabnine"),
    ("api.jina.ai", "Jina AI"),
)


def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("[a-z0-9.-]+" if part == "*" else re.escape(part)
                              for part in re.split(r"(\*)", pattern)) + r"\Z")


@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((_regex(pattern), vendor) for pattern, vendor in CATALOGUE)


def vendor_of(host: str) -> str | None:
    """The vendor of a known AI API host, or None."""
    host = host.lower().rstrip(".")
    for regex, vendor in _compiled():
        if regex.match(host):
            return vendor
    return None
