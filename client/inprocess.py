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
from broker.errors import MalformedMessageError
from broker.settings import get_settings
from broker.topology import worker_user
from worker.engine import Delivery, Engine


class Hub:
    """Routes message bytes between in-process clients and engines."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}
        #: worker id -> (message, the principal that published it), oldest first
        self._inboxes: dict[str, deque[tuple[Body, str]]] = {}
        self._mailboxes: dict[str, deque[tuple[Body, str]]] = {}
        self._draining = False
        #: (worker id, reason) of every message a worker refused whole, like the fleet's
        #: dead-letter queue: a malformed message is never raised into its sender
        self.dead_letters: list[tuple[str, str]] = []

    def engine(self, worker_id: str) -> Engine:
        """The engine of ``worker_id``, created on first use (a VirtualWorker's id)."""
        engine = self.engines.get(worker_id)
        if engine is None:
            engine = self.engines[worker_id] = Engine(
                worker_id,
                is_worker=self.engines.__contains__,
                quota=get_settings().client_quota_bytes,
                trusts_forwarder=lambda principal, sender: principal == worker_user(sender),
            )
        return engine

    def mailbox(self, address: str) -> deque[tuple[Body, str]]:
        """The replies waiting for ``address``, each with the worker that sent it."""
        return self._mailboxes.setdefault(address, deque())

    def deliver(self, worker_id: str, body: Body, principal: str) -> None:
        """Queue ``principal``'s message for a worker and run the fleet until it is quiet."""
        self._inboxes.setdefault(worker_id, deque()).append((body, principal))
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
                        body, principal = inbox.popleft()
                        try:
                            result = engine.handle(body, Delivery(principal=principal))
                        except MalformedMessageError as error:
                            self.dead_letters.append((worker_id, str(error)))
                            continue
                        self._route(worker_id, result.outgoing)
        finally:
            self._draining = False

    def _route(self, worker_id: str, outgoing: list[tuple[str, str, Body]]) -> None:
        """Deliver what worker ``worker_id`` sent: replies, and forwards as that worker."""
        for kind, address, body in outgoing:
            if kind == "reply":
                self.mailbox(address).append((body, worker_id))
            else:
                self._inboxes.setdefault(address, deque()).append((body, worker_user(worker_id)))


class InProcessTransport:
    """The Transport of VirtualWorkers: hands bytes to a Hub.

    Its client is the principal ``reply_address`` names (``me`` for the hook's workers):
    in one process there is nothing to authenticate, but objects still have owners.
    """

    def __init__(self, hub: Hub, reply_address: str = "me") -> None:
        self.hub = hub
        self.reply_address = reply_address
        self._mailbox = hub.mailbox(reply_address)

    def publish(self, worker_id: str, body: Body, resend: bool = False) -> None:
        self.hub.deliver(worker_id, body, self.reply_address)

    def receive(self, timeout: float) -> Body | None:
        reply = self.receive_from(timeout)
        return None if reply is None else reply[0]

    def receive_from(self, timeout: float) -> tuple[Body, str | None] | None:
        # everything runs synchronously: a reply is either here now or will never come
        return self._mailbox.popleft() if self._mailbox else None

    def worker_state(self, worker_id: str, timeout: float, look_for_marker: bool = False) -> None:
        return None  # in one process every worker serves: there is nothing to ask

    def close(self) -> None:
        self._mailbox.clear()
