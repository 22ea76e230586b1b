"""In-process workers: the same engine and the same message bytes, no servers.

:class:`Hub` plays the broker: one FIFO inbox per worker id, delivered to that
worker's :class:`~worker.engine.Engine` until every inbox is empty. Replies land
in per-client mailboxes. Messages are real msgpack/safetensors bytes, so the
in-process worker shares no memory with its client and every test of a
``VirtualWorker`` also tests the wire format.
"""

from __future__ import annotations

from collections import deque

from broker.codec import Body
from worker.engine import Engine


class Hub:
    """Routes message bytes between in-process clients and engines."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}
        self._inboxes: dict[str, deque[Body]] = {}
        self._mailboxes: dict[str, deque[Body]] = {}
        self._draining = False

    def engine(self, worker_id: str) -> Engine:
        """The engine of ``worker_id``, created on first use (a VirtualWorker's id)."""
        engine = self.engines.get(worker_id)
        if engine is None:
            engine = self.engines[worker_id] = Engine(
                worker_id, is_worker=self.engines.__contains__
            )
        return engine

    def mailbox(self, address: str) -> deque[Body]:
        return self._mailboxes.setdefault(address, deque())

    def deliver(self, worker_id: str, body: Body) -> None:
        """Queue a message for a worker and run the fleet until it is quiet."""
        self._inboxes.setdefault(worker_id, deque()).append(body)
        if not self._draining:
            self._drain()

    def _drain(self) -> None:
        self._draining = True
        try:
            progressed = True
            while progressed:
                progressed = False
                for worker_id, inbox in list(self._inboxes.items()):
                    engine = self.engines.get(worker_id)
                    if engine is None:  # not started yet: its messages wait, like a queue
                        continue
                    while inbox:
                        progressed = True
                        self._route(engine.handle(inbox.popleft()).outgoing)
        finally:
            self._draining = False

    def _route(self, outgoing: list[tuple[str, str, Body]]) -> None:
        for kind, address, body in outgoing:
            if kind == "reply":
                self.mailbox(address).append(body)
            else:
                self._inboxes.setdefault(address, deque()).append(body)


class InProcessTransport:
    """The Transport of VirtualWorkers: hands bytes to a Hub."""

    def __init__(self, hub: Hub, reply_address: str = "me") -> None:
        self.hub = hub
        self.reply_address = reply_address
        self._mailbox = hub.mailbox(reply_address)

    def publish(self, worker_id: str, body: Body) -> None:
        self.hub.deliver(worker_id, body)

    def receive(self, timeout: float) -> Body | None:
        # everything runs synchronously: a reply is either here now or will never come
        return self._mailbox.popleft() if self._mailbox else None

    def close(self) -> None:
        self._mailbox.clear()
