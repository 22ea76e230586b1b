"""``tensorfleet demo``: federated averaging on three data owners, beside a centralized baseline.

scikit-learn's bundled digits (8x8 images, 1,797 samples; no download) are
shuffled once with a fixed seed, a test set is held out, and the rest is
federated in contiguous (so IID) shares over three data owners. Every round,
each owner trains a copy of the global model for a few local epochs on its own
share, the copies move to ``secure_worker``, are averaged there, and only the
average comes back. A centralized model (same architecture, same initial
weights, same optimizer and epochs, all data local) trains alongside. The demo
prints both per round, and writes a PNG of both curves.

It runs on in-process workers by default and on the fleet with ``--fleet``
(workers that do not answer are started on this machine for the run).
``--mnist DIR`` uses a local MNIST copy (the four IDX files) instead of digits.
"""

from __future__ import annotations

import contextlib
import gzip
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from client.federated.dataset import federate
from client.federated.fedavg import FedAvg, LocalTraining, train_epochs
from client.federated.loader import local_batches

DATA_OWNERS = ("bob", "alice", "jon")
AGGREGATOR = "secure_worker"


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides a run; the defaults end within a point of the baseline."""

    rounds: int = 20
    local_epochs: int = 3
    batch_size: int = 16
    lr: float = 0.2
    hidden: int = 32
    seed: int = 0
    test_fraction: float = 0.2
    mnist: Path | None = None
    #: cap on training samples (MNIST is large; None keeps every sample)
    max_train: int | None = None


@dataclass
class DemoResult:
    """Per-round history of both runs (accuracy in percent on the held-out test set)."""

    federated_accuracy: list[float] = field(default_factory=list)
    central_accuracy: list[float] = field(default_factory=list)
    federated_loss: list[float] = field(default_factory=list)
    central_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    train_samples: int = 0
    test_samples: int = 0

    @property
    def gap(self) -> float:
        """Final centralized accuracy minus final federated accuracy, in points."""
        return self.central_accuracy[-1] - self.federated_accuracy[-1]


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str


def load_digits_split(config: DemoConfig) -> Split:
    """scikit-learn's digits, scaled to [0, 1], shuffled with the seed, test set held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return _split(x, y, config, "digits")


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST IDX file (optionally gzipped) as a numpy array."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in sorted(directory.rglob(f"{stem}*")):
        if candidate.is_file() and candidate.suffix in ("", ".gz", ".idx3-ubyte", ".idx1-ubyte"):
            return candidate
    raise click.UsageError(
        f"--mnist {directory}: no {stem}[.gz] file in it (the four MNIST IDX "
        "files: train-images-idx3-ubyte, train-labels-idx1-ubyte, ...)"
    )


def load_mnist_split(config: DemoConfig) -> Split:
    """MNIST from a local copy of its IDX files: the official train and test sets."""
    assert config.mnist is not None
    directory = Path(config.mnist)
    arrays = {
        stem: _read_idx(_find(directory, stem))
        for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels")
    }

    def images(array: np.ndarray) -> torch.Tensor:
        x = torch.tensor(array.reshape(len(array), -1), dtype=torch.float32) / 255.0
        return (x - 0.1307) / 0.3081

    generator = torch.Generator().manual_seed(config.seed)
    train_x, train_y = images(arrays["train-images"]), torch.tensor(arrays["train-labels"]).long()
    order = torch.randperm(len(train_x), generator=generator)[: config.max_train]
    return Split(
        train_x[order],
        train_y[order],
        images(arrays["t10k-images"]),
        torch.tensor(arrays["t10k-labels"]).long(),
        "MNIST",
    )


def _split(x: torch.Tensor, y: torch.Tensor, config: DemoConfig, name: str) -> Split:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    x, y = x[order], y[order]
    test = round(len(x) * config.test_fraction)
    train_x, train_y = x[test:], y[test:]
    if config.max_train is not None:
        train_x, train_y = train_x[: config.max_train], train_y[: config.max_train]
    return Split(train_x, train_y, x[:test], y[:test], name)


