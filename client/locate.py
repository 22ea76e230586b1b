"""Where is an object now? Asking the workers after a transfer did not report done.

A ``move`` is carried out worker to worker: the source sends the data and forgets
it, the destination keeps it and answers the client. When that answer does not
come (the destination died, a worker is not running, the wait timed out) the
client cannot guess; it asks. The source is asked first: its queue is FIFO, so its
answer comes after the move command ran there, and anything it forwarded is
already in the destination's queue, ahead of the question asked there next. So
the two answers together say where the data is, or that it is on its way, or that
it was lost.

Questions are ``search`` commands by object id (metadata only, never the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker import protocol
from broker.errors import (
    WorkerNeverStartedError,
    WorkerNotRunningError,
    WorkerStoreUnavailableError,
    WorkerUnavailableError,
)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One worker's answer about one object."""

    worker: str
    #: True: it holds the object; False: it does not; None: it could not answer
    holds: bool | None
    #: why it could not answer ("" when it did)
    silent_because: str = ""
    #: messages waiting in its queue when it could not answer
    queued: int = 0


def ask(worker: Any, obj_id: int) -> Sighting:
    """Whether ``worker`` holds ``obj_id`` (one of this client's objects), without fetching it."""
    try:
        found = worker._request([protocol.SEARCH, [obj_id], None], f"locate object {obj_id}")
    except WorkerUnavailableError as error:
        state = worker.session.transport.worker_state(worker.id, 10.0)
        return Sighting(worker.id, None, _why(error), 0 if state is None else state.messages)
    return Sighting(worker.id, any(row[0] == obj_id for row in found))


def after_move(source: Any, destination: Any, obj_id: int) -> tuple[Any, str | None]:
    """Where ``obj_id`` is after a move from ``source`` to ``destination`` that did not report.

    Returns the worker a pointer to it should point at and, unless the move is known
    to be done, a sentence saying exactly where the data is. The pointer points at
    the source only if the source still holds it (nothing moved, nothing will);
    otherwise at the destination, where the data is, or will be once the commands
    already queued for it run.
    """
    at_source = ask(source, obj_id)
    if at_source.holds:
        return source, f"still on {source.id}: nothing moved"
    at_destination = ask(destination, obj_id)
    if at_destination.holds:
        return destination, None
    if at_source.holds is None:
        return destination, (
            f"on {source.id} as far as anyone can tell: {source.id} {at_source.silent_because}, "
            f"and the move to {destination.id} waits in its queue ({at_source.queued} "
            f"messages); it runs once {source.id} serves again"
        )
    if at_destination.holds is None:
        return destination, (
            f"no longer on {source.id}: it was sent to {destination.id}, which "
            f"{at_destination.silent_because} ({at_destination.queued} messages wait in its "
            f"queue); it lands there once {destination.id} serves again, unless "
            f"{destination.id} had taken part of it before it stopped: then it was lost, and "
            ".get() says so"
        )
    return destination, (
        f"on neither {source.id} nor {destination.id}: both answered that they do not hold it, "
        "so it was lost in transit; send it again from where you have it"
    )


def _why(error: WorkerUnavailableError) -> str:
    if isinstance(error, WorkerNotRunningError):
        return "is not running"
    if isinstance(error, WorkerNeverStartedError):
        return "never started"
    if isinstance(error, WorkerStoreUnavailableError):
        return "cannot reach its store (Redis)"
    return "did not answer in time"
