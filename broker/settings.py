"""Settings from ``TENSORFLEET_*`` environment variables, parsed once.

Every process of a fleet (clients, workers, the CLI) reads the same variables,
so a deployment is configured in one place. A bad value fails at start-up with
:class:`~broker.errors.ConfigurationError` naming the variable, instead of a
confusing failure deep inside pika or Celery later.

Variables and defaults:

- ``TENSORFLEET_BROKER_URL`` = ``amqp://guest:guest@localhost:5672//``: RabbitMQ, Celery URL form;
  or several nodes of one cluster separated by ``;`` (Celery's failover form), which workers
  try in turn (``broker_urls``). ``broker_url`` is the first; the pika client uses only it.
- ``TENSORFLEET_REDIS_URL`` = ``redis://localhost:6379/0``: where workers keep their objects.
- ``TENSORFLEET_TIMEOUT`` = ``30``: seconds a synchronising call waits for a worker.
- ``TENSORFLEET_NAMESPACE`` = ``tensorfleet``: prefix of queue names and Redis keys, so fleets
  (and test runs) sharing a broker and a Redis stay apart.
- ``TENSORFLEET_MAX_MESSAGE_BYTES`` = ``67108864`` (64 MiB): largest AMQP message; bigger bodies
  travel in chunks (RabbitMQ refuses messages above 128 MiB).
- ``TENSORFLEET_MAX_OBJECT_BYTES`` = ``8589934592`` (8 GiB): largest reassembled message, and
  the most bytes one op's results may take (checked before the op runs).
- ``TENSORFLEET_MAX_OP_WORK`` = ``1073741824`` (2**30): the most work one op may ask of a
  worker: elements read and written, plus multiply-adds for contractions (matmul, conv).
- ``TENSORFLEET_CLIENT_QUOTA_BYTES`` = ``17179869184`` (16 GiB): the most tensor bytes one
  client (one RabbitMQ user) may keep on one worker; a command that would go above it is
  refused with ``QuotaExceededError``.
- ``TENSORFLEET_TASK_EVENTS`` = ``1``: workers send Celery task events (Flower's task list,
  ``celery events``); ``0`` turns them off (worker heartbeats still go out).
- ``TENSORFLEET_METRICS_PORT`` = ``0``: a fleet worker serves Prometheus metrics on this port
  (``0``: no metrics); see worker/metrics.py. ``tensorfleet up`` gives each worker its own.
- ``TENSORFLEET_BATCH_SIZE`` = ``1000``: commands a client queues before it sends a batch.
- ``TENSORFLEET_FLUSH_INTERVAL`` = ``0.005``: seconds pipelined commands may wait for more
  company before a fleet client sends them anyway (a synchronising call sends at once).
- ``TENSORFLEET_TORCH_THREADS`` = ``1``: torch threads of a fleet worker process (several
  workers share a machine, and each runs one small op at a time).
- ``TENSORFLEET_PREFETCH`` = ``16``: messages a worker takes from its queue ahead of time.
- ``TENSORFLEET_BATCH_TTL`` = ``3600``: seconds a worker remembers an applied batch (to replay
  its replies on redelivery).
- ``TENSORFLEET_FAILURE_TTL`` = ``3600``: seconds a worker remembers that a pipelined command
  failed (so a later use of its result reports that error, not a missing object).
- ``TENSORFLEET_TRANSFER_TTL`` = ``600``: seconds a worker keeps the parts of a chunked
  message whose last part has not arrived; the parts are then dropped.
- ``TENSORFLEET_CONNECT_RETRIES`` = ``5``: broker reconnect attempts a waiting call sits
  through before it gives up with ``BrokerConnectionError`` (the client keeps reconnecting in
  the background, with a backoff of at most 2 s, so the first call after the broker is back
  succeeds).
- ``TENSORFLEET_QUEUE_TYPE`` = ``classic``: RabbitMQ type of the worker queues, ``classic`` or
  ``quorum`` (replicated on a cluster, Raft); every party of a fleet must use the same, since
  RabbitMQ refuses to re-declare a queue with another type (see broker/topology.py).
- ``TENSORFLEET_WORKER_ID`` (unset): a worker's id when it is not given on the command line.
- ``TENSORFLEET_WORKER_USER`` (unset): for clients, the RabbitMQ user the fleet's workers share
  when they do not each have their own (``<ns>.worker.<id>``); replies published by it are
  believed. Unset: the client's own user (every party shares one account, like ``guest``).
- ``TENSORFLEET_DATASETS`` (unset): datasets a worker's operator hosts, ``NAME=PATH`` entries
  separated by ``,`` (safetensors files; ``tensorfleet worker --dataset`` sets it); see
  worker/datasets.py.
- ``TENSORFLEET_TLS_CA_FILE`` (unset): PEM file of the CA certificates that ``amqps://`` and
  ``rediss://`` servers are verified against (unset: the system's CAs); see broker/tls.py.
- ``TENSORFLEET_TLS_CERT_FILE`` (unset): PEM client certificate this process presents to
  ``amqps://`` and ``rediss://`` servers that ask for one (mutual TLS).
- ``TENSORFLEET_TLS_KEY_FILE`` (unset): PEM private key of that certificate (unset: it is in
  the certificate file).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from broker.errors import ConfigurationError

#: RabbitMQ refuses messages above 128 MiB (its 3.10 default ``max_message_size``).
RABBITMQ_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
#: Room left under RabbitMQ's limit for the task envelope and properties around a chunk.
_ENVELOPE_HEADROOM = 1024 * 1024

#: Values of TENSORFLEET_QUEUE_TYPE: RabbitMQ queue types a fleet's worker queues may have.
QUEUE_TYPES = ("classic", "quorum")

_NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a TensorFleet process; see the module docstring."""

    broker_url: str = "amqp://guest:guest@localhost:5672//"
    #: every URL of TENSORFLEET_BROKER_URL (nodes of one cluster, tried in turn); [0] is broker_url
    broker_urls: tuple[str, ...] = ("amqp://guest:guest@localhost:5672//",)
    redis_url: str = "redis://localhost:6379/0"
    timeout: float = 30.0
    namespace: str = "tensorfleet"
    max_message_bytes: int = 64 * 1024 * 1024
    max_object_bytes: int = 8 * 1024 * 1024 * 1024
    max_op_work: int = 2**30
    client_quota_bytes: int = 16 * 1024 * 1024 * 1024
    task_events: bool = True
    metrics_port: int = 0
    batch_size: int = 1000
    flush_interval: float = 0.005
    torch_threads: int = 1
    prefetch: int = 16
    batch_ttl: int = 3600
    failure_ttl: int = 3600
    transfer_ttl: int = 600
    connect_retries: int = 5
    queue_type: str = "classic"
    worker_id: str | None = None
    worker_user: str | None = None
    datasets: tuple[str, ...] = ()
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Parse ``env`` (default: ``os.environ``); unset or empty variables take the default."""
        env = os.environ if env is None else env
        defaults = cls()

        def raw(name: str) -> str | None:
            value = env.get(f"TENSORFLEET_{name}")
            return value.strip() if value is not None and value.strip() else None

        broker_urls = tuple(
            _url(url.strip(), "BROKER_URL", ("amqp", "amqps", "pyamqp"), defaults.broker_url)
            for url in (raw("BROKER_URL") or defaults.broker_url).split(";")
            if url.strip()
        )
        return cls(
            broker_url=broker_urls[0],
            broker_urls=broker_urls,
            redis_url=_url(
                raw("REDIS_URL"), "REDIS_URL", ("redis", "rediss", "unix"), defaults.redis_url
            ),
            timeout=_number(raw("TIMEOUT"), "TIMEOUT", defaults.timeout),
            namespace=_name(raw("NAMESPACE"), "NAMESPACE", _NAMESPACE_PATTERN, defaults.namespace),
            max_message_bytes=_integer(
                raw("MAX_MESSAGE_BYTES"),
                "MAX_MESSAGE_BYTES",
                defaults.max_message_bytes,
                minimum=64 * 1024,
                maximum=RABBITMQ_MAX_MESSAGE_BYTES - _ENVELOPE_HEADROOM,
            ),
            max_object_bytes=_integer(
                raw("MAX_OBJECT_BYTES"), "MAX_OBJECT_BYTES", defaults.max_object_bytes, minimum=1024
            ),
            max_op_work=_integer(
                raw("MAX_OP_WORK"), "MAX_OP_WORK", defaults.max_op_work, minimum=1024
            ),
            client_quota_bytes=_integer(
                raw("CLIENT_QUOTA_BYTES"),
                "CLIENT_QUOTA_BYTES",
                defaults.client_quota_bytes,
                minimum=1024,
            ),
            task_events=_flag(raw("TASK_EVENTS"), "TASK_EVENTS", defaults.task_events),
            metrics_port=_integer(
                raw("METRICS_PORT"), "METRICS_PORT", defaults.metrics_port, minimum=0, maximum=65535
            ),
            batch_size=_integer(raw("BATCH_SIZE"), "BATCH_SIZE", defaults.batch_size, minimum=1),
            torch_threads=_integer(
                raw("TORCH_THREADS"), "TORCH_THREADS", defaults.torch_threads, minimum=1
            ),
            flush_interval=_number(
                raw("FLUSH_INTERVAL"), "FLUSH_INTERVAL", defaults.flush_interval
            ),
            prefetch=_integer(
                raw("PREFETCH"), "PREFETCH", defaults.prefetch, minimum=1, maximum=65535
            ),
            batch_ttl=_integer(raw("BATCH_TTL"), "BATCH_TTL", defaults.batch_ttl, minimum=1),
            failure_ttl=_integer(
                raw("FAILURE_TTL"), "FAILURE_TTL", defaults.failure_ttl, minimum=1
            ),
            transfer_ttl=_integer(
                raw("TRANSFER_TTL"), "TRANSFER_TTL", defaults.transfer_ttl, minimum=1
            ),
            connect_retries=_integer(
                raw("CONNECT_RETRIES"), "CONNECT_RETRIES", defaults.connect_retries, minimum=0
            ),
            queue_type=_choice(raw("QUEUE_TYPE"), "QUEUE_TYPE", QUEUE_TYPES, defaults.queue_type),
            datasets=tuple(
                entry.strip() for entry in (raw("DATASETS") or "").split(",") if entry.strip()
            ),
            worker_id=(
                None
                if raw("WORKER_ID") is None
                else _name(raw("WORKER_ID"), "WORKER_ID", _WORKER_ID_PATTERN, "")
            ),
            worker_user=raw("WORKER_USER"),
            tls_ca_file=_file(raw("TLS_CA_FILE"), "TLS_CA_FILE"),
            tls_cert_file=_file(raw("TLS_CERT_FILE"), "TLS_CERT_FILE"),
            tls_key_file=_file(raw("TLS_KEY_FILE"), "TLS_KEY_FILE", needs="TLS_CERT_FILE", env=env),
        )


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use.

    Tests that change the environment call ``get_settings.cache_clear()``.
    """
    return Settings.from_env()


