"""Settings: defaults, parsing, and errors that name the variable (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import ConfigurationError
from broker.settings import RABBITMQ_MAX_MESSAGE_BYTES, Settings, get_settings


def test_defaults_match_the_documented_contract() -> None:
    settings = Settings.from_env({})
    assert settings.broker_url == "amqp://guest:guest@localhost:5672//"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.timeout == 30.0
    assert settings.namespace == "tensorfleet"
    assert settings.batch_size == 1000
    assert settings.max_message_bytes < RABBITMQ_MAX_MESSAGE_BYTES
    assert settings.worker_id is None
    assert settings.queue_type == "classic"
    assert settings.worker_user is None


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "TENSORFLEET_BROKER_URL": "amqp://u:p@rabbit:5673/vh",
            "TENSORFLEET_REDIS_URL": "redis://cache:6380/3",
            "TENSORFLEET_TIMEOUT": "2.5",
            "TENSORFLEET_NAMESPACE": "test-run.1",
            "TENSORFLEET_MAX_MESSAGE_BYTES": "1_048_576",
            "TENSORFLEET_MAX_OBJECT_BYTES": "4096",
            "TENSORFLEET_BATCH_SIZE": "10",
            "TENSORFLEET_PREFETCH": "4",
            "TENSORFLEET_BATCH_TTL": "60",
            "TENSORFLEET_CONNECT_RETRIES": "0",
            "TENSORFLEET_WORKER_ID": "secure_worker",
            "TENSORFLEET_QUEUE_TYPE": "Quorum",
            "TENSORFLEET_WORKER_USER": "guest",
        }
    )
    expected = {
        "broker_url": "amqp://u:p@rabbit:5673/vh",
        "redis_url": "redis://cache:6380/3",
        "timeout": 2.5,
        "namespace": "test-run.1",
        "max_message_bytes": 1_048_576,
        "max_object_bytes": 4096,
        "batch_size": 10,
        "prefetch": 4,
        "batch_ttl": 60,
        "connect_retries": 0,
        "worker_id": "secure_worker",
        "queue_type": "quorum",
        "worker_user": "guest",
    }
    assert {name: getattr(settings, name) for name in expected} == expected


def test_the_broker_may_be_a_list_of_urls() -> None:
    settings = Settings.from_env(
        {"TENSORFLEET_BROKER_URL": "amqp://u:p@rabbit-1:5672/vh; amqp://u:p@rabbit-2:5672/vh;"}
    )
    assert settings.broker_urls == ("amqp://u:p@rabbit-1:5672/vh", "amqp://u:p@rabbit-2:5672/vh")
    assert settings.broker_url == "amqp://u:p@rabbit-1:5672/vh"
    assert Settings.from_env({}).broker_urls == (Settings().broker_url,)
    with pytest.raises(ConfigurationError, match="TENSORFLEET_BROKER_URL"):
        Settings.from_env({"TENSORFLEET_BROKER_URL": "amqp://a//;http://b"})


def test_empty_values_take_the_default() -> None:
    assert (
        Settings.from_env({"TENSORFLEET_TIMEOUT": " ", "TENSORFLEET_NAMESPACE": ""}) == Settings()
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TENSORFLEET_TIMEOUT", "soon"),
        ("TENSORFLEET_TIMEOUT", "-1"),
        ("TENSORFLEET_TIMEOUT", "inf"),
        ("TENSORFLEET_BATCH_SIZE", "0"),
        ("TENSORFLEET_BATCH_SIZE", "1.5"),
        ("TENSORFLEET_MAX_MESSAGE_BYTES", str(RABBITMQ_MAX_MESSAGE_BYTES)),
        ("TENSORFLEET_NAMESPACE", "has space"),
        ("TENSORFLEET_NAMESPACE", "a:b"),
        ("TENSORFLEET_BROKER_URL", "http://localhost"),
        ("TENSORFLEET_REDIS_URL", "localhost:6379"),
        ("TENSORFLEET_WORKER_ID", "bob smith"),
        ("TENSORFLEET_QUEUE_TYPE", "stream"),
        ("TENSORFLEET_TLS_CA_FILE", "/no/such/ca.pem"),
        ("TENSORFLEET_TLS_CERT_FILE", "/no/such/client.pem"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value)
    assert repr(value) in str(caught.value)


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    first = get_settings()
    monkeypatch.setenv("TENSORFLEET_BATCH_SIZE", "7")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().batch_size == 7
    monkeypatch.undo()
    get_settings.cache_clear()


def test_tls_files_are_read(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("PEM")
    settings = Settings.from_env(
        {
            "TENSORFLEET_TLS_CA_FILE": str(files["ca"]),
            "TENSORFLEET_TLS_CERT_FILE": str(files["cert"]),
            "TENSORFLEET_TLS_KEY_FILE": str(files["key"]),
        }
    )
    assert settings.tls_ca_file == str(files["ca"])
    assert settings.tls_cert_file == str(files["cert"])
    assert settings.tls_key_file == str(files["key"])
    assert Settings().tls_ca_file is None  # the system's CAs
