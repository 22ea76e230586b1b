"""Prometheus metrics of a fleet worker, served on ``TENSORFLEET_METRICS_PORT``.

Counts and gauges are read from the worker's own bookkeeping when Prometheus
scrapes (a custom collector over :meth:`worker.runtime.Runtime.status`), so the
message path pays nothing for them; the two histograms are observed as things
happen (one ``observe`` per message and per Redis write). Needs the ``ops`` extra
(``pip install 'tensorfleet[ops]'``).

==========================================  =========  ===================================
metric                                      type       labels
==========================================  =========  ===================================
``tensorfleet_messages_total``              counter    worker
``tensorfleet_commands_total``              counter    worker, command
``tensorfleet_command_errors_total``        counter    worker
``tensorfleet_refusals_total``              counter    worker, kind (worker.gate.REFUSAL_KINDS)
``tensorfleet_dropped_replies_total``       counter    worker
``tensorfleet_objects``                     gauge      worker
``tensorfleet_object_bytes``                gauge      worker
``tensorfleet_clients``                     gauge      worker (clients holding objects)
``tensorfleet_store_up``                    gauge      worker (0 while Redis is unreachable)
``tensorfleet_message_seconds``             histogram  worker (engine time per message)
``tensorfleet_redis_write_seconds``         histogram  worker (one commit to Redis)
==========================================  =========  ===================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from broker.errors import ConfigurationError
from worker.engine import Middleware
from worker.runtime import Runtime

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def serve(runtime: Runtime, port: int) -> None:
    """Register this worker's metrics and serve them over HTTP on ``port``."""
    try:
        from prometheus_client import CollectorRegistry, Histogram, start_http_server
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ConfigurationError(
            "TENSORFLEET_METRICS_PORT",
            str(port),
            "a port only where prometheus-client is installed (pip install 'tensorfleet[ops]')",
        ) from None

    worker = runtime.worker_id
    registry = CollectorRegistry()

    class StatusCollector:
        def collect(self) -> Iterator[Any]:
            status = runtime.status()
            counters = (
                ("tensorfleet_messages", "Messages the engine ran.", status["messages"]),
                ("tensorfleet_command_errors", "Commands that failed.", status["errors"]),
                (
                    "tensorfleet_dropped_replies",
                    "Replies to a reply queue that did not exist.",
                    status["dropped_replies"],
                ),
            )
            for name, documentation, value in counters:
                family = CounterMetricFamily(name, documentation, labels=["worker"])
                family.add_metric([worker], value)
                yield family
            commands = CounterMetricFamily(
                "tensorfleet_commands", "Commands run, by kind.", labels=["worker", "command"]
            )
            for command, count in sorted(status["commands_by_kind"].items()):
                commands.add_metric([worker, command], count)
            yield commands
            refusals = CounterMetricFamily(
                "tensorfleet_refusals", "Messages refused, by kind.", labels=["worker", "kind"]
            )
            for kind, count in sorted(status["refusals"].items()):
                refusals.add_metric([worker, kind], count)
            yield refusals
            gauges = (
                ("tensorfleet_objects", "Objects held.", status["objects"]),
                ("tensorfleet_object_bytes", "Tensor bytes held.", status["bytes"]),
                ("tensorfleet_clients", "Clients holding objects.", len(status["clients"])),
                ("tensorfleet_store_up", "1 while Redis answers.", int(status["store_up"])),
            )
            for name, documentation, value in gauges:
                gauge = GaugeMetricFamily(name, documentation, labels=["worker"])
                gauge.add_metric([worker], value)
                yield gauge

    registry.register(StatusCollector())
    message_seconds = Histogram(
        "tensorfleet_message_seconds",
        "Engine time per message.",
        ["worker"],
        registry=registry,
        buckets=_BUCKETS,
    ).labels(worker)
    write_seconds = Histogram(
        "tensorfleet_redis_write_seconds",
        "Time of one commit to Redis.",
        ["worker"],
        registry=registry,
        buckets=_BUCKETS,
    ).labels(worker)

    class Timing(Middleware):
        def after_message(self, worker_id: str, commands: int, seconds: float, errors: int) -> None:
            message_seconds.observe(seconds)

    runtime.engine.middleware.append(Timing())
    runtime.on_write = write_seconds.observe
    start_http_server(port, registry=registry)
