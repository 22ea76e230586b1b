"""Thousands of hostile messages at a worker while an honest client works beside them (issue 8.8).

The messages come from Hypothesis (tests/hostile.py): random bytes, pickle,
compression and nesting bombs, bad task payloads and envelopes, wrong field types,
forbidden and unknown ops, lying chunk headers, huge shapes and commands on the
honest client's object ids. On the fleet they are published with raw pika by a
RabbitMQ user of their own (tests/attacker.py), onto the queue of a real
``tensorfleet worker``; in-process they go through the hub as principal ``mallory``.

What must hold, and is asserted:

- the worker never crashes (the same process serves from first message to last);
- every message is refused with a reason (dead-lettered, matched by the index
  header it carries) or answered with an error (matched by its request ids);
- the honest client's objects and results are exact throughout;
- the worker's peak RSS stays under :data:`PEAK_RSS_LIMIT`.

The counts (messages by kind, refusals by reason, peak RSS) are printed at the end;
the README's reliability section quotes a run.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
import torch
from hostile import INDEX_HEADER, MARKER, Hostile, address, hostile_messages
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import client as sy
from broker import codec, topology
from broker.amqp import new_task_id, task_message
from broker.settings import get_settings

#: messages the fleet worker gets (issue 8.8 asks for at least 10,000)
FLEET_MESSAGES = int(os.environ.get("TENSORFLEET_HOSTILE_MESSAGES", "10000"))
#: messages an in-process worker gets (no gate there: envelopes only)
INPROCESS_MESSAGES = 3000
#: the worker's peak resident memory may not pass this (an idle worker holds ~330 MiB,
#: torch included; a single inflated compression bomb would add 100 MiB, an honoured
#: huge shape gigabytes)
PEAK_RSS_LIMIT = 512 * 1024 * 1024
#: how often (in hostile messages) the honest client checks its objects
HONEST_EVERY = 250
#: seconds the worker gets to refuse or answer everything after the last message
SETTLE_SECONDS = 600.0


def draw(strategy: st.SearchStrategy[Hostile], count: int) -> list[Hostile]:
    """``count`` examples of ``strategy``, drawn by Hypothesis's generator (no shrinking)."""
    drawn: list[Hostile] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(message: Hostile) -> None:
        drawn.append(message)

    while len(drawn) < count:
        collect()
    return drawn[:count]


class Honest:
    """The honest client: three tensors on the worker, checked exactly at every turn."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.tensors = [torch.arange(6.0).reshape(2, 3) * (k + 1) for k in range(3)]
        self.pointers = [tensor.send(worker) for tensor in self.tensors]
        self.checks = 0

    @property
    def ids(self) -> list[int]:
        return [pointer.id_at_location for pointer in self.pointers]

    def check(self, step: int) -> None:
        for tensor, pointer in zip(self.tensors, self.pointers, strict=True):
            assert torch.equal((pointer * 2 + step).get(), tensor * 2 + step)
            assert tuple(pointer.shape) == tuple(tensor.shape)
        self.checks += 1

    def final(self) -> None:
        for tensor, pointer in zip(self.tensors, self.pointers, strict=True):
            assert torch.equal(pointer.get(), tensor)


# ------------------------------------------------------------------------------ fleet
class RawAttacker:
    """Publishes hostile messages as they are, with raw pika, as its own RabbitMQ user."""

    def __init__(self, attacker: Any, namespace: str) -> None:
        self.attacker = attacker
        self.channel = attacker.channel
        self.queue = topology.worker_queue("bob", namespace)

    def publish(self, hostile: Hostile, index: int) -> None:
        body = address(hostile, index, self.attacker.reply_queue, self.attacker.name)
        if hostile.raw:
            headers, payload = dict(hostile.headers), body
            content_type = hostile.content_type
        elif hostile.chunk is not None:
            headers, _ = task_message(body, new_task_id(), self.attacker.name)
            payload = msgpack.packb([[body], {"chunk": hostile.chunk}, {}], use_bin_type=True)
            content_type = codec.CONTENT_TYPE
        else:
            headers, payload = task_message(body, new_task_id(), self.attacker.name)
            content_type = codec.CONTENT_TYPE
        headers[INDEX_HEADER] = index
        self.channel.basic_publish(
            self.queue,
            self.queue,
            payload,
            pika.BasicProperties(
                headers=headers,
                content_type=content_type,
                content_encoding="binary",
                user_id=self.attacker.name,
            ),
        )


class Ledger:
    """Which hostile messages were refused (and why) or answered with an error."""

    def __init__(self, count: int) -> None:
        self.outstanding = set(range(count))
        self.refusals: collections.Counter[str] = collections.Counter()
        self.answered_with_error = 0
        self.accepted: list[int] = []

    def refused(self, index: int, reason: str) -> None:
        if index in self.outstanding:
            self.outstanding.discard(index)
            self.refusals[reason] += 1

    def replied(self, replies: list[list[Any]]) -> None:
        marker = [request for request, _, _ in replies if request is not None]
        if not marker:
            return
        index = marker[0] // 1000
        errors = [reply for reply in replies if not reply[1]]
        if index in self.outstanding:
            if errors:
                self.outstanding.discard(index)
                self.answered_with_error += 1
            elif all(request == index * 1000 + MARKER for request, _, _ in replies):
                self.accepted.append(index)  # nothing refused: the attack went through
                self.outstanding.discard(index)


def _reason_kind(headers: dict[str, Any]) -> str:
    """The refusal kind (worker.gate.REFUSAL_KINDS) a dead-lettered message carries."""
    return str(headers.get(topology.KIND_HEADER, "?"))


def settle(ledger: Ledger, channel: Any, connection: Any, dead_letters: str, replies: str) -> None:
    """Read refusals and replies until every message is accounted for (or time is up)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while ledger.outstanding and time.monotonic() < deadline:
        progressed = False
        for queue in (dead_letters, replies):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                continue
            progressed = True
            if queue == dead_letters:
                headers = properties.headers or {}
                if INDEX_HEADER in headers:
                    ledger.refused(int(headers[INDEX_HEADER]), _reason_kind(headers))
            else:
                ledger.replied(codec.decode(body)["replies"])
        if not progressed:
            connection.process_data_events(time_limit=0.05)


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


