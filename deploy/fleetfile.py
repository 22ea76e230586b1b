"""The fleet file: who takes part in a fleet, read and checked before anything is provisioned.

A TOML file (read with the standard library's ``tomllib``)::

    namespace = "tensorfleet"             # queue and key prefix (TENSORFLEET_NAMESPACE)
    vhost = "tensorfleet"                 # RabbitMQ virtual host; default: the namespace
    broker = "amqp://rabbitmq:5672"       # where parties reach RabbitMQ, without credentials
                                          #   (or the nodes of a cluster: ["amqp://r1:5672", ...])
    redis = "redis://redis:6379/0"        # the Redis workers share unless they name their own
    queue_type = "classic"                # or "quorum" (TENSORFLEET_QUEUE_TYPE of every party)

    [workers.bob]                         # a data owner's worker: its own Redis ACL user
    [workers.alice]
    redis = "redis://redis-alice:6379/0"  # ... or a Redis of its own

    [clients.carol]                       # a data scientist

    [tls]                                 # optional: for amqps:// and rediss:// URLs
    ca_file = "/etc/tensorfleet/tls/ca.pem"   # TENSORFLEET_TLS_CA_FILE of every party
    cert_dir = "/etc/tensorfleet/tls"     # optional: <party>.pem and <party>.key there

``workers`` and ``clients`` may also be plain lists of names (``clients = ["carol"]``).
Paths in ``[tls]`` are as the parties see them (in their containers, say).
Every problem is one :class:`~broker.errors.FleetFileError` naming the file, the
entry and what is expected; unknown keys are refused, so a typo is not ignored.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from broker.errors import FleetFileError
from broker.settings import QUEUE_TYPES
from deploy.grants import PARTY_NAME

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VHOST = re.compile(r"[A-Za-z0-9_./-]+")
_BROKER_SCHEMES = ("amqp", "amqps")
_REDIS_SCHEMES = ("redis", "rediss")
#: names that the provisioned files use for parties that are not in the fleet file
RESERVED_NAMES = frozenset({"operator", "default", "healthcheck"})

_TOP_KEYS = {"namespace", "vhost", "broker", "redis", "queue_type", "workers", "clients", "tls"}
_TLS_KEYS = {"ca_file", "cert_dir"}
_WORKER_KEYS = {"redis"}
_CLIENT_KEYS: set[str] = set()


@dataclass(frozen=True)
class WorkerSpec:
    """A worker of the fleet and the Redis it keeps its objects in."""

    name: str
    redis_url: str
    #: True when the worker names a Redis of its own (else it shares the fleet's)
    own_redis: bool = False


@dataclass(frozen=True)
class TlsSpec:
    """Where parties find the CA file (and, if given, their own certificate and key)."""

    ca_file: str
    #: folder holding ``<party>.pem`` and ``<party>.key`` for every party (None: no client
    #: certificates)
    cert_dir: str | None = None

    def cert_file(self, party: str) -> str | None:
        return None if self.cert_dir is None else f"{self.cert_dir.rstrip('/')}/{party}.pem"

    def key_file(self, party: str) -> str | None:
        return None if self.cert_dir is None else f"{self.cert_dir.rstrip('/')}/{party}.key"


@dataclass(frozen=True)
class FleetSpec:
    """A checked fleet file."""

    namespace: str
    vhost: str
    broker_url: str
    redis_url: str
    workers: tuple[WorkerSpec, ...]
    clients: tuple[str, ...]
    tls: TlsSpec | None = None
    #: the other nodes of a broker cluster, after ``broker_url`` (``broker = [...]``)
    more_brokers: tuple[str, ...] = ()
    #: TENSORFLEET_QUEUE_TYPE of every party, and the type of the worker queues declared
    queue_type: str = "classic"

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """Every broker node, ``broker_url`` first (parties try them in turn)."""
        return (self.broker_url, *self.more_brokers)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The host names of the broker and of every Redis (for a server certificate)."""
        urls = [*self.broker_urls, *(worker.redis_url for worker in self.workers)]
        return tuple(dict.fromkeys(urlsplit(url).hostname or "localhost" for url in urls))

    @property
    def worker_ids(self) -> tuple[str, ...]:
        return tuple(worker.name for worker in self.workers)


