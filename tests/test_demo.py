"""``tensorfleet demo``: FedAvg on digits over three owners, beside a centralized baseline.

The main job must finish, give the same numbers on the fleet as in-process, and
leave the workers exactly as it found them: other clients' objects untouched,
nothing of its own left, whether it ends normally, with an error or by Ctrl-C.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pika
import pika.exceptions
import pytest
import redis
import torch

import client as sy
from broker import topology
from broker.amqp import pika_url
from broker.settings import get_settings
from deploy.demo import DemoConfig, load_mnist_split, run_demo
from worker import keys

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEMO_WORKERS = ("bob", "alice", "jon", "secure_worker")
#: the default demo on a loaded 2-core machine, plus worker start-up
DEMO_TIMEOUT = 600
FINAL = re.compile(r"final test accuracy: federated ([\d.]+)%, centralized ([\d.]+)%")


def snapshot(workers: Sequence[Any]) -> dict[str, dict[int, Any]]:
    """Every object on each worker, by worker id."""
    return {worker.id: worker._objects for worker in workers}


def assert_same_objects(before: dict[str, dict[int, Any]], workers: Sequence[Any]) -> None:
    """The workers hold exactly the objects they held before: same ids, same values."""
    after = snapshot(workers)
    assert {w: sorted(objects) for w, objects in after.items()} == {
        w: sorted(objects) for w, objects in before.items()
    }
    for worker_id, objects in before.items():
        for obj_id, value in objects.items():
            assert torch.equal(after[worker_id][obj_id], value)


def round_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("round ")]


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "client.cli", "demo", "--no-progress", *args]


def run_demo_process(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tensorfleet demo --no-progress ARGS`` in a process of its own: another client."""
    return subprocess.run(
        demo_command(*args),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )


# ------------------------------------------------------------------------ run_demo, both kinds


def test_demo_runs_end_to_end_and_leaves_the_workers_as_it_found_them(
    bob, alice, jon, secure_worker, tmp_path
):
    workers = (bob, alice, jon, secure_worker)
    other_clients_tensor = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0]).send(alice)
    before = snapshot(workers)
    lines: list[str] = []
    plot = tmp_path / "fedavg.png"

    result = run_demo(
        DemoConfig(rounds=3, local_epochs=2),
        owners=[bob, alice, jon],
        aggregator=secure_worker,
        echo=lines.append,
        progress=False,
        plot=plot,
    )

    assert len(result.federated_accuracy) == len(result.central_accuracy) == 3
    assert len(result.federated_loss) == len(result.central_loss) == 3
    assert result.federated_loss[2] < result.federated_loss[0]
    assert result.central_loss[2] < result.central_loss[0]
    assert 85.0 < result.federated_accuracy[2] <= 100.0
    assert 85.0 < result.central_accuracy[2] <= 100.0
    assert result.train_samples + result.test_samples == 1797
    text = "\n".join(lines)
    assert "over bob, alice, jon" in text and "averaging on secure_worker" in text
    assert re.search(r"round +1/3 +federated: loss [\d.]+ acc +[\d.]+% +\| +centralized", text)
    assert "after 3 rounds x 2 local epochs" in text
    assert plot.read_bytes().startswith(PNG_MAGIC)
    # nothing of the demo's is left, and the other tensor is there, exact
    assert_same_objects(before, workers)
    objects = alice._objects
    assert list(objects) == [other_clients_tensor.id_at_location]
    assert torch.equal(
        objects[other_clients_tensor.id_at_location], torch.tensor([3.0, 1, 4, 1, 5])
    )


@pytest.mark.parametrize("stop", ["ctrl-c mid-round", "error between rounds"])
def test_a_demo_stopped_early_deletes_everything_it_made(bob, alice, jon, secure_worker, stop):
    workers = (bob, alice, jon, secure_worker)
    kept = torch.arange(6.0).send(alice)
    before = snapshot(workers)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if stop.startswith("ctrl-c") and line.startswith("digits:"):
            # a real SIGINT, as Ctrl-C sends: the shares are about to go out and round 1 to start
            signal.raise_signal(signal.SIGINT)
        if stop.startswith("error") and line.startswith("round   1/"):
            raise RuntimeError("the user's plotting callback broke")

    expected = KeyboardInterrupt if stop.startswith("ctrl-c") else RuntimeError
    with pytest.raises(expected):
        run_demo(
            DemoConfig(rounds=4, local_epochs=2), [bob, alice, jon], secure_worker, echo, False
        )

    if stop.startswith("ctrl-c"):
        assert any(line.startswith("stopping after the current step") for line in lines)
        assert not any(line.startswith("round ") for line in lines)  # stopped inside round 1
    assert_same_objects(before, workers)
    assert torch.equal(alice._objects[kept.id_at_location], torch.arange(6.0))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


# ------------------------------------------------------------------------ the command, full length


