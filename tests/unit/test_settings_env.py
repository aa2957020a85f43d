"""Every setting comes from the environment (ORCHESTRATOR_*), or from a file for secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orchestrator.api import parse_api_keys
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings, env_variable


def _sample(name: str, default: Any) -> tuple[str, Any]:
    """A value different from the default, as text for the environment, and as parsed."""
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default / 2), default / 2
    if isinstance(default, SecretStr):
        return "k:t", "k:t"
    if isinstance(default, tuple):
        return "a.b, c.d", ("a.b", "c.d")
    if name == "log_format":
        return "JSON", "json"
    if name == "log_level":
        return "warning", "warning"
    return f"value-of-{name}", f"value-of-{name}"


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_settings_field_is_read_from_its_orchestrator_variable() -> None:
    fields = Settings.model_fields
    env = {}
    expected = {}
    for name, info in fields.items():
        text, parsed = _sample(name, info.get_default())
        env[env_variable(name)] = text
        expected[name] = parsed
    settings = Settings.from_env(env)
    for name in fields:
        assert _plain(getattr(settings, name)) == expected[name], env_variable(name)
    assert len(fields) >= 30  # the enumeration saw the real model


def test_every_settings_field_can_come_from_a_file(tmp_path: Path) -> None:
    env = {}
    expected = {}
    for name, info in Settings.model_fields.items():
        text, parsed = _sample(name, info.get_default())
        path = tmp_path / name
        path.write_text(text + "\n")  # the newline editors add is not part of the value
        env[env_variable(name) + "_FILE"] = str(path)
        expected[name] = parsed
    settings = Settings.from_env(env)
    for name, value in expected.items():
        assert _plain(getattr(settings, name)) == value, name


def test_a_variable_and_its_file_together_are_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://elsewhere:6379/0")
    env = {
        "ORCHESTRATOR_REDIS_URL": "redis://here:6379/0",
        "ORCHESTRATOR_REDIS_URL_FILE": str(tmp_path / "url"),
    }
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(env)


def test_an_unreadable_secret_file_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ORCHESTRATOR_API_KEYS_FILE"):
        Settings.from_env({"ORCHESTRATOR_API_KEYS_FILE": str(tmp_path / "missing")})


def test_empty_variables_are_unset_so_compose_defaults_of_nothing_work() -> None:
    settings = Settings.from_env({"ORCHESTRATOR_CONCURRENCY": "", "ORCHESTRATOR_API_KEYS": ""})
    assert settings.concurrency == Settings().concurrency
    assert settings.api_keys.get_secret_value() == ""


def test_api_keys_never_show_in_the_settings_repr() -> None:
    settings = Settings.from_env({"ORCHESTRATOR_API_KEYS": "sk-very-secret:tenant-a"})
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())


def test_api_keys_text_is_key_tenant_per_line_or_comma() -> None:
    text = "# the keys\nk1:tenant-a\n\nk2:tenant-b, k3:tenant-a  # ops\n"
    assert parse_api_keys(text) == {"k1": "tenant-a", "k2": "tenant-b", "k3": "tenant-a"}
    assert parse_api_keys("") == {}


def test_a_malformed_api_key_entry_names_its_line_not_the_key() -> None:
    with pytest.raises(ConfigError, match="line 2") as caught:
        parse_api_keys("k1:a\nsecret-without-tenant\n")
    assert "secret-without-tenant" not in str(caught.value)
