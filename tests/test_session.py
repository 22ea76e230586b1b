"""The client session under threads: the periodic flusher never loses a queued command.

A counting transport stands in for the network (this is the session's own
contract, not a worker behaviour): it decodes every batch it is handed and
records each command, so a command that never reached ``publish`` shows up as
missing. The user's thread queues commands while the flusher runs at the
fleet's default interval, as ``FleetWorker`` sessions do.
"""

from __future__ import annotations

import threading

import pytest

from broker import codec, protocol
from broker.settings import Settings
from client.session import Session

COMMANDS_PER_RUN = 1_000_000
RUNS = 10


class CountingTransport:
    """A Transport that keeps, per worker, the ids of the delete commands it was handed."""

    reply_address = "counting"

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}
        self.messages = 0
        self._lock = threading.Lock()

    def publish(self, worker_id: str, body: codec.Body) -> None:
        envelope = codec.decode(body)
        ids = [command[1] for command in envelope["commands"]]
        with self._lock:
            self.seen.setdefault(worker_id, []).extend(ids)
            self.messages += 1

    def receive(self, timeout: float) -> codec.Body | None:
        return None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("run", range(RUNS))
def test_no_command_is_lost_while_the_flusher_runs(run: int) -> None:
    transport = CountingTransport()
    session = Session(
        transport,
        timeout=1.0,
        batch_size=Settings().batch_size,
        flush_interval=Settings().flush_interval,
    )
    try:
        enqueue = session.enqueue
        for obj_id in range(COMMANDS_PER_RUN):
            enqueue("bob" if obj_id % 3 else "alice", (protocol.DELETE, obj_id))
        session.flush()
    finally:
        session.close()
    received = sorted(transport.seen["bob"] + transport.seen["alice"])
    assert len(received) == COMMANDS_PER_RUN
    assert received == list(range(COMMANDS_PER_RUN))
    # per worker, commands arrive in the order they were queued
    assert transport.seen["bob"] == sorted(transport.seen["bob"])
    assert transport.seen["alice"] == sorted(transport.seen["alice"])
    # the flusher really ran meanwhile: more messages than full batches alone would make
    assert transport.messages > 2 * COMMANDS_PER_RUN // Settings().batch_size


def test_finalizer_commands_from_other_threads_are_sent_too() -> None:
    transport = CountingTransport()
    session = Session(transport, timeout=1.0, batch_size=1000, flush_interval=0.001)
    per_thread = 100_000

    def finalize(offset: int) -> None:
        for obj_id in range(offset, offset + per_thread):
            session.enqueue_from_finalizer("bob", (protocol.DELETE, obj_id), ("alice", "bob"))

    threads = [threading.Thread(target=finalize, args=(i * per_thread,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for obj_id in range(4 * per_thread, 5 * per_thread):
            session.enqueue("bob", (protocol.DELETE, obj_id))
        for thread in threads:
            thread.join()
        session.flush()
    finally:
        session.close()
    assert sorted(transport.seen["bob"]) == list(range(5 * per_thread))
    assert session.pending() == 0