@pytest.fixture(scope="module")
def in_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``tensorfleet demo`` with its defaults, in-process: (stdout, plot)."""
    plot = tmp_path_factory.mktemp("demo") / "demo.png"
    done = run_demo_process("--out", str(plot))
    assert done.returncode == 0, done.stderr
    return done.stdout, plot


def test_the_default_demo_ends_within_one_point_of_the_baseline(in_process_run):
    """The main job, as ``tensorfleet demo`` runs it (in-process workers by default)."""
    output, plot = in_process_run

    match = FINAL.search(output)
    assert match is not None, output
    federated, central = float(match.group(1)), float(match.group(2))
    assert abs(central - federated) <= 1.0
    assert federated > 95.0
    assert output.count("federated: loss") == DemoConfig.rounds == 20
    assert "after 20 rounds x 3 local epochs" in output
    assert plot.read_bytes().startswith(PNG_MAGIC)


@pytest.fixture
def fleet_demo_workers(fleet: Any, hook: Any) -> list[Any]:
    """The fleet fixture's demo workers, as another client (this test process) sees them."""
    return [sy.FleetWorker(hook, id=worker_id) for worker_id in DEMO_WORKERS]


def test_the_default_demo_on_a_running_fleet_matches_in_process_and_leaves_no_trace(
    fleet, fleet_demo_workers, in_process_run, tmp_path
):
    """Issue 16: ``tensorfleet demo --fleet`` at full length (20 rounds x 3 local epochs)."""
    alice = fleet_demo_workers[1]
    mine = torch.tensor([[2.0, 7.0], [1.0, 8.0]]).send(alice)
    before = snapshot(fleet_demo_workers)

    done = run_demo_process("--fleet", "--out", str(tmp_path / "fleet.png"))

    assert done.returncode == 0, done.stderr
    assert f"using the running fleet (namespace {fleet.namespace})" in done.stderr
    assert "starting" not in done.stderr  # it used the fleet that runs; it started none
    in_process_lines = round_lines(in_process_run[0])
    fleet_lines = round_lines(done.stdout)
    assert len(fleet_lines) == 20
    assert fleet_lines == in_process_lines  # every printed loss and accuracy, round by round
    fleet_final, in_process_final = FINAL.search(done.stdout), FINAL.search(in_process_run[0])
    assert fleet_final is not None and in_process_final is not None
    assert fleet_final.groups() == in_process_final.groups()
    assert_same_objects(before, fleet_demo_workers)
    assert torch.equal(alice._objects[mine.id_at_location], torch.tensor([[2.0, 7], [1, 8]]))


def test_ctrl_c_mid_round_on_a_running_fleet_leaves_no_trace(fleet, fleet_demo_workers, tmp_path):
    alice = fleet_demo_workers[1]
    mine = torch.tensor([9.0, 9.0]).send(alice)
    before = snapshot(fleet_demo_workers)
    process = subprocess.Popen(
        demo_command("--fleet", "--out", str(tmp_path / "never.png")),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # blocks until the demo prints the line
            if line.startswith("round   1/"):
                process.send_signal(signal.SIGINT)  # Ctrl-C while round 2 trains
                break
        rest, errors = process.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 1, errors
    assert "stopping after the current step, then deleting this run's objects" in errors
    assert errors.rstrip().endswith("Aborted!")
    assert "final test accuracy" not in rest
    assert not (tmp_path / "never.png").exists()
    assert_same_objects(before, fleet_demo_workers)
    assert torch.equal(alice._objects[mine.id_at_location], torch.tensor([9.0, 9.0]))


# ------------------------------------------------------------------------ a private fleet


def queue_exists(name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(pika_url(get_settings().broker_url)))
    try:
        connection.channel().queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()
    return True


@pytest.fixture
def empty_namespace() -> Iterator[str]:
    """A namespace no worker serves; nothing may be left in it afterwards."""
    namespace = f"tftest-empty-{uuid.uuid4().hex[:8]}"
    yield namespace
    for worker_id in DEMO_WORKERS:
        assert not queue_exists(topology.worker_queue(worker_id, namespace))


def test_without_a_running_fleet_the_demo_runs_a_private_one_and_deletes_it(
    empty_namespace, tmp_path
):
    done = run_demo_process(
        "--fleet",
        "--rounds",
        "1",
        "--local-epochs",
        "1",
        "--out",
        str(tmp_path / "private.png"),
        env={"TENSORFLEET_NAMESPACE": empty_namespace},
    )

    assert done.returncode == 0, done.stderr
    assert (
        f"fleet workers bob, alice, jon, secure_worker not serving in namespace {empty_namespace}"
        in done.stderr
    )
    started = re.search(r"in private namespace (tfrun-[\w-]+) for this run", done.stderr)
    assert started is not None, done.stderr
    private = started.group(1)
    assert FINAL.search(done.stdout) is not None
    # the private fleet is gone: no queue, no Redis key
    for worker_id in DEMO_WORKERS:
        assert not queue_exists(topology.worker_queue(worker_id, private))
    store = redis.Redis.from_url(get_settings().redis_url)
    try:
        assert list(store.scan_iter(match=keys.pattern(private))) == []
        assert list(store.scan_iter(match=keys.pattern(empty_namespace))) == []
    finally:
        store.close()


# ------------------------------------------------------------------------ MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_option_reads_a_local_idx_copy(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))

    split = load_mnist_split(DemoConfig(mnist=tmp_path, max_train=20))

    assert split.name == "MNIST"
    assert split.train_x.shape == torch.Size([20, 784])
    assert split.test_x.shape == torch.Size([5, 784])
    assert torch.equal(split.test_y, torch.arange(5))
    assert split.train_x.dtype == torch.float32
