"""``tensorfleet provision FLEET_FILE --out DIR``: the users, grants and env files of a fleet.

From a fleet file (deploy/fleetfile.py) it writes, with a new random password per
party (``secrets``):

``definitions.json``
    RabbitMQ definitions (``rabbitmqctl import_definitions``, or ``load_definitions``
    in rabbitmq.conf): the vhost; one user per worker (``<ns>.worker.<id>``), per client
    (its name) and for the operator (``<ns>.operator``), stored as RabbitMQ's salted
    SHA-256 hashes; the least-privilege permissions of deploy/grants.py; and the
    worker queues, worker exchanges and dead-letter queue, so clients can send work
    before a worker first starts.
``redis.acl`` (and ``redis-<worker>.acl`` for a worker with a Redis of its own)
    Redis ACL files (``aclfile`` in redis.conf): one user per worker limited to its
    own keys, a ``healthcheck`` user that may only PING, and ``default`` off.
``<party>.env``
    One env file per worker, client and the operator: ``TENSORFLEET_BROKER_URL`` with
    its user, ``TENSORFLEET_REDIS_URL`` with its Redis user (workers),
    ``TENSORFLEET_NAMESPACE`` (and ``TENSORFLEET_WORKER_ID`` for workers).

Env files hold passwords: only their owner may read them. ``definitions.json`` and
the ACL files hold only salted or plain SHA-256 hashes of random 192-bit passwords,
and are readable by all, so RabbitMQ and Redis (which run as users of their own, in
containers too) can load them. Existing files are replaced only with ``--force``
(which gives every party a new password).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import click

from broker import topology
from deploy import grants
from deploy.fleetfile import FleetSpec, load

#: RabbitMQ's name for the hashing :func:`rabbitmq_password_hash` does
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


@dataclass(frozen=True)
class Party:
    """One RabbitMQ user of the fleet, and the env file it gets."""

    name: str  # the name in the fleet file ("bob", "carol", "operator")
    kind: str  # "worker", "client" or "operator"
    user: str  # its RabbitMQ (and, for a worker, Redis) user name


def parties(spec: FleetSpec) -> list[Party]:
    """Every party of the fleet: its workers, its clients and the operator."""
    ns = spec.namespace
    return [
        *(Party(w.name, "worker", grants.worker_user(ns, w.name)) for w in spec.workers),
        *(Party(c, "client", c) for c in spec.clients),
        Party("operator", "operator", f"{ns}.operator"),
    ]


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def rabbitmq_definitions(spec: FleetSpec, passwords: Mapping[str, str]) -> dict[str, Any]:
    """The RabbitMQ definitions of the fleet; ``passwords`` maps each user to its password."""
    ns, vhost, workers = spec.namespace, spec.vhost, spec.worker_ids
    users, permissions = [], []
    for party in parties(spec):
        tags = ["management"] if party.kind == "operator" else []
        users.append(
            {
                "name": party.user,
                "password_hash": rabbitmq_password_hash(passwords[party.user]),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": tags,
            }
        )
        if party.kind == "worker":
            granted = grants.worker_permissions(ns, party.name, workers)
        elif party.kind == "client":
            granted = grants.client_permissions(ns, party.name, workers)
        else:  # the broker's operator: everything in the fleet's vhost (status, Flower)
            granted = grants.Permissions(".*", ".*", ".*")
        permissions.append(
            {
                "user": party.user,
                "vhost": vhost,
                "configure": granted.configure,
                "write": granted.write,
                "read": granted.read,
            }
        )
    queues, exchanges, bindings = [], [], []
    for worker_id in workers:
        name = topology.worker_queue(worker_id, ns)
        queues.append(_queue(name, vhost, topology.worker_queue_arguments(spec.queue_type)))
        exchanges.append(_exchange(name, vhost, "direct"))
        bindings.append(_binding(name, name, vhost, name))
    dead_letters = topology.dead_letter_queue(ns)
    dlx = topology.dead_letter_exchange(ns)
    queues.append(_queue(dead_letters, vhost))
    exchanges.append(_exchange(dlx, vhost, "fanout"))
    bindings.append(_binding(dlx, dead_letters, vhost, ""))
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


def _queue(name: str, vhost: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    # as Celery and the worker declare them: durable; worker queues carry only their type
    # when it is quorum (broker/topology.py worker_queue_arguments)
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments or {},
    }


def _exchange(name: str, vhost: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def _binding(source: str, queue: str, vhost: str, key: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


def redis_acl_files(spec: FleetSpec, passwords: Mapping[str, str]) -> dict[str, str]:
    """File name -> text of one ACL file per Redis the workers use (Redis passwords by user)."""
    by_url: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for worker in spec.workers:
        by_url.setdefault(worker.redis_url, []).append(worker.name)
        if worker.redis_url not in names:
            own = worker.own_redis and worker.redis_url != spec.redis_url
            names[worker.redis_url] = f"redis-{worker.name}.acl" if own else "redis.acl"
    files = {}
    for url, worker_ids in by_url.items():
        lines = [  # an ACL file takes no comments
            "user default off resetkeys resetchannels -@all",
            "user healthcheck on nopass resetkeys resetchannels -@all +ping",
        ]
        for worker_id in worker_ids:
            user = grants.worker_user(spec.namespace, worker_id)
            digest = hashlib.sha256(passwords[user].encode("utf-8")).hexdigest()
            rules = grants.worker_redis_rules(spec.namespace, worker_id)
            lines.append(" ".join(["user", user, "on", f"#{digest}", *rules]))
        files[names[url]] = "\n".join(lines) + "\n"
    return files


def with_credentials(url: str, user: str, password: str, path: str | None = None) -> str:
    """``url`` with ``user:password@`` (percent-encoded) and, if given, a new path."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path if path is None else path, "", ""))


