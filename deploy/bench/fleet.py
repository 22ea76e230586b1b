"""Fleet benchmark: pointer ops and big transfers on a real fleet, beside raw pika and Celery.

Every TensorFleet figure sits beside a baseline measured seconds apart in the
same run, on the same broker:

* a synchronous op round trip (``(a + b).get()``) beside a raw pika RPC round
  trip (a tiny echo consumer in a subprocess) and a plain Celery no-op task
  round trip (``send_task("noop").get()`` on a solo worker in a subprocess);
* pipelined pointer ops per second (``z = x + y`` in a loop, then one
  synchronising call) beside raw pika one-way messages per second;
* 100 MiB send + get and move bob -> alice beside a raw pika publish of the
  same bytes to the echo consumer, timed until it has them.

The fleet is always the bench's own: ``bob`` and ``alice`` of a private
``TENSORFLEET_NAMESPACE`` started for the run and deleted after it
(:func:`deploy.fleet_launch.private_fleet`), so a benchmark never measures, or
disturbs, a fleet someone else is using.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pika
import torch

from broker.amqp import pika_url
from broker.settings import get_settings
from deploy.bench.common import Row
from worker.runner import stop_processes

MIB = 2**20
BIG = 100 * MIB
#: the fleet workers this section needs (on the bench's private fleet)
FLEET_WORKERS = ("bob", "alice")

#: The echo consumer: answers each message that has a reply_to; counts one-way ones.
_ECHO = r"""
import sys, pika
url, queue = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue, auto_delete=True)
channel.basic_qos(prefetch_count=1000)
count = [0]
def on_message(ch, method, properties, body):
    if properties.reply_to is None:
        count[0] += 1
        return
    if properties.headers and properties.headers.get("kind") == "count":
        reply = str(count[0]).encode(); count[0] = 0
    elif len(body) > 1024:
        reply = str(len(body)).encode()
    else:
        reply = body
    ch.basic_publish("", properties.reply_to, reply,
                     pika.BasicProperties(correlation_id=properties.correlation_id))
channel.basic_consume(queue, on_message, auto_ack=True)
print("ready", flush=True)
channel.start_consuming()
"""

#: A plain Celery app with one no-op task, run by a solo worker like ours.
_CELERY_APP = r"""
import os
from celery import Celery
app = Celery("tfbench", broker=os.environ["TFBENCH_BROKER"], backend="rpc://")
app.conf.update(task_serializer="msgpack", result_serializer="msgpack",
                accept_content=["msgpack"], worker_hijack_root_logger=False)

@app.task(name="tfbench.noop")
def noop():
    return None
