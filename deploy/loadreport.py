"""The figures of a load test: merged from every client, printed, and written as JSON.

:class:`RunFigures` merges the clients' reports (:class:`deploy.loadclient.ClientResult`):
counts add up, and each kind's latency histogram is the sum of the clients' histograms,
decoded from their encoded (compressed, base64) form. :func:`report` is the printed
table, :func:`to_json` what ``--json FILE`` holds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from deploy.loadcheck import Leftovers
from deploy.loadclient import KINDS, VERIFY, ClientResult, new_histogram


@dataclass
class RunFigures:
    """The merged figures of every client."""

    clients: int
    seconds: float = 0.0
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    wrong: Counter[str] = field(default_factory=Counter)
    histograms: dict[str, Any] = field(default_factory=dict)
    failed_clients: list[str] = field(default_factory=list)
    #: Ctrl-C ended the run before its duration or operations were done
    interrupted: bool = False
    created: dict[str, set[int]] = field(default_factory=dict)
    reply_queues: list[str] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)

    def add(self, result: ClientResult) -> None:
        self.seconds = max(self.seconds, result.seconds)
        self.ops.update(result.ops)
        self.errors.update(result.errors)
        for name, sample in result.error_samples.items():
            self.error_samples.setdefault(name, sample)
        self.wrong.update(result.wrong)
        for kind, encoded in result.histograms.items():
            self.histograms.setdefault(kind, new_histogram()).decode_and_add(encoded)
        if result.fatal is not None:
            self.failed_clients.append(f"client {result.index}: {result.fatal}")
        for worker_id, ids in result.created.items():
            self.created.setdefault(worker_id, set()).update(ids)
        if result.reply_queue:
            self.reply_queues.append(result.reply_queue)
        if result.sender:
            self.senders.append(result.sender)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def latency_ms(self) -> dict[str, dict[str, float]]:
        table = {}
        for kind in (*KINDS, VERIFY):
            histogram = self.histograms.get(kind)
            if histogram is None or not histogram.get_total_count():
                continue
            table[kind] = {
                "p50": histogram.get_value_at_percentile(50) / 1000,
                "p90": histogram.get_value_at_percentile(90) / 1000,
                "p99": histogram.get_value_at_percentile(99) / 1000,
                "max": histogram.get_max_value() / 1000,
                "count": histogram.get_total_count(),
            }
        return table


def report(figures: RunFigures, leftovers: Leftovers, rss: dict[str, Any]) -> str:
    """The printed report: per kind throughput and latency, errors, wrong results, leftovers."""
    seconds = figures.seconds or float("nan")
    latency = figures.latency_ms()
    header = (
        f"{'kind':<10} {'ops':>9} {'ops/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'max ms':>9} {'wrong':>6}"
    )
    lines = [header, "-" * len(header)]
    for kind in (*KINDS, VERIFY):
        if kind not in latency:
            continue
        count = figures.ops[kind] if kind != VERIFY else int(latency[kind]["count"])
        row = latency[kind]
        lines.append(
            f"{kind:<10} {count:>9,} {count / seconds:>10,.1f} {row['p50']:>9.3f} "
            f"{row['p90']:>9.3f} {row['p99']:>9.3f} {row['max']:>9.3f} "
            f"{figures.wrong[kind] if kind != VERIFY else '':>6}"
        )
    lines.append(
        f"{'all':<10} {figures.total_ops:>9,} {figures.total_ops / seconds:>10,.1f}"
        f"{'':>40} {sum(figures.wrong.values()):>6}"
    )
    lines.append(
        f"{figures.clients} clients, {seconds:.1f} s"
        + (" (stopped by Ctrl-C)" if figures.interrupted else "")
        + "; verify: batched checks of pipelined results"
    )
    if figures.errors:
        for name, number in figures.errors.most_common():
            lines.append(f"errors: {number} x {name}: {figures.error_samples.get(name, '')}")
    else:
        lines.append("errors: none")
    lines.append(f"wrong results: {sum(figures.wrong.values())}")
    for failure in figures.failed_clients:
        lines.append(f"FAILED {failure.splitlines()[0]}")
    workers = ", ".join(
        f"{w} {m:.0f} MiB" if m is not None else f"{w} (not on this machine)"
        for w, m in rss["workers"].items()
    )
    rabbit = rss["rabbitmq"]
    lines.append(
        f"RSS after the run: workers {workers}; RabbitMQ "
        + (f"{rabbit:.0f} MiB" if rabbit is not None else "(not on this machine)")
    )
    before = rss.get("before")
    if before is not None:
        was = ", ".join(f"{w} {m:.0f}" for w, m in before["workers"].items() if m is not None)
        rabbit_was = before["rabbitmq"]
        lines.append(
            f"RSS before the clients started: workers {was or '-'} MiB; RabbitMQ "
            + (f"{rabbit_was:.0f} MiB" if rabbit_was is not None else "-")
        )
    lines.append(leftovers.describe())
    return "\n".join(lines)


def to_json(
    figures: RunFigures,
    leftovers: Leftovers,
    rss: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    seconds = figures.seconds
    rate = figures.total_ops / seconds if seconds else 0.0
    return {
        "clients": figures.clients,
        "duration_s": seconds,
        "ops": figures.total_ops,
        "ops_per_s": rate,
        "errors": sum(figures.errors.values()),
        "errors_by_type": dict(figures.errors),
        "wrong_results": sum(figures.wrong.values()),
        "latency_ms": figures.latency_ms(),
        "ops_by_kind": {kind: figures.ops[kind] for kind in KINDS if figures.ops[kind]},
        "ops_per_s_by_kind": {
            kind: figures.ops[kind] / seconds for kind in KINDS if figures.ops[kind] and seconds
        },
        "wrong_by_kind": dict(figures.wrong),
        "failed_clients": figures.failed_clients,
        "interrupted": figures.interrupted,
        "leftovers": leftovers.to_json(),
        "rss_mib": rss,
        **settings,
    }