def load(path: str | Path) -> FleetSpec:
    """Read and check the fleet file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FleetFileError(str(path), f"cannot read it ({error})") from None
    return parse(text, str(path))


def parse(text: str, source: str = "<fleet file>") -> FleetSpec:
    """Check a fleet file's text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise FleetFileError(source, f"it is not TOML ({error})") from None
    return _Checker(source).fleet(data)


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> FleetFileError:
        return FleetFileError(self.source, f"{where}: {problem}")

    def fleet(self, data: dict[str, Any]) -> FleetSpec:
        self.known_keys("the top level", data, _TOP_KEYS)
        namespace = self.text(data, "namespace", "tensorfleet")
        if not _NAMESPACE.fullmatch(namespace):
            raise self.fail("namespace", "use letters, digits, '_', '.' and '-' only")
        vhost = self.text(data, "vhost", namespace)
        if not _VHOST.fullmatch(vhost):
            raise self.fail("vhost", "use letters, digits, '_', '.', '/' and '-' only")
        brokers = self.brokers(data)
        broker = brokers[0]
        queue_type = self.text(data, "queue_type", "classic")
        if queue_type not in QUEUE_TYPES:
            raise self.fail("queue_type", f"expected one of {', '.join(QUEUE_TYPES)}")
        redis = self.redis_url(self.text(data, "redis", "redis://localhost:6379/0"), "redis")
        workers = tuple(
            WorkerSpec(name, *self.worker(name, options, redis))
            for name, options in self.parties(data, "workers")
        )
        if not workers:
            raise self.fail("workers", "name at least one worker ([workers.bob])")
        clients = []
        for name, options in self.parties(data, "clients"):
            self.known_keys(f"clients.{name}", options, _CLIENT_KEYS)
            clients.append(name)
        both = sorted(set(clients) & {worker.name for worker in workers})
        if both:
            raise self.fail(both[0], "is named as a worker and as a client; give each its own")
        tls = self.tls(data, broker, workers)
        return FleetSpec(
            namespace,
            vhost,
            broker.rstrip("/"),
            redis,
            workers,
            tuple(clients),
            tls,
            tuple(url.rstrip("/") for url in brokers[1:]),
            queue_type,
        )

    def brokers(self, data: dict[str, Any]) -> list[str]:
        """``broker``: one URL, or a list of a cluster's nodes (one scheme for all)."""
        value = data.get("broker", "amqp://localhost:5672")
        if isinstance(value, list):
            if not value:
                raise self.fail("broker", "expected a URL or a non-empty list of URLs")
            urls = [self.text({"broker": item}, "broker", "") for item in value]
        else:
            urls = [self.text(data, "broker", "amqp://localhost:5672")]
        for url in urls:
            self.url(url, "broker")
            if _has_credentials(url) or urlsplit(url).path not in ("", "/"):
                raise self.fail(
                    "broker",
                    "give only scheme, host and port (amqp://rabbitmq:5672): "
                    "provisioning adds each party's user and the vhost",
                )
        if len({urlsplit(url).scheme for url in urls}) > 1:
            raise self.fail("broker", "use one scheme (amqp or amqps) for every node")
        return urls

    def tls(
        self, data: dict[str, Any], broker: str, workers: tuple[WorkerSpec, ...]
    ) -> TlsSpec | None:
        if "tls" not in data:
            return None
        options = data["tls"]
        if not isinstance(options, dict):
            raise self.fail("tls", "expected a table ([tls] with ca_file = ...)")
        self.known_keys("tls", options, _TLS_KEYS)
        if "ca_file" not in options:
            raise self.fail("tls", "give ca_file, the CA certificates' path as parties see it")
        ca_file = self.text(options, "ca_file", "", "tls")
        cert_dir = self.text(options, "cert_dir", "", "tls") if "cert_dir" in options else None
        schemes = {urlsplit(broker).scheme, *(urlsplit(w.redis_url).scheme for w in workers)}
        if not schemes & {"amqps", "rediss"}:
            raise self.fail("tls", "no URL uses it: write amqps:// or rediss:// URLs")
        return TlsSpec(ca_file, cert_dir)

    def worker(self, name: str, options: dict[str, Any], shared: str) -> tuple[str, bool]:
        where = f"workers.{name}"
        self.known_keys(where, options, _WORKER_KEYS)
        if "redis" not in options:
            return shared, False
        url = self.redis_url(self.text(options, "redis", shared, where), f"{where}.redis")
        return url, True

    def parties(self, data: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
        value = data.get(kind, {})
        entries: list[tuple[Any, Any]]
        if isinstance(value, list):
            entries = [(name, {}) for name in value]
        elif isinstance(value, dict):
            entries = list(value.items())
        else:
            raise self.fail(kind, f"expected a table ([{kind}.NAME]) or a list of names")
        seen: set[str] = set()
        for name, options in entries:
            if not isinstance(name, str) or not PARTY_NAME.fullmatch(name):
                raise self.fail(
                    f"{kind} {name!r}",
                    "a name is letters, digits, '_' and '-' (no '.', no spaces), "
                    "not starting with '-'",
                )
            if name in RESERVED_NAMES:
                raise self.fail(f"{kind}.{name}", f"the name {name!r} is reserved; pick another")
            if name in seen:
                raise self.fail(f"{kind}.{name}", "is named twice")
            if not isinstance(options, dict):
                raise self.fail(f"{kind}.{name}", "expected a table of options")
            seen.add(name)
        return entries

    def known_keys(self, where: str, data: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            expected = ", ".join(sorted(allowed)) or "no options"
            raise self.fail(where, f"unknown key {unknown[0]!r} (expected {expected})")

    def text(self, data: dict[str, Any], key: str, default: str, where: str = "") -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}.{key}" if where else key, "expected a non-empty string")
        return value.strip()

    def url(self, value: str, where: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _BROKER_SCHEMES or not parts.hostname:
            raise self.fail(where, f"expected amqp://HOST:PORT or amqps://HOST:PORT, got {value!r}")
        self.port(parts, where)
        return value

    def redis_url(self, value: str, where: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _REDIS_SCHEMES or not parts.hostname:
            raise self.fail(
                where, f"expected redis://HOST:PORT/DB or rediss://HOST:PORT/DB, got {value!r}"
            )
        if _has_credentials(value):
            raise self.fail(where, "leave credentials out: provisioning adds each worker's user")
        self.port(parts, where)
        return value

    def port(self, parts: SplitResult, where: str) -> None:
        try:
            parts.port  # noqa: B018  (urllib checks the port when it is read)
        except ValueError:
            raise self.fail(where, f"the port of {parts.geturl()!r} is not a number") from None


def _has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return parts.username is not None or parts.password is not None
