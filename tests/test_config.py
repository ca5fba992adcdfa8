"""The configuration file: defaults, YAML quirks, custom providers, and errors that say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tollhouse.config import ConfigError, Enforcement, Settings, load_settings, parse_settings
from tollhouse.providers.family import Family

OFFICIAL = {
    "openai": ("https://api.openai.com", Family.openai),
    "anthropic": ("https://api.anthropic.com", Family.anthropic),
    "gemini": ("https://generativelanguage.googleapis.com", Family.gemini),
}


def write(tmp_path: Path, text: str, name: str = "tollhouse.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def official_upstreams(settings: Settings) -> dict[str, tuple[str, Family]]:
    return {pid: (cfg.upstream, cfg.family) for pid, cfg in settings.providers.items() if pid in OFFICIAL}


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)
    assert settings.enforcement is Enforcement.off
    assert official_upstreams(settings) == OFFICIAL
    assert settings.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert settings.providers["anthropic"].api_key_env == "ANTHROPIC_API_KEY"
    assert settings.providers["gemini"].api_key_env == "GEMINI_API_KEY"


def test_file_without_providers_section_still_has_the_official_providers(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "capture_mode: telemetry\n"))
    assert official_upstreams(settings) == OFFICIAL


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    assert settings.enforcement is Enforcement.off
    assert official_upstreams(settings) == OFFICIAL


@pytest.mark.parametrize(("text", "expected"), [
    ("enforcement: on\n", Enforcement.on),
    ("enforcement: off\n", Enforcement.off),
    ("enforcement: 'on'\n", Enforcement.on),
    ("enforcement: yes\n", Enforcement.on),
])
def test_yaml_enforcement_booleans(tmp_path: Path, text: str, expected: Enforcement) -> None:
    assert load_settings(write(tmp_path, text)).enforcement is expected


def test_json_config(tmp_path: Path) -> None:
    path = write(tmp_path, '{"enforcement": "on", "providers": {"openai": {"api_key": "sk-x"}}}', "cfg.json")
    settings = load_settings(path)
    assert settings.enforcement is Enforcement.on
    assert settings.providers["openai"].resolve_api_key() == "sk-x"


def test_custom_openai_compatible_provider(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "providers:\n"
        "  groq:\n"
        "    upstream: https://api.groq.com/openai/\n"
        "    family: openai\n"
        "    api_key_env: GROQ_API_KEY\n"
    ))
    settings = load_settings(path)
    groq = settings.providers["groq"]
    assert groq.upstream == "https://api.groq.com/openai"  # trailing slash dropped
    assert groq.family is Family.openai
    assert groq.api_key_env == "GROQ_API_KEY"
    assert settings.price_provider_id("groq") == "groq"
    # Adding a provider does not remove the official ones.
    assert official_upstreams(settings) == OFFICIAL


def test_overriding_one_field_of_an_official_provider_keeps_the_rest() -> None:
    settings = parse_settings({"providers": {"anthropic": {"api_key": "sk-ant-real", "timeout_s": 30}}}, "t")
    anthropic = settings.providers["anthropic"]
    assert anthropic.upstream == "https://api.anthropic.com"
    assert anthropic.family is Family.anthropic
    assert anthropic.resolve_api_key() == "sk-ant-real"
    assert anthropic.timeout_s == 30


def test_price_provider_ids() -> None:
    settings = parse_settings({"providers": {"vertex": {"upstream": "https://x.example", "family": "gemini",
                                                       "price_provider": "google"}}}, "t")
    assert settings.price_provider_id("gemini") == "google"
    assert settings.price_provider_id("openai") == "openai"
    assert settings.price_provider_id("vertex") == "google"


def test_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = parse_settings({"providers": {"openai": {"api_key_env": "TOLLHOUSE_TEST_OPENAI_KEY"}}}, "t")
    monkeypatch.delenv("TOLLHOUSE_TEST_OPENAI_KEY", raising=False)
    assert settings.providers["openai"].resolve_api_key() is None
    monkeypatch.setenv("TOLLHOUSE_TEST_OPENAI_KEY", "sk-env")
    assert settings.providers["openai"].resolve_api_key() == "sk-env"


# --------------------------------------------------------------------------------------------
# Errors: the message names the file and the key path.

SHA = "a" * 64


@pytest.mark.parametrize(("data", "where", "what"), [
    ({"enforcment": "on"}, "enforcment", "unknown key"),
    ({"providers": {"openai": {"upstrem": "https://x.example"}}}, "providers.openai.upstrem", "unknown key"),
    ({"directory": {"teams": [{"id": "a", "colour": "red"}]}}, "directory.teams[0].colour", "unknown key"),
    ({"enforcement": "maybe"}, "enforcement", "'off' or 'on'"),
    ({"providers": {"groq": {"upstream": "api.groq.com", "family": "openai"}}}, "providers.groq.upstream",
     "http:// or https://"),
    ({"providers": {"openai": {"upstream": "ftp://mirror.example"}}}, "providers.openai.upstream",
     "http:// or https://"),
    ({"upstream_proxy": "proxy.corp:3128"}, "upstream_proxy", "http:// or https://"),
    ({"providers": {"groq": {"family": "openai"}}}, "providers.groq.upstream", "required"),
    ({"providers": {"groq": {"upstream": "https://x.example", "family": "cohere"}}}, "providers.groq.family",
     "openai"),
    ({"directory": {"people": [{"id": "alice", "team": "ghosts"}]}}, "directory: people[0] (alice)", "'ghosts'"),
    ({"directory": {"projects": [{"id": "p"}], "people": [{"id": "al", "projects": ["q"]}]}},
     "directory: people[0] (al)", "'q'"),
    ({"directory": {"teams": [{"id": "a", "parent": "b"}, {"id": "b", "parent": "c"}, {"id": "c", "parent": "a"}]}},
     "directory: teams", "loops"),
    ({"directory": {"teams": [{"id": "a", "parent": "a"}]}}, "directory: teams", "loops"),
    ({"directory": {"teams": [{"id": "a"}, {"id": "b"}, {"id": "a"}]}}, "directory: teams", "'a' appears more"),
    ({"directory": {"people": [{"id": "bo"}, {"id": "bo"}]}}, "directory: people", "'bo' appears more"),
    ({"directory": {"services": [{"id": "bot"}, {"id": "bot"}]}}, "directory: services", "'bot' appears more"),
    ({"directory": {"people": [{"id": "x", "provider_key_sha256": [SHA, "abc123"]}]}},
     "directory.people[0].provider_key_sha256", "SHA-256"),
    ({"directory": {"people": [{"id": "x", "provider_key_sha256": ["g" * 64]}]}},
     "directory.people[0].provider_key_sha256", "SHA-256"),
])
def test_errors_name_the_file_and_key_path(tmp_path: Path, data: dict[str, Any], where: str, what: str) -> None:
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert f"  {where}" in message
    assert what in message


def test_service_with_unknown_project_is_rejected() -> None:
    """A person's projects must exist; so must a service's (a typo would attribute spend to nothing)."""
    data = {"directory": {"projects": [{"id": "checkout"}], "services": [{"id": "bot", "project": "chekout"}]}}
    with pytest.raises(ConfigError) as info:
        parse_settings(data, "cfg.yaml")
    assert "services[0]" in str(info.value)
    assert "'chekout'" in str(info.value)


def test_valid_sha256_digests_are_normalised() -> None:
    settings = parse_settings({"directory": {"people": [{"id": "x", "provider_key_sha256": ["AB" * 32]}]}}, "t")
    assert settings.directory.people[0].provider_key_sha256 == ("ab" * 32,)


def test_every_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"enforcment": "on", "capture_mod": "x"}, "cfg.yaml")
    assert "2 problem(s)" in str(info.value)
    assert "enforcment" in str(info.value) and "capture_mod" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: [unclosed\n  enforcement: on\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, '{"enforcement": on}', "cfg.json")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- enforcement\n- on\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}:")
    assert "mapping" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = parse_settings({}, "t")
    with pytest.raises(ValueError):
        settings.enforcement = Enforcement.on  # type: ignore[misc]