"""


# ---------------------------------------------------------------------- helpers
def _best(function: Callable[[], float], repeats: int) -> float:
    return min(function() for _ in range(repeats))


def _median_us(function: Callable[[], object], calls: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


# ---------------------------------------------------------------------- raw pika
class RawPika:
    """A pika client and an echo consumer subprocess: the raw-broker baselines."""

    def __init__(self, url: str) -> None:
        self.url = pika_url(url)
        self.queue = f"tfbench.echo.{uuid.uuid4().hex[:8]}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ECHO, self.url, self.queue], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the pika echo consumer did not start")
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()
        self.reply_queue = self.channel.queue_declare("", exclusive=True).method.queue
        self._replies: list[bytes] = []
        self.channel.basic_consume(
            self.reply_queue, lambda ch, m, p, body: self._replies.append(body), auto_ack=True
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()
        stop_processes([self.process])

    def _call(self, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        self.channel.basic_publish(
            "",
            self.queue,
            body,
            pika.BasicProperties(reply_to=self.reply_queue, correlation_id="1", headers=headers),
        )
        while not self._replies:
            self.connection.process_data_events(time_limit=None)
        return self._replies.pop()

    def rpc_us(self, calls: int) -> float:
        """Median µs of a 100-byte request and its reply."""
        body = b"x" * 100
        return _median_us(lambda: self._call(body), calls)

    def one_way_per_s(self, messages: int) -> float:
        """100-byte messages per second, publish of the first to consumption of the last."""
        body = b"x" * 100
        properties = pika.BasicProperties()
        start = time.perf_counter()
        for _ in range(messages):
            self.channel.basic_publish("", self.queue, body, properties)
        counted = int(self._call(b"", {"kind": "count"}))
        elapsed = time.perf_counter() - start
        assert counted == messages, (counted, messages)
        return messages / elapsed

    def transfer_s(self, body: bytes) -> float:
        """Seconds from the start of publishing ``body`` until the consumer has it all."""
        start = time.perf_counter()
        size = int(self._call(body))
        elapsed = time.perf_counter() - start
        assert size == len(body)
        return elapsed


# ---------------------------------------------------------------------- Celery
@contextlib.contextmanager
def celery_noop(url: str) -> Iterator[Callable[[], object]]:
    """A plain Celery solo worker with a no-op task; yields a function that calls it."""
    with tempfile.TemporaryDirectory(prefix="tfbench-") as directory:
        Path(directory, "tfbench_celery.py").write_text(textwrap.dedent(_CELERY_APP))
        queue = f"tfbench.celery.{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "TFBENCH_BROKER": url}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tfbench_celery",
                "worker",
                "-P",
                "solo",
                "-Q",
                queue,
                "-l",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"{queue}@%h",
            ],
            cwd=directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sys.path.insert(0, directory)
        os.environ["TFBENCH_BROKER"] = url
        try:
            import tfbench_celery

            app = tfbench_celery.app

            def call() -> object:
                return app.send_task("tfbench.noop", queue=queue).get(timeout=60)

            call()  # waits in the queue until the worker is up
            yield call
        finally:
            sys.path.remove(directory)
            os.environ.pop("TFBENCH_BROKER", None)
            sys.modules.pop("tfbench_celery", None)
            stop_processes([process])
            with contextlib.suppress(Exception):
                connection = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
                connection.channel().queue_delete(queue)
                connection.close()


# ---------------------------------------------------------------------- the fleet
def _fleet_figures(bob: Any, alice: Any, quick: bool) -> dict[str, float]:
    repeats = 1 if quick else 3
    figures: dict[str, float] = {}
    a = torch.tensor([1.0, 2, 3, 4, 5]).send(bob)  # type: ignore[attr-defined]
    b = torch.tensor([1.0, 1, 1, 1, 1]).send(bob)  # type: ignore[attr-defined]
    calls = 200 if quick else 1000
    figures["sync_us"] = _median_us(lambda: (a + b).get(), calls)
    figures["ping_us"] = _median_us(bob.synchronize, calls)

    figures["ops_per_s"] = _pipelined_per_s(bob, a, b, quick)

    data = torch.arange(BIG // 4, dtype=torch.float32)

    def send_get() -> float:
        start = time.perf_counter()
        pointer = data.send(bob)  # type: ignore[attr-defined]
        back = pointer.get()
        elapsed = time.perf_counter() - start
        assert back.shape == data.shape
        return elapsed

    def send_only() -> float:
        start = time.perf_counter()
        pointer = data.send(bob)  # type: ignore[attr-defined]
        bob.synchronize()
        elapsed = time.perf_counter() - start
        del pointer
        return elapsed

    def move() -> float:
        pointer = data.send(bob)  # type: ignore[attr-defined]
        bob.synchronize()
        start = time.perf_counter()
        pointer.move(alice)
        alice.synchronize()
        elapsed = time.perf_counter() - start
        del pointer
        alice.synchronize()
        return elapsed

    figures["send_get_s"] = _best(send_get, repeats)
    figures["send_s"] = _best(send_only, repeats)
    figures["move_s"] = _best(move, repeats)
    return figures


def _events_off_figures(carol: Any, quick: bool) -> dict[str, float]:
    """The sync and pipelined figures on a worker started with TENSORFLEET_TASK_EVENTS=0."""
    a = torch.tensor([1.0, 2, 3, 4, 5]).send(carol)  # type: ignore[attr-defined]
    b = torch.tensor([1.0, 1, 1, 1, 1]).send(carol)  # type: ignore[attr-defined]
    sync_us = _median_us(lambda: (a + b).get(), 200 if quick else 1000)
    return {"sync_us": sync_us, "ops_per_s": _pipelined_per_s(carol, a, b, quick)}


def _pipelined_per_s(worker: Any, a: Any, b: Any, quick: bool) -> float:
    """Pipelined ``z = a + b`` on ``worker``, then one sync: the best of 3 runs (1 if quick)."""
    ops = 20_000 if quick else 100_000

    def pipelined() -> float:
        start = time.perf_counter()
        for _ in range(ops):
            z = a + b
        del z
        worker.synchronize()
        return ops / (time.perf_counter() - start)

    pipelined()  # warm the shape cache
    return max(pipelined() for _ in range(1 if quick else 3))


def run(quick: bool, workers: Mapping[str, Any]) -> list[Row]:
    """The fleet rows: TensorFleet on bob and alice beside raw pika and plain Celery."""
    from deploy.demo import release

    url = get_settings().broker_url
    repeats = 1 if quick else 3
    raw = RawPika(url)
    try:
        rpc_us = raw.rpc_us(200 if quick else 1000)
        one_way = max(raw.one_way_per_s(5_000 if quick else 20_000) for _ in range(repeats))
        payload = bytes(BIG)
        raw_s = _best(lambda: raw.transfer_s(payload), repeats)
        with celery_noop(url) as noop:
            celery_us = _median_us(noop, 200 if quick else 1000)
        bob, alice, carol = workers["bob"], workers["alice"], workers["carol"]
        fleet = _fleet_figures(bob, alice, quick)
        events_off = _events_off_figures(carol, quick)
        release([bob, alice, carol])
        # the raw baseline again after the fleet figures: the better of the two windows
        raw_s = min(raw_s, _best(lambda: raw.transfer_s(payload), repeats))
    finally:
        raw.close()
    raw_mb_s = BIG / raw_s / 1e6
    return [
        Row(
            "sync_op_vs_pika_rpc",
            "fleet sync op ((a + b).get())",
            fleet["sync_us"],
            "µs",
            "raw pika RPC",
            rpc_us,
        ),
        Row(
            "sync_op_vs_celery_noop",
            "fleet sync op ((a + b).get())",
            fleet["sync_us"],
            "µs",
            "Celery no-op RT",
            celery_us,
        ),
        Row(
            "task_events_sync_op",
            "fleet sync op, task events on (bob)",
            fleet["sync_us"],
            "µs",
            "task events off (carol)",
            events_off["sync_us"],
        ),
        Row(
            "task_events_pipelined",
            "fleet pipelined ops/s, task events on",
            fleet["ops_per_s"],
            "ops/s",
            "task events off",
            events_off["ops_per_s"],
            lower_is_better=False,
        ),
        Row(
            "ping_vs_pika_rpc",
            "fleet ping (worker.synchronize())",
            fleet["ping_us"],
            "µs",
            "raw pika RPC",
            rpc_us,
        ),
        Row(
            "pipelined_ops_per_s",
            "fleet pipelined ops (z = a + b)",
            fleet["ops_per_s"],
            "ops/s",
            "raw pika one-way msg/s",
            one_way,
            lower_is_better=False,
        ),
        Row(
            "send_get_100mib_vs_pika",
            "fleet 100 MiB send+get (200 MiB moved)",
            2 * BIG / fleet["send_get_s"] / 1e6,
            "MB/s",
            "raw pika 100 MiB MB/s",
            raw_mb_s,
            lower_is_better=False,
        ),
        Row(
            "send_100mib_vs_pika",
            "fleet 100 MiB send",
            BIG / fleet["send_s"] / 1e6,
            "MB/s",
            "raw pika 100 MiB MB/s",
            raw_mb_s,
            lower_is_better=False,
        ),
        Row(
            "move_100mib_vs_pika",
            "fleet 100 MiB move bob -> alice",
            BIG / fleet["move_s"] / 1e6,
            "MB/s",
            "raw pika 100 MiB MB/s",
            raw_mb_s,
            lower_is_better=False,
        ),
    ]
