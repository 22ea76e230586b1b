"""A provisioned fleet on the shared servers, for tests: users, grants and env files, cleaned up.

:func:`provisioned_fleet` writes a fleet file for a fresh namespace, runs
``tensorfleet provision`` on it, imports ``definitions.json`` into the shared
RabbitMQ (its own vhost, named like the namespace) with ``rabbitmqctl
import_definitions``, loads the workers' users of ``redis.acl`` into the shared
Redis with ``ACL SETUSER`` (``default`` is left alone: other runs share that
Redis), and on exit deletes the vhost, the users and the ACL users.

:class:`PartyClient` is a party speaking the raw protocol with its own env file:
it publishes to a worker's exchange (never ``amq.default``) and reads its replies
from a reply queue of its own (``<ns>.reply.<user>.<suffix>``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import redis
import torch
from click.testing import CliRunner

from broker import codec, protocol, topology
from broker.amqp import message_properties, new_task_id, task_message
from broker.protocol import Ref
from broker.settings import Settings, get_settings
from broker.tls import pika_parameters
from client.cli import main
from worker.publisher import broker_user

_batches = itertools.count(1)


def read_env(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of an env file."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def import_definitions(definitions: Path) -> None:
    """``rabbitmqctl import_definitions`` of a file only its owner may read.

    rabbitmqctl runs as the rabbitmq user here (and 3.10 reads no definitions from
    stdin), so it gets a readable copy that is deleted at once.
    """
    with tempfile.TemporaryDirectory(prefix="tf-definitions-") as folder:
        os.chmod(folder, 0o755)
        copy = Path(folder) / "definitions.json"
        copy.write_text(definitions.read_text())
        os.chmod(copy, 0o644)
        rabbitmqctl("import_definitions", str(copy))


@dataclass
class Provisioned:
    """A provisioned fleet: its namespace, output directory and every party's env."""

    namespace: str
    out: Path
    workers: tuple[str, ...]
    clients: tuple[str, ...]

    def env(self, party: str) -> dict[str, str]:
        return read_env(self.out / f"{party}.env")


def fleet_file(namespace: str, workers: tuple[str, ...], clients: tuple[str, ...]) -> str:
    """A fleet file on this machine's servers (top-level keys first, then the tables)."""
    names = ", ".join(f'"{c}"' for c in clients)
    return (
        f'namespace = "{namespace}"\n'
        'broker = "amqp://127.0.0.1:5672"\n'
        'redis = "redis://127.0.0.1:6379/0"\n'
        f"clients = [{names}]\n" + "".join(f"[workers.{w}]\n" for w in workers)
    )


@contextlib.contextmanager
def provisioned_fleet(
    tmp: Path, namespace: str, workers: tuple[str, ...], clients: tuple[str, ...]
) -> Iterator[Provisioned]:
    """Provision and load a fleet on the shared servers; see the module docstring."""
    source = tmp / "fleet.toml"
    source.write_text(fleet_file(namespace, workers, clients))
    out = tmp / "out"
    result = CliRunner().invoke(main, ["provision", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    admin = redis.Redis.from_url(get_settings().redis_url)
    definitions = out / "definitions.json"
    users = [f"{namespace}.worker.{w}" for w in workers] + list(clients)
    users.append(f"{namespace}.operator")
    acl_users: list[str] = []
    try:
        import_definitions(definitions)
        for line in (out / "redis.acl").read_text().splitlines():
            if line.startswith("user ") and line.split()[1] not in ("default", "healthcheck"):
                _, name, *rules = line.split()
                admin.execute_command("ACL", "SETUSER", name, "reset", *rules)
                acl_users.append(name)
        yield Provisioned(namespace, out, workers, clients)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            rabbitmqctl("delete_vhost", namespace)
        for user in users:
            with contextlib.suppress(subprocess.CalledProcessError):
                rabbitmqctl("delete_user", user)
        for name in acl_users:
            admin.execute_command("ACL", "DELUSER", name)
        admin.close()


class PartyClient:
    """A party of a provisioned fleet speaking the raw protocol with its own credentials."""

    def __init__(self, env: dict[str, str]) -> None:
        self.settings = Settings.from_env(env)
        self.namespace = self.settings.namespace
        self.user = broker_user(self.settings.broker_url)
        self.connection = pika.BlockingConnection(self.parameters())
        self.channel = self.connection.channel()
        suffix = uuid.uuid4().hex[:8]
        self.reply_queue = topology.reply_queue(f"{self.user}.{suffix}", self.namespace)
        self.channel.queue_declare(self.reply_queue, arguments=topology.reply_queue_arguments())
        self._replies: list[list[Any]] = []
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)

    def parameters(self) -> pika.URLParameters:
        return pika_parameters(self.settings)  # with TLS options for amqps://

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._replies.extend(codec.decode(body)["replies"])

    def send(self, worker_id: str, commands: list[Any]) -> None:
        body = codec.encode(
            protocol.envelope(next(_batches), self.user, self.reply_queue, commands)
        )
        self.publish_raw(worker_id, bytes(body))

    def publish_raw(self, worker_id: str, body: bytes) -> None:
        """Publish an envelope of any making to a worker, as this party (its user_id)."""
        task_id = new_task_id()
        headers, payload = task_message(bytes(body), task_id, self.user)
        exchange = topology.worker_queue(worker_id, self.namespace)
        self.channel.basic_publish(
            exchange,
            exchange,
            payload,
            pika.BasicProperties(
                headers=headers,
                correlation_id=task_id,
                reply_to=self.reply_queue,
                user_id=self.user,
                delivery_mode=2,
                **message_properties(),
            ),
        )

    def replies(self, count: int, timeout: float = 30.0) -> list[list[Any]]:
        """Wait for ``count`` replies (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self._replies) < count and (left := deadline - time.monotonic()) > 0:
            self.connection.process_data_events(time_limit=min(left, 1.0))
        found, self._replies = self._replies[:count], self._replies[count:]
        return found

    def call(self, worker_id: str, commands: list[Any], count: int = 1) -> list[Any]:
        """Send, wait for ``count`` replies, and return their payloads (raising on errors)."""
        self.send(worker_id, commands)
        answers = self.replies(count)
        assert len(answers) == count, f"{worker_id} sent {len(answers)} of {count} replies"
        for _, ok, payload in answers:
            assert ok, payload
        return [payload for _, _, payload in answers]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.queue_delete(self.reply_queue)
        with contextlib.suppress(Exception):
            self.connection.close()


def honest_round_trip(client: PartyClient) -> None:
    """Store on bob, compute there, move the result to alice (a forward), get it back."""
    client.send(
        "bob",
        [
            [protocol.STORE, 1, torch.tensor([1.0, 2.0]), None],
            [protocol.OP, "torch.add", [Ref(1), Ref(1)], {}, [2], False, None],
            [protocol.SEND_TO, 2, "alice", 2, 10],  # alice answers this one
        ],
    )
    [(request, ok, payload)] = client.replies(1)
    assert (request, ok) == (10, True), payload
    [moved] = client.call("alice", [[protocol.GET, Ref(2), 11]])
    assert moved.tolist() == [2.0, 4.0]