@pytest.mark.timeout(2400)
def test_a_fleet_worker_survives_ten_thousand_hostile_messages(hook: Any) -> None:
    import fleet_fixture
    from attacker import FleetAttacker

    with fleet_fixture.fleet(("bob",)) as running:
        settings_ = get_settings()
        bob = sy.FleetWorker(hook, id="bob")
        honest = Honest(bob)
        honest.check(0)
        messages = draw(hostile_messages(honest.ids), FLEET_MESSAGES)
        kinds = collections.Counter(message.kind for message in messages)
        process = running.processes["bob"]
        attacker = FleetAttacker(settings_)
        try:
            raw = RawAttacker(attacker, settings_.namespace)
            ledger = Ledger(len(messages))
            started = time.monotonic()
            for index, message in enumerate(messages):
                raw.publish(message, index)
                if index % HONEST_EVERY == HONEST_EVERY - 1:
                    try:
                        honest.check(index)
                    except Exception:
                        print(running.log_tail("bob", 60))
                        raise
                    assert process.poll() is None, running.log_tail("bob")
            settle(
                ledger,
                attacker.channel,
                attacker.connection,
                topology.dead_letter_queue(settings_.namespace),
                attacker.reply_queue,
            )
            elapsed = time.monotonic() - started
            honest.check(len(messages))
            assert process.poll() is None, running.log_tail("bob")
            peak = peak_rss(process.pid)
        finally:
            attacker.close()
        honest.final()

    report(kinds, ledger, elapsed, peak, honest.checks)
    assert not ledger.accepted, f"hostile messages went through: {ledger.accepted[:10]}"
    assert not ledger.outstanding, (
        f"{len(ledger.outstanding)} messages neither refused nor answered, "
        f"e.g. {[messages[i] for i in sorted(ledger.outstanding)[:3]]}"
    )
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def report(
    kinds: collections.Counter[str], ledger: Ledger, elapsed: float, peak: int, checks: int
) -> None:
    total = sum(kinds.values())
    print(f"\nhostile messages: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s)")
    for kind, count in sorted(kinds.items()):
        print(f"  {kind:24} {count}")
    print(f"refused (dead-lettered): {sum(ledger.refusals.values())}")
    for reason, count in ledger.refusals.most_common():
        print(f"  {count:6}  {reason}")
    print(f"answered with an error: {ledger.answered_with_error}")
    print(f"worker crashes: 0; honest checks: {checks}; peak RSS {peak / 2**20:.0f} MiB")


# -------------------------------------------------------------------------- in-process
def test_an_in_process_worker_survives_hostile_envelopes(hook: Any) -> None:
    from attacker import InProcessAttacker

    bob = sy.VirtualWorker(hook, id=f"bob-{uuid.uuid4().hex[:6]}")
    honest = Honest(bob)
    attacker = InProcessAttacker()
    hub = attacker.transport.hub
    envelopes = [
        message
        for message in draw(hostile_messages(honest.ids), INPROCESS_MESSAGES * 2)
        if not message.raw and message.chunk is None
    ][:INPROCESS_MESSAGES]
    refused = answered = 0
    for index, message in enumerate(envelopes):
        before = len(hub.dead_letters)
        attacker.transport.publish(bob.id, address(message, index, "mallory", "mallory"))
        replies = attacker.replies()
        if len(hub.dead_letters) > before:
            refused += 1
        else:
            assert any(not ok for _, ok, _ in replies), (message, replies)
            answered += 1
        if index % HONEST_EVERY == 0:
            honest.check(index)
    honest.final()
    assert refused + answered == len(envelopes)
    assert refused and answered
