"""``tensorfleet loadtest``: a small bounded run, through the command line, and its options.

The run loads a real fleet with several client processes for a few seconds and checks
what the command reports (``--json``): every operation kind ran, no error, no wrong
result, nothing of the run left behind. On a running fleet (``--use-running-fleet``,
here a fleet of this test module) a bystander's object must survive the run
untouched; on the default private fleet the whole namespace must be gone afterwards.
No figure is asserted: the machine is shared, the timings are not the point.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result

import client as sy
from broker import topology
from client.cli import main
from deploy.loadcheck import queues_left, redis_left
from deploy.loadclient import KINDS, ClientResult, new_histogram
from deploy.loadreport import RunFigures

REPO = Path(__file__).resolve().parent.parent
#: client processes of the run on a running fleet (each imports torch: slow on 2 cores)
CLIENTS = 6
SECONDS = 8


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "loadtest", "--no-progress", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_clean_report(figures: dict[str, Any], clients: int) -> None:
    assert figures["clients"] == clients
    assert figures["failed_clients"] == []
    assert figures["errors"] == 0, figures["errors_by_type"]
    assert figures["wrong_results"] == 0
    assert figures["ops"] > 0 and figures["ops_per_s"] > 0 and figures["duration_s"] > 0
    assert set(figures["ops_by_kind"]) == set(KINDS)
    assert sum(figures["ops_by_kind"].values()) == figures["ops"]
    for kind in KINDS:
        latency = figures["latency_ms"][kind]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert figures["leftovers"]["clean"] is True, figures["leftovers"]
    assert figures["leftovers"]["objects"] == {"bob": 0, "alice": 0}


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Any]:
    import fleet_fixture

    with fleet_fixture.fleet(("bob", "alice")) as running:
        yield running


def test_a_bounded_run_on_a_running_fleet_is_right_and_leaves_nothing(two_workers, tmp_path):
    hook = sy.TorchHook(torch)
    bob = sy.FleetWorker(hook, id="bob")
    kept = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    bob.synchronize()
    figures_path = tmp_path / "figures.json"

    done = loadtest(
        "--use-running-fleet",
        "--clients",
        str(CLIENTS),
        "--duration",
        str(SECONDS),
        "--json",
        str(figures_path),
    )

    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_path.read_text())
    check_clean_report(figures, CLIENTS)
    assert figures["fleet"] == "running"
    assert "nothing left behind" in done.stdout
    # the bystander's object is where it was, the only one there
    assert list(bob._objects) == [kept.id_at_location]
    assert torch.equal(bob._objects[kept.id_at_location], torch.tensor([1.0, 2.0, 3.0]))
    del kept
    bob.synchronize()


def test_ctrl_c_stops_the_clients_who_still_clean_up(two_workers, tmp_path):
    figures_path = tmp_path / "figures.json"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "client.cli", "loadtest", "--no-progress"),
            *("--use-running-fleet", "--clients", "2", "--duration", "600"),
            *("--json", str(figures_path)),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # the clients run once this line is out
            seen.append(line)
            if line.startswith("running: 2 clients"):
                break
        else:
            raise AssertionError("".join(seen))
        process.send_signal(signal.SIGINT)  # the command only, as a supervisor would
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stdout + stderr
    figures = json.loads(figures_path.read_text())
    assert figures["interrupted"] is True
    assert figures["duration_s"] < 600
    check_clean_report(figures, 2)
    assert "(stopped by Ctrl-C)" in stdout


def test_the_default_private_fleet_is_deleted_with_everything_of_the_run(tmp_path):
    figures_path = tmp_path / "figures.json"

    done = loadtest("--clients", "2", "--ops", "200", "--json", str(figures_path))

    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(figures_path.read_text())
    check_clean_report(figures, 2)
    assert figures["ops"] == 200
    assert figures["fleet"] == "private"
    private = re.search(r"in private namespace (tfrun-[\w-]+) for this run", done.stderr)
    assert private is not None, done.stderr
    namespace = private.group(1)
    from broker.settings import get_settings

    settings = get_settings()
    queues = [topology.worker_queue(w, namespace) for w in ("bob", "alice")]
    assert queues_left([*queues, topology.dead_letter_queue(namespace)], settings) == []
    assert redis_left(settings, namespace, ("bob", "alice"), None) == ([], 0)


def test_a_running_fleet_that_is_not_there_is_one_error_line_and_nothing_runs():
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "loadtest", "--use-running-fleet"],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TENSORFLEET_NAMESPACE": f"tfnobody-{uuid.uuid4().hex[:8]}",
        },
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: Worker "bob" did not answer'), lines
    assert "tensorfleet worker bob" in lines[0]


@pytest.mark.parametrize("fleet_flag", [[], ["--use-running-fleet"]], ids=["private", "running"])
@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TENSORFLEET_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"},
            "Error: Cannot talk to the broker at amqp://guest:**@127.0.0.1:1//",
        ),
        ({"TENSORFLEET_TIMEOUT": "soon"}, "Error: TENSORFLEET_TIMEOUT='soon' is not valid"),
    ],
    ids=["no-broker", "bad-setting"],
)
def test_a_broken_environment_is_one_error_line(fleet_flag, env, says, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "client.cli", "loadtest", *fleet_flag, "--clients", "1"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TENSORFLEET_CONNECT_RETRIES": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), lines
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ Locust


def test_the_locust_user_runs_headless_with_requests_and_no_failures(two_workers, tmp_path):
    prefix = tmp_path / "locust"

    done = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(REPO / "deploy" / "locustfile.py")),
            *("--headless", "-u", "8", "-r", "8", "-t", "8s", "--only-summary"),
            *("--csv", str(prefix), "--tf-workers", "bob,alice", "--loglevel", "WARNING"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert {"pipelined", "sync", "sendget", "move", "Aggregated"} <= set(rows), rows.keys()
    for name in ("pipelined", "sync", "sendget", "move", "Aggregated"):
        assert int(rows[name]["Request Count"]) > 0, rows[name]
        assert int(rows[name]["Failure Count"]) == 0, rows[name]
    assert rows["sync"]["Type"] == "tensorfleet"
    # every user dropped its pointers: the workers hold nothing of the run
    hook = sy.TorchHook(torch)
    assert [sy.FleetWorker(hook, id=w).object_count() for w in ("bob", "alice")] == [0, 0]


# ------------------------------------------------------------------------ merging


def test_histograms_merge_across_clients_by_their_encoded_form():
    results = []
    for index, latencies_us in enumerate([[1_000] * 90, [100_000] * 10]):
        histogram = new_histogram()
        for value in latencies_us:
            histogram.record_value(value)
        results.append(
            ClientResult(
                index,
                ops={"sync": len(latencies_us)},
                histograms={"sync": bytes(histogram.encode())},
                errors={"WorkerUnavailableError": index},
                wrong={"sync": index},
                seconds=10.0 + index,
            )
        )
    figures = RunFigures(2)
    for result in results:
        figures.add(result)

    latency = figures.latency_ms()["sync"]
    assert latency["count"] == 100 and figures.total_ops == 100
    assert latency["p50"] == pytest.approx(1.0, rel=1e-3)
    assert latency["p90"] == pytest.approx(1.0, rel=1e-3)
    assert latency["p99"] == pytest.approx(100.0, rel=1e-3)
    assert latency["max"] == pytest.approx(100.0, rel=1e-3)
    assert figures.seconds == 11.0
    assert dict(figures.errors) == {"WorkerUnavailableError": 1}
    assert sum(figures.wrong.values()) == 1


def test_a_mix_is_parsed_into_its_weights():
    from deploy.loadtest import Mix

    assert Mix().convert(" pipelined=4, sync=2,move=0 ", None, None) == (
        ("pipelined", 4),
        ("sync", 2),
    )


# ------------------------------------------------------------------------ options


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["loadtest", *args], prog_name="tensorfleet")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--mix", "pipelined=4,teleport=1"], "unknown kind 'teleport'"),
        (["--mix", "pipelined"], "is not kind=weight"),
        (["--mix", "sync=-1"], "must be an integer >= 0"),
        (["--mix", "sync=x"], "must be an integer >= 0"),
        (["--mix", "sync=1,sync=2"], "sync given more than once"),
        (["--mix", "sync=0,move=0"], "at least one kind a weight above 0"),
        (["--clients", "0"], "'--clients': 0 is not in the range x>=1"),
        (["--size", "0"], "'--size': 0 is not in the range x>=1"),
        (["--duration", "0"], "'--duration'"),
        (["--duration", "nan"], "'--duration'"),
        (["--ops", "0"], "'--ops': 0 is not in the range x>=1"),
        (["--workers", "bob,bob"], "bob given more than once"),
        (["--workers", "bob,"], "has an empty id"),
        (["--workers", "bob", "--mix", "move=1"], "move needs two workers"),
        (["--duration", "5", "--ops", "100"], "give --duration or --ops, not both"),
        (["--ops", "3", "--clients", "4"], "--ops 3 is fewer than --clients 4"),
    ],
)
def test_a_bad_option_is_one_usage_error_line(args, says):
    result = invoke(*args)

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and lines[0].endswith(
        "See 'tensorfleet loadtest --help'."
    ), lines[0]
    assert says in lines[0], lines[0]
    assert result.stdout == ""
