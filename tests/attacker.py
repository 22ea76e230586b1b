"""A second client for attack tests: the raw protocol as another principal, on either kind.

In-process, it is a client of the same hub under another name (``mallory``). On the
fleet, it is a RabbitMQ user of its own (made with ``rabbitmqctl``, removed at the
end) whose messages carry its ``user_id``, which RabbitMQ checks: the workers know
it is not the victim. It speaks the raw protocol (broker.protocol), so it can send
whatever a hostile client would, not only what the pointer API makes.
"""

from __future__ import annotations

import itertools
import subprocess
import time
import uuid
from typing import Any

import pika

from broker import codec, protocol, topology
from broker.amqp import message_properties, new_task_id, pika_url, task_message
from broker.settings import Settings

_batches = itertools.count(1)


class InProcessAttacker:
    """Another client of the in-process hub (principal ``mallory``)."""

    def __init__(self, name: str = "mallory") -> None:
        from client.inprocess import InProcessTransport
        from client.workers import VirtualWorker

        hub = VirtualWorker._session().transport.hub  # type: ignore[attr-defined]
        self.name = name
        self.transport = InProcessTransport(hub, reply_address=name)

    def send(
        self, worker_id: str, commands: list[Any], reply_to: str | None = None, **envelope: Any
    ) -> None:
        """Publish ``commands`` to a worker, replies to ``reply_to`` (default: our address)."""
        body = codec.encode(
            protocol.envelope(
                next(_batches), self.name, reply_to or self.name, commands, **envelope
            )
        )
        self.transport.publish(worker_id, body)

    def replies(self, count: int = 1, timeout: float = 0.0) -> list[list[Any]]:
        """Every reply waiting (in-process, a reply is there at once or never)."""
        found: list[list[Any]] = []
        while (body := self.transport.receive(0)) is not None:
            found.extend(codec.decode(body)["replies"])
        return found

    def close(self) -> None:
        self.transport.close()


class FleetAttacker:
    """A RabbitMQ user of its own, speaking the raw protocol with its validated user_id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"mallory-{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        _rabbitmqctl("add_user", self.name, password)
        _rabbitmqctl("set_permissions", "-p", "/", self.name, ".*", ".*", ".*")
        url = pika.URLParameters(pika_url(settings.broker_url))
        url.credentials = pika.PlainCredentials(self.name, password)
        self.connection = pika.BlockingConnection(url)
        self.channel = self.connection.channel()
        self.reply_queue = topology.reply_queue(self.name, settings.namespace)
        self.channel.queue_declare(self.reply_queue, auto_delete=True)

    def send(
        self, worker_id: str, commands: list[Any], reply_to: str | None = None, **envelope: Any
    ) -> None:
        """Publish ``commands`` to a worker, replies to ``reply_to`` (default: our queue)."""
        body = codec.encode(
            protocol.envelope(
                next(_batches), self.name, reply_to or self.reply_queue, commands, **envelope
            )
        )
        task_id = new_task_id()
        headers, payload = task_message(bytes(body), task_id, self.name)
        queue = topology.worker_queue(worker_id, self.settings.namespace)
        self.channel.basic_publish(
            queue,
            queue,
            payload,
            pika.BasicProperties(
                headers=headers,
                correlation_id=task_id,
                reply_to=self.reply_queue,
                user_id=self.name,
                **message_properties(),
            ),
        )

    def replies(self, count: int = 1, timeout: float = 30.0) -> list[list[Any]]:
        found: list[list[Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            method, _, body = self.channel.basic_get(self.reply_queue, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.05)
                continue
            found.extend(codec.decode(body)["replies"])
        return found

    def close(self) -> None:
        try:
            self.connection.close()
        finally:
            _rabbitmqctl("delete_user", self.name)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def refusal(client: Any, worker_id: str, command: list[Any]) -> dict[str, Any]:
    """Send one command that asks for a reply and return the error it was answered with."""
    client.send(worker_id, [command])
    [(_, ok, payload)] = client.replies(1)
    assert ok is False, f"{command[0]} was not refused: {payload}"
    return dict(payload)
