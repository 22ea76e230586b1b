"""The transport seam between a client and its workers.

A transport moves opaque message bytes: ``publish`` hands one batch to a worker
(fire and forget; per-worker FIFO), ``receive`` returns the next reply message
addressed to this client. ``VirtualWorker`` uses :class:`InProcessTransport`,
``FleetWorker`` the pika transport in ``client.fleet``. Nothing else differs
between the two worker kinds.
"""

from __future__ import annotations

from typing import Protocol

from broker.codec import Body


class Transport(Protocol):
    """Moves message bytes between one client and the workers."""

    #: The address workers send replies to (a reply queue name, or a mailbox name).
    reply_address: str

    def publish(self, worker_id: str, body: Body) -> None:
        """Queue one message for ``worker_id``; never waits for it to run."""

    def receive(self, timeout: float) -> Body | None:
        """The next reply message for this client, or None if none came within ``timeout``."""

    def close(self) -> None:
        """Release connections and threads."""
