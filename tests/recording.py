"""Test helpers shared by behaviour tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from broker import codec


@contextlib.contextmanager
def recording_commands(worker: Any) -> Iterator[list[tuple[str, list[Any]]]]:
    """Every command the client publishes while inside, as (worker id, command)."""
    transport = worker.session.transport
    publish = transport.publish
    sent: list[tuple[str, list[Any]]] = []

    def recording_publish(worker_id: str, body: bytes) -> None:
        sent.extend((worker_id, command) for command in codec.decode(body)["commands"])
        publish(worker_id, body)

    setattr(transport, "publish", recording_publish)  # noqa: B010  # this instance only
    try:
        yield sent
    finally:
        delattr(transport, "publish")
