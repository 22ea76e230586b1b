"""The transport seam between a client and its workers.

A transport moves opaque message bytes: ``publish`` hands one batch to a worker
(fire and forget; per-worker FIFO), ``receive`` returns the next reply message
addressed to this client. ``VirtualWorker`` uses :class:`InProcessTransport`,
``FleetWorker`` the pika transport in ``client.fleet``. Nothing else differs
between the two worker kinds. ``worker_state`` answers "is anybody serving that
worker's queue?" without waiting for the worker (the fleet transport asks
RabbitMQ; in one process the answer is always yes, so it returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.codec import Body


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the broker says about a worker's queue, right now."""

    #: the queue exists: a worker of this id started at least once in this namespace
    exists: bool
    #: how many consumers the queue has (0: nothing takes its messages)
    consumers: int = 0
    #: messages waiting in the queue
    messages: int = 0
    #: the worker holds its store-down marker: it runs, but its Redis is down
    store_down: bool = False

    @property
    def serving(self) -> bool:
        return self.exists and self.consumers > 0 and not self.store_down


class Transport(Protocol):
    """Moves message bytes between one client and the workers."""

    #: The address workers send replies to (a reply queue name, or a mailbox name).
    reply_address: str

    def publish(self, worker_id: str, body: Body, resend: bool = False) -> None:
        """Queue one message for ``worker_id``; never waits for it to run.

        ``resend``: the same batch again, after its reply was lost (the worker replays
        a batch it ran instead of running it twice).
        """

    def receive(self, timeout: float) -> Body | None:
        """The next reply message for this client, or None if none came within ``timeout``."""

    def receive_from(self, timeout: float) -> tuple[Body, str | None] | None:
        """Like :meth:`receive`, with the id of the worker that sent the reply.

        The sender is what the transport can vouch for (the RabbitMQ-checked ``user_id``
        of a worker's own user; the engine that produced it, in-process), or None where
        it cannot tell one worker from another (workers sharing one broker account).
        """

    def worker_state(
        self, worker_id: str, timeout: float, look_for_marker: bool = False
    ) -> WorkerState | None:
        """What the broker says of ``worker_id`` now; None where there is no broker to ask."""

    def close(self) -> None:
        """Release connections and threads."""
