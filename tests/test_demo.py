"""``tensorfleet demo``: FedAvg on digits over three owners, beside a centralized baseline."""

from __future__ import annotations

import gc
import gzip
import re
import struct
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from deploy.demo import DemoConfig, demo, load_mnist_split, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_end_to_end_on_a_few_rounds(bob, alice, jon, secure_worker, tmp_path):
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
    assert "final test accuracy: federated" in text
    assert plot.read_bytes().startswith(PNG_MAGIC)
    # the shares go when the run ends; the aggregator kept nothing
    gc.collect()
    assert all(worker._objects == {} for worker in (bob, alice, jon, secure_worker))


def test_the_default_demo_ends_within_one_point_of_the_baseline(tmp_path):
    """The main job, as ``tensorfleet demo`` runs it (in-process workers by default)."""
    plot = tmp_path / "demo.png"

    outcome = CliRunner().invoke(demo, ["--no-progress", "--out", str(plot)])

    assert outcome.exit_code == 0, outcome.output
    match = re.search(
        r"final test accuracy: federated ([\d.]+)%, centralized ([\d.]+)%", outcome.output
    )
    assert match is not None, outcome.output
    federated, central = float(match.group(1)), float(match.group(2))
    assert abs(central - federated) <= 1.0
    assert federated > 95.0
    assert outcome.output.count("federated: loss") == DemoConfig.rounds
    assert plot.read_bytes().startswith(PNG_MAGIC)


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
