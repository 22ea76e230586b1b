"""Fast, true answers about workers (issue 16.4): never started, not running, store down.

A synchronising call to a worker nobody serves fails within a fraction of a second
with the WorkerUnavailableError subclass that says why, instead of waiting out
``TENSORFLEET_TIMEOUT``; ``repr(worker)`` never waits that long; ``wait_ready`` returns
once a worker serves. Consumers are a fleet-only notion, so these are fleet tests,
each on a fleet of its own (they kill and restart workers and stores); the
behaviour that exists in-process (``repr``, ``wait_ready``) runs on both kinds in
tests/test_worker_ready.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fleet_fixture import REPO, fleet
from private_servers import free_port

import client as sy
from broker.errors import (
    WorkerNeverStartedError,
    WorkerNotRunningError,
    WorkerStoreUnavailableError,
    WorkerUnavailableError,
)
from client.fleet import get_fleet_transport

#: a fast failure must come well inside this (the old behaviour took TENSORFLEET_TIMEOUT)
FAST = 5.0
#: the timeout these tests run with: long enough that hitting it fails them
TIMEOUT = "30"


@pytest.fixture(scope="module")
def pair() -> Iterator[Any]:
    """A fleet of two workers of its own (the tests kill and restart them)."""
    previous = os.environ.get("TENSORFLEET_TIMEOUT")
    os.environ["TENSORFLEET_TIMEOUT"] = TIMEOUT
    try:
        with fleet(("bob", "alice")) as running:
            yield running
    finally:
        if previous is None:
            os.environ.pop("TENSORFLEET_TIMEOUT", None)
        else:
            os.environ["TENSORFLEET_TIMEOUT"] = previous


def timed(call: Any) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except BaseException as error:  # the error is what the test looks at
        return error, time.monotonic() - started
    return None, time.monotonic() - started


def test_a_worker_that_never_started_fails_fast_and_nothing_is_declared(pair: Any) -> None:
    hook = sy.TorchHook(torch)
    ghost = sy.FleetWorker(hook, id="ghost")
    pointer = torch.ones(3).send(ghost)
    error, seconds = timed(pointer.get)
    assert isinstance(error, WorkerNeverStartedError), error
    assert isinstance(error, WorkerUnavailableError)
    assert seconds < FAST, seconds
    message = str(error)
    assert '"ghost"' in message and "`tensorfleet worker ghost`" in message
    # the client declared nothing on the ghost's behalf
    state = get_fleet_transport().worker_state("ghost", 10)
    assert not state.exists
    # and the repr of such a worker answers at once
    started = time.monotonic()
    assert repr(ghost) == "<FleetWorker id:ghost #objects:?>"
    assert time.monotonic() - started < FAST
    pointer.child.garbage_collect_data = False


def test_a_killed_worker_fails_fast_then_serves_again_with_its_data(pair: Any) -> None:
    hook = sy.TorchHook(torch)
    alice = sy.FleetWorker(hook, id="alice")
    x = torch.tensor([1.0, 2.0, 3.0]).send(alice)
    alice.synchronize()
    pair.kill("alice")

    error, seconds = timed(lambda: (x + 1).get())
    assert isinstance(error, WorkerNotRunningError), error
    assert seconds < FAST, seconds
    assert "`tensorfleet worker alice`" in str(error)
    # a second call knows at once, and sends nothing that would wait in the queue
    error, seconds = timed(alice.synchronize)
    assert isinstance(error, WorkerNotRunningError) and seconds < FAST
    started = time.monotonic()
    assert repr(alice) == "<FleetWorker id:alice #objects:?>"
    assert time.monotonic() - started < FAST

    pair.start("alice", wait=False)
    assert alice.wait_ready(120) is alice
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0, 3.0]))


# ------------------------------------------------------------------ store down


class PrivateRedis:
    """A redis-server of its own that keeps its data across a stop (append-only file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # its own "ready" line, not a sleep
            if b"Ready to accept connections" in line:
                return
        raise AssertionError(f"redis-server on {self.port} exited")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()  # redis flushes its append-only file and exits
            process.wait(timeout=60)


def status_of(running: Any, worker_id: str) -> dict[str, Any]:
    """What ``tensorfleet status --json`` says of a worker."""
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "status", "--workers", worker_id, "--json"],
        env={**running.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (row,) = [row for row in json.loads(done.stdout) if row["worker"] == worker_id]
    return dict(row)


def test_a_worker_whose_redis_is_down_says_so_and_resumes_with_data_intact(
    tmp_path: Path,
) -> None:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        env = {"TENSORFLEET_REDIS_URL": redis.url, "TENSORFLEET_TIMEOUT": TIMEOUT}
        with fleet(("carol",), env=env) as running:
            hook = sy.TorchHook(torch)
            carol = sy.FleetWorker(hook, id="carol")
            x = torch.arange(6.0).send(carol)
            carol.synchronize()

            redis.stop()
            y = x * 2  # runs, but its write to Redis fails: the worker stops consuming
            errors = []
            for _ in range(2):  # the call that met the outage, or the one after it
                error, seconds = timed(carol.synchronize)
                if error is not None:
                    errors.append((error, seconds))
                    break
            assert errors, "no call reported the store down"
            error, seconds = errors[0]
            assert isinstance(error, WorkerStoreUnavailableError), error
            assert "the worker's store (Redis) is down" in str(error)
            assert seconds < FAST, seconds
            state = get_fleet_transport().worker_state("carol", 10)
            assert state.exists and state.consumers == 0 and state.store_down, running.log_tail(
                "carol"
            )
            # operators see it too: status says its store is down, the healthcheck fails
            row = status_of(running, "carol")
            assert row["up"] and row["store_up"] is False and row["queue_consumers"] == 0
            # another call now fails at once, without sending anything
            error, seconds = timed(lambda: y.get())
            assert isinstance(error, WorkerStoreUnavailableError) and seconds < FAST

            redis.start()
            assert carol.wait_ready(120) is carol
            assert torch.equal(y.get(), torch.arange(6.0) * 2)
            assert torch.equal(x.get(), torch.arange(6.0))
            assert not get_fleet_transport().worker_state("carol", 10).store_down
    finally:
        redis.stop()