def env_files(
    spec: FleetSpec, passwords: Mapping[str, str], redis_passwords: Mapping[str, str]
) -> dict[str, str]:
    """File name -> text of every party's env file (RabbitMQ and Redis passwords by user)."""
    vhost_path = "/" + quote(spec.vhost, safe="")
    redis_of = {worker.name: worker.redis_url for worker in spec.workers}
    files = {}
    for party in parties(spec):
        password = passwords[party.user]
        lines = [
            f"# TensorFleet {party.kind} {party.name} of fleet {spec.namespace} "
            "(tensorfleet provision): keep it secret",
            f"TENSORFLEET_NAMESPACE={spec.namespace}",
            f"TENSORFLEET_QUEUE_TYPE={spec.queue_type}",
            "TENSORFLEET_BROKER_URL="
            + ";".join(  # a cluster's nodes: Celery's failover form
                with_credentials(url, party.user, password, vhost_path) for url in spec.broker_urls
            ),
        ]
        if party.kind == "worker":
            redis_url = with_credentials(
                redis_of[party.name], party.user, redis_passwords[party.user]
            )
            lines += [f"TENSORFLEET_REDIS_URL={redis_url}", f"TENSORFLEET_WORKER_ID={party.name}"]
        if spec.tls is not None:
            lines.append(f"TENSORFLEET_TLS_CA_FILE={spec.tls.ca_file}")
            if spec.tls.cert_dir is not None:
                lines.append(f"TENSORFLEET_TLS_CERT_FILE={spec.tls.cert_file(party.name)}")
                lines.append(f"TENSORFLEET_TLS_KEY_FILE={spec.tls.key_file(party.name)}")
        files[f"{party.name}.env"] = "\n".join(lines) + "\n"
    return files


def provision(spec: FleetSpec, out: Path, force: bool = False, certs: bool = False) -> list[Path]:
    """Write every file of the fleet into ``out`` (created if needed); the paths written.

    With ``certs``, also a throwaway CA, a server certificate for the fleet's hosts and
    a client certificate per party, into ``out/tls`` (deploy/certs.py).
    """
    passwords = {party.user: secrets.token_urlsafe(24) for party in parties(spec)}
    redis_passwords = {
        grants.worker_user(spec.namespace, worker_id): secrets.token_urlsafe(24)
        for worker_id in spec.worker_ids
    }
    files = {
        "definitions.json": json.dumps(rabbitmq_definitions(spec, passwords), indent=2) + "\n",
        **redis_acl_files(spec, redis_passwords),
        **env_files(spec, passwords, redis_passwords),
    }
    existing = sorted(name for name in files if (out / name).exists())
    if existing and not force:
        raise click.ClickException(
            f"{out / existing[0]} exists: pass --force to replace the fleet's files "
            "(every party gets a new password)"
        )
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = out / name
        mode = 0o600 if name.endswith(".env") else 0o644
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
        written.append(path)
    if certs:
        from deploy.certs import write_fleet_certs

        names = [party.name for party in parties(spec)]
        written += write_fleet_certs(out / "tls", [*spec.hosts, "localhost", "127.0.0.1"], names)
    return written


@click.command("provision")
@click.argument("fleet_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write definitions.json, the Redis ACL files and the env files into.",
)
@click.option("--force", is_flag=True, help="Replace files already there (new passwords).")
@click.option(
    "--certs",
    is_flag=True,
    help="Also make a throwaway CA, a server certificate for the fleet's hosts and a client "
    "certificate per party, in DIR/tls (for trying TLS; needs the cryptography package).",
)
def provision_command(fleet_file: Path, out: Path, force: bool, certs: bool) -> None:
    """Write the RabbitMQ users, Redis ACL users and env files of the fleet in FLEET_FILE.

    Load definitions.json into RabbitMQ (rabbitmqctl import_definitions, or
    load_definitions), each redis*.acl into its Redis (aclfile), and give each party
    its own <name>.env.
    """
    spec = load(fleet_file)
    for path in provision(spec, out, force, certs):
        click.echo(str(path))
