"""provider.json loading: SimpleLLMFunc's file shape, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError
from orchestrator.llm import OpenAICompatible, TokenBucket, Unlimited
from orchestrator.llm.config import load_provider_file


def _write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "provider.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD = {
    "openai": [
        {
            "model_name": "gpt-3.5-turbo",
            "api_keys": ["sk-1", "sk-2"],
            "base_url": "https://api.openai.com/v1",
            "max_retries": 2,
            "retry_delay": 0.5,
            "rate_limit_capacity": 10,
            "rate_limit_refill_rate": 1.0,
            "context_window": 16000,
        },
        {"model_name": "gpt-4", "api_keys": ["sk-3"], "base_url": "https://api.openai.com/v1/"},
    ],
    "local": [
        {
            "model_name": "qwen",
            "api_keys": "",
            "base_url": "http://localhost:8000/v1",
            "llm_kwargs": {"temperature": 0.1},
        }
    ],
}


def test_good_file_gives_models_by_provider_and_name(tmp_path: Path) -> None:
    models = OpenAICompatible.load_from_json_file(_write(tmp_path, GOOD))
    assert set(models) == {"openai", "local"}
    turbo = models["openai"]["gpt-3.5-turbo"]
    assert turbo.model_name == "gpt-3.5-turbo"
    assert turbo.key_pool.keys == ["sk-1", "sk-2"]
    assert turbo.max_retries == 2
    assert turbo.context_window == 16000
    assert isinstance(turbo.rate_limiter, TokenBucket)
    gpt4 = models["openai"]["gpt-4"]
    assert gpt4.base_url == "https://api.openai.com/v1"
    assert isinstance(gpt4.rate_limiter, Unlimited)
    assert models["local"]["qwen"].default_llm_kwargs == {"temperature": 0.1}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ([], "expected an object"),
        ({"openai": {"model_name": "x"}}, "provider 'openai' must be a list"),
        (
            {"openai": [{"model_name": "gpt-4", "base_url": "u"}]},
            r"openai\[0\] \(model 'gpt-4'\): api_keys: Field required",
        ),
        (
            {"p": [{"model_name": "m", "api_keys": ["k"], "base_url": "u", "max_retries": -1}]},
            "max_retries",
        ),
        (
            {"p": [{"model_name": "m", "api_keys": [], "base_url": "u"}]},
            "api_keys",
        ),
        (
            {
                "p": [
                    {
                        "model_name": "m",
                        "api_keys": ["k"],
                        "base_url": "u",
                        "rate_limit_capacity": 5,
                    }
                ]
            },
            "go together",
        ),
        (
            {"p": 2 * [{"model_name": "m", "api_keys": ["k"], "base_url": "u"}]},
            r"p\[1\] \(model 'm'\): model listed twice",
        ),
    ],
)
def test_bad_file_is_a_config_error_naming_file_and_entry(
    tmp_path: Path, content: Any, expected: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=expected) as caught:
        OpenAICompatible.load_from_json_file(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        OpenAICompatible.load_from_json_file(tmp_path / "nope.json")


def test_constructor_rejects_unusable_settings() -> None:
    with pytest.raises(ConfigError, match="model_name"):
        OpenAICompatible("k", "", "http://x/v1")
    with pytest.raises(ConfigError, match="no API keys"):
        OpenAICompatible(model_name="m", base_url="http://x/v1")
    with pytest.raises(ConfigError, match="go together"):
        OpenAICompatible("k", "m", "http://x/v1", rate_limit_capacity=3)
    with pytest.raises(ConfigError, match="negative"):
        OpenAICompatible("k", "m", "http://x/v1", max_retries=-1)


def test_unknown_fields_are_ignored_so_simplellmfunc_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    entry = {"model_name": "m", "api_keys": ["k"], "base_url": "u", "max_retrys": 3}
    path.write_text(json.dumps({"p": [entry]}))
    models = load_provider_file(path)
    assert models["p"][0].model_name == "m"
    assert models["p"][0].max_retries == 5
