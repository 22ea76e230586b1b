"""``tensorfleet bench``: a quick smoke run of every section, through the command line.

``--quick`` runs the in-process sections; ``--fleet --quick`` the fleet ones, on
a private fleet the bench starts and deletes (a fleet already running, here the
test fleet, is neither measured nor touched). Every row must carry a finite value
and baseline, under a stable snake_case name, in ``--json``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import redis
import torch

from broker import topology
from broker.amqp import pika_url
from broker.settings import get_settings
from deploy.bench.common import Row
from worker import keys

REPO = Path(__file__).resolve().parent.parent
FLEET_SECTIONS = ("fleet", "fedavg-fleet", "plans-fleet", "demo-soak")
#: names scripts rely on, by the kind of worker they measure
EXPECTED_NAMES = {
    "virtual": {
        "inprocess_pipelined_op_vs_torch",
        "inprocess_sync_op_vs_torch",
        "fedavg_round_inprocess_vs_local",
        "fedavg_commands_per_batch_inprocess",
        "plan_pipelined_call_vs_ops_inprocess",
        "plan_commands_per_call_inprocess",
    },
    "fleet": {
        "sync_op_vs_pika_rpc",
        "sync_op_vs_celery_noop",
        "ping_vs_pika_rpc",
        "pipelined_ops_per_s",
        "send_get_100mib_vs_pika",
        "send_100mib_vs_pika",
        "move_100mib_vs_pika",
        "fedavg_round_fleet_vs_local",
        "fedavg_commands_per_batch",
        "plan_pipelined_call_vs_ops_fleet",
        "demo_soak_finished",
        "demo_soak_identical_accuracy",
        "demo_soak_clean_runs",
        "demo_soak_seconds_vs_inprocess",
    },
}
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "bench", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def leftovers(namespace: str, worker_ids: tuple[str, ...]) -> tuple[list[str], list[bytes]]:
    """The queues and Redis keys of ``namespace`` that still exist."""
    queues = []
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(get_settings().broker_url)))
    try:
        for worker_id in worker_ids:
            name = topology.worker_queue(worker_id, namespace)
            channel = connection.channel()
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                continue
            queues.append(name)
            channel.close()
    finally:
        connection.close()
    store = redis.Redis.from_url(get_settings().redis_url)
    try:
        return queues, list(store.scan_iter(match=keys.pattern(namespace)))
    finally:
        store.close()


def test_every_section_runs_and_every_row_is_finite(worker_kind, make_worker, tmp_path):
    figures = tmp_path / "figures.json"
    bystander = make_worker("bob")  # in-process, or the test fleet's bob: not the bench's
    kept = torch.tensor([1.0, 2.0, 3.0]).send(bystander)
    fleet = ["--fleet", *(f"--only={section}" for section in FLEET_SECTIONS)]

    done = run_bench("--quick", "--json", str(figures), *(fleet if worker_kind == "fleet" else []))

    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(figures.read_text())
    assert rows, done.stdout
    for row in rows:
        assert set(row) == {"name", "value", "unit", "baseline", "ratio"}
        assert SNAKE_CASE.fullmatch(row["name"]), row
        assert isinstance(row["value"], float | int) and math.isfinite(row["value"]), row
        assert isinstance(row["baseline"], float | int) and math.isfinite(row["baseline"]), row
        assert row["baseline"] != 0 and row["ratio"] == pytest.approx(
            row["value"] / row["baseline"]
        )
        assert row["unit"]
    names = [row["name"] for row in rows]
    assert len(names) == len(set(names))
    assert EXPECTED_NAMES[worker_kind] <= set(names)
    assert len(done.stdout.splitlines()) == 3 + len(rows)  # machine, header, rule, one line a row
    # the bystander's tensor is where it was, and nothing else was put there
    assert list(bystander._objects) == [kept.id_at_location]
    assert torch.equal(bystander._objects[kept.id_at_location], torch.tensor([1.0, 2.0, 3.0]))
    if worker_kind == "fleet":
        by_name = {row["name"]: row for row in rows}
        for soak in ("demo_soak_finished", "demo_soak_identical_accuracy", "demo_soak_clean_runs"):
            assert by_name[soak]["value"] == by_name[soak]["baseline"] == 2, by_name[soak]
        assert "using the running fleet" not in done.stderr
        private = re.search(r"in private namespace (tfrun-[\w-]+) for this run", done.stderr)
        assert private is not None, done.stderr
        workers = ("bob", "alice", "jon", "secure_worker")
        assert leftovers(private.group(1), workers) == ([], [])


def test_a_figure_without_a_usable_baseline_is_null_in_json():
    row = Row("objects_left", "objects left", 3.0, "objects", "expected", 0.0)

    assert row.to_json() == {
        "name": "objects_left",
        "value": 3.0,
        "unit": "objects",
        "baseline": 0.0,
        "ratio": None,
    }
    with pytest.raises(ValueError, match="not snake_case"):
        Row("Objects Left", "objects left", 3.0, "objects", "expected", 1.0)