# ---------------------------------------------------------------------------------- model


def make_model(features: int, hidden: int, classes: int, seed: int) -> nn.Module:
    """The small MLP both runs train, with initial weights from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``x`` classified as ``y``."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean()) * 100.0


# ---------------------------------------------------------------------------------- run


def run_demo(
    config: DemoConfig,
    owners: Sequence[Any],
    aggregator: Any,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    plot: Path | None = None,
) -> DemoResult:
    """Train federated (``owners``, averaged on ``aggregator``) and centralized; report both."""
    from tqdm.auto import tqdm

    split = load_mnist_split(config) if config.mnist is not None else load_digits_split(config)
    classes = int(split.train_y.max()) + 1
    features = int(split.train_x.shape[1])
    federated_model = make_model(features, config.hidden, classes, config.seed)
    central_model = make_model(features, config.hidden, classes, config.seed)
    training = LocalTraining(epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr)
    result = DemoResult(train_samples=len(split.train_x), test_samples=len(split.test_x))

    echo(
        f"{split.name}: {len(split.train_x)} training samples federated over "
        f"{', '.join(owner.id for owner in owners)}; {len(split.test_x)} held out for testing; "
        f"averaging on {aggregator.id}"
    )
    dataset = federate(TensorDataset(split.train_x, split.train_y), owners)
    strategy = FedAvg(
        aggregator, training, generator=torch.Generator().manual_seed(config.seed + 1)
    )
    central_optimizer = training.make_optimizer(central_model.parameters())
    central_generator = torch.Generator().manual_seed(config.seed + 1)
    batches_per_round = config.local_epochs * sum(
        -(-len(dataset[owner]) // config.batch_size) for owner in dataset.workers
    )

    start = time.perf_counter()
    rounds = tqdm(
        range(1, config.rounds + 1), desc="FedAvg rounds", unit="round", disable=not progress
    )
    for round_number in rounds:
        with tqdm(
            total=batches_per_round,
            desc=f"round {round_number} local training",
            unit="batch",
            leave=False,
            disable=not progress,
        ) as bar:
            outcome = strategy.fit_round(federated_model, dataset, on_batch=lambda: bar.update())
        central_total = train_epochs(
            central_model,
            lambda: local_batches(
                split.train_x,
                split.train_y,
                config.batch_size,
                shuffle=True,
                generator=central_generator,
            ),
            central_optimizer,
            training.loss,
            config.local_epochs,
        )
        assert central_total is not None
        result.federated_loss.append(outcome.loss)
        result.central_loss.append(float(central_total) / len(split.train_x))
        result.federated_accuracy.append(accuracy(federated_model, split.test_x, split.test_y))
        result.central_accuracy.append(accuracy(central_model, split.test_x, split.test_y))
        line = (
            f"round {round_number:>3}/{config.rounds}  "
            f"federated: loss {result.federated_loss[-1]:.4f} "
            f"acc {result.federated_accuracy[-1]:6.2f}%  |  "
            f"centralized: loss {result.central_loss[-1]:.4f} "
            f"acc {result.central_accuracy[-1]:6.2f}%"
        )
        if progress:
            rounds.write(line)
        else:
            echo(line)
    result.seconds = time.perf_counter() - start
    echo(
        f"final test accuracy: federated {result.federated_accuracy[-1]:.2f}%, centralized "
        f"{result.central_accuracy[-1]:.2f}% (gap {result.gap:+.2f} points) after "
        f"{config.rounds} rounds x {config.local_epochs} local epochs, {result.seconds:.1f} s"
    )
    if plot is not None:
        write_plot(
            result,
            plot,
            f"FedAvg on {split.name}: {len(owners)} owners, "
            f"{config.local_epochs} local epochs per round",
        )
        echo(f"plot written to {plot}")
    return result


def write_plot(result: DemoResult, path: Path, title: str) -> None:
    """Test accuracy and training loss per round, federated beside centralized, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = range(1, len(result.federated_accuracy) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(rounds, result.federated_accuracy, marker="o", label="federated (FedAvg)")
    left.plot(rounds, result.central_accuracy, marker="s", label="centralized baseline")
    left.set(xlabel="round", ylabel="test accuracy (%)", title="Test accuracy")
    right.plot(rounds, result.federated_loss, marker="o", label="federated (FedAvg)")
    right.plot(rounds, result.central_loss, marker="s", label="centralized baseline")
    right.set(xlabel="round", ylabel="training loss", title="Training loss", yscale="log")
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------- workers


@contextlib.contextmanager
def demo_workers(fleet: bool, owner_ids: Sequence[str]) -> Iterator[tuple[list[Any], Any]]:
    """(data owners, aggregator), in-process or on the fleet, each with an empty store."""
    import client as sy

    hook = sy.TorchHook(torch)
    ids = [*owner_ids, AGGREGATOR]
    context: contextlib.AbstractContextManager[list[Any]]
    if fleet:
        from deploy.fleet_launch import fleet_workers

        context = fleet_workers(ids, hook, announce=lambda line: click.echo(line, err=True))
    else:
        context = contextlib.nullcontext([sy.VirtualWorker(hook, id=i) for i in ids])
    with context as workers:
        for worker in workers:
            worker.clear_objects()
        try:
            yield workers[:-1], workers[-1]
        finally:
            for worker in workers:
                worker.clear_objects()


@click.command()
@click.option("--rounds", default=DemoConfig.rounds, show_default=True, help="FedAvg rounds.")
@click.option(
    "--local-epochs",
    default=DemoConfig.local_epochs,
    show_default=True,
    help="Epochs each owner trains per round (the baseline trains as many).",
)
@click.option("--batch-size", default=DemoConfig.batch_size, show_default=True)
@click.option("--lr", default=DemoConfig.lr, show_default=True, help="SGD learning rate.")
@click.option("--hidden", default=DemoConfig.hidden, show_default=True, help="Hidden units.")
@click.option("--seed", default=DemoConfig.seed, show_default=True)
@click.option(
    "--fleet",
    is_flag=True,
    help="Run on fleet workers bob, alice, jon and "
    "secure_worker (RabbitMQ, Celery, Redis), starting any that do not answer.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("fedavg_digits.png"),
    show_default=True,
    help="PNG plot to write.",
)
@click.option(
    "--mnist",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Directory with a local MNIST copy (IDX files) to use instead of digits.",
)
@click.option(
    "--max-train",
    type=int,
    default=None,
    help="Use at most this many training samples (handy with --mnist).",
)
@click.option(
    "--owners",
    default=",".join(DATA_OWNERS),
    show_default=True,
    help="Comma-separated data-owner worker ids.",
)
@click.option("--no-progress", is_flag=True, help="Plain lines instead of progress bars.")
def demo(
    rounds: int,
    local_epochs: int,
    batch_size: int,
    lr: float,
    hidden: int,
    seed: int,
    fleet: bool,
    out: Path,
    mnist: Path | None,
    max_train: int | None,
    owners: str,
    no_progress: bool,
) -> None:
    """Federated averaging across three data owners, beside a centralized baseline."""
    torch.set_num_threads(1)  # a tiny model: extra threads only contend on a small machine
    config = replace(
        DemoConfig(),
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        seed=seed,
        mnist=mnist,
        max_train=max_train,
    )
    owner_ids = [owner.strip() for owner in owners.split(",") if owner.strip()]
    kind = "fleet workers (RabbitMQ -> Celery -> Redis)" if fleet else "in-process workers"
    click.echo(f"TensorFleet demo on {kind}")
    with demo_workers(fleet, owner_ids) as (data_owners, aggregator):
        run_demo(
            config, data_owners, aggregator, echo=click.echo, progress=not no_progress, plot=out
        )
