"""Configuration from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults_are_safe():
    settings = Settings()
    assert settings.model_dir == Path("models")
    assert settings.api_key is None and settings.cors_origins == []  # both off unless asked for
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.host == "127.0.0.1"


def test_environment_variables_in_capitals(monkeypatch):
    for name, value in {
        "MODEL_DIR": "/srv/models",
        "MODEL_VERSIONS": "cifar10=1, iris=2",
        "CORS_ORIGINS": "https://a.example, https://b.example",
        "API_KEY": "k",
        "DEVICE": "cpu",
        "LOG_LEVEL": "WARNING",
        "MAX_BATCH_SIZE": "64",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_dir == Path("/srv/models")
    assert settings.model_versions == {"cifar10": 1, "iris": 2}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.api_key.get_secret_value() == "k"
    assert (settings.device, settings.log_level, settings.max_batch_size) == ("cpu", "warning", 64)


def test_an_empty_api_key_means_no_key(monkeypatch):
    monkeypatch.setenv("API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    "values",
    [
        {"model_versions": "cifar10"},
        {"device": "tpu"},
        {"max_batch_size": 0},
        {"max_batch_size": 64, "max_queue_size": 32},
    ],
)
def test_bad_settings_fail_at_start_up(values):
    with pytest.raises(ValidationError):
        Settings(**values)