def _url(value: str | None, name: str, schemes: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if urlsplit(value).scheme not in schemes:
        raise ConfigurationError(
            f"TENSORFLEET_{name}",
            value,
            f"a URL starting with {' or '.join(s + '://' for s in schemes)}",
        )
    return value


def _number(value: str | None, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ConfigurationError(f"TENSORFLEET_{name}", value, "a positive number of seconds")
    return number


def _integer(
    value: str | None, name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    if value is None:
        return default
    try:
        number = int(value.replace("_", ""))
    except ValueError:
        number = minimum - 1
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ConfigurationError(f"TENSORFLEET_{name}", value, bounds)
    return number


def _flag(value: str | None, name: str, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"TENSORFLEET_{name}", value, "1 or 0 (true/false, yes/no, on/off)")


def _choice(value: str | None, name: str, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value.lower() not in choices:
        raise ConfigurationError(f"TENSORFLEET_{name}", value, " or ".join(choices))
    return value.lower()


def _name(value: str | None, name: str, pattern: re.Pattern[str], default: str) -> str:
    if value is None:
        return default
    if not pattern.fullmatch(value):
        raise ConfigurationError(
            f"TENSORFLEET_{name}",
            value,
            "letters, digits, '_', '.' and '-' only (no spaces or ':')",
        )
    return value


def _file(
    value: str | None, name: str, needs: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """A readable file's path (None if unset); ``needs``: a variable that must be set too."""
    if value is None:
        return None
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ConfigurationError(f"TENSORFLEET_{name}", value, "the path of a readable file")
    if needs is not None and not (env or {}).get(f"TENSORFLEET_{needs}", "").strip():
        raise ConfigurationError(
            f"TENSORFLEET_{name}", value, f"TENSORFLEET_{needs} set too (the key's certificate)"
        )
    return value
