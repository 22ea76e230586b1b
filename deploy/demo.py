"""``tensorfleet demo``: federated averaging on three data owners, beside a centralized baseline.

scikit-learn's bundled digits (8x8 images, 1,797 samples; no download) are
shuffled once with a fixed seed, a test set is held out, and the rest is
federated in contiguous (so IID) shares over three data owners. Every round,
each owner trains a copy of the global model for a few local epochs on its own
share, the copies move to ``secure_worker``, are averaged there, and only the
average comes back. A centralized model (same architecture, same initial
weights, same optimizer and epochs, all data local) trains alongside. The demo
prints both per round, and writes a PNG of both curves.

It runs on in-process workers by default and on the fleet with ``--fleet``: the
running fleet if ``bob``, ``alice``, ``jon`` and ``secure_worker`` all serve, else
a private fleet started for the run (see :mod:`deploy.fleet_launch`). ``--mnist
DIR`` uses a local MNIST copy (the four IDX files, :mod:`deploy.mnist`) instead.

What the demo creates, and where. On each data owner: its share of the training
set (two tensors, data and targets) for the whole run; each round, a copy of the
model (four parameter tensors), each batch (two tensors) and the training
intermediates of each step (activations, gradients, the running loss). The trained
copies move to the aggregator, which also holds their average until the client has
fetched it. Every one of these objects is deleted as soon as its pointer is
dropped, and :func:`run_demo` drops all of them before it returns, also when it
ends with an error or Ctrl-C: nothing the demo made survives it. It never clears a
worker, so other clients' objects on a shared fleet are left as they were.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from broker.errors import TensorFleetError
from client.federated.dataset import FederatedDataset, federate
from client.federated.fedavg import FedAvg, LocalTraining, train_epochs
from client.federated.loader import local_batches
from client.federated.secure_fedavg import SecureFedAvg
from deploy import mnist
from deploy.interrupt import StopRequest, stop_between_steps
from deploy.options import POSITIVE_INT, OutputFile, PositiveFloat, WorkerIds

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
    #: the owners host their shares (written as safetensors files, loaded by the workers)
    #: and the client finds them by tag instead of sending them (``--hosted``)
    hosted: bool = False
    #: also train with secure aggregation (client.federated.SecureFedAvg) beside the plain
    #: FedAvg, from the same initial weights and batches, and compare (``--secure-agg``)
    secure_agg: bool = False
    #: train each batch command by command instead of as one training-step plan
    #: (``--step-by-step``, for comparison: the results are the same)
    step_by_step: bool = False


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
    #: with ``secure_agg``: the secure run's accuracy, and per round the seconds each mode
    #: spent aggregating and in the whole round (training included)
    secure_accuracy: list[float] = field(default_factory=list)
    plain_aggregate_seconds: list[float] = field(default_factory=list)
    secure_aggregate_seconds: list[float] = field(default_factory=list)
    plain_round_seconds: list[float] = field(default_factory=list)
    secure_round_seconds: list[float] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Final centralized accuracy minus final federated accuracy, in points."""
        return self.central_accuracy[-1] - self.federated_accuracy[-1]

    @property
    def secure_gap(self) -> float:
        """Final plain FedAvg accuracy minus final secure-aggregation accuracy, in points."""
        return self.federated_accuracy[-1] - self.secure_accuracy[-1]


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


def load_mnist_split(config: DemoConfig) -> Split:
    """MNIST from a local copy of its IDX files: the official train and test sets."""
    assert config.mnist is not None
    files = mnist.check_directory(Path(config.mnist))
    arrays = {role: mnist.read_idx(path) for role, path in files.items()}

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


def load_split(config: DemoConfig) -> Split:
    """The run's data: MNIST with ``--mnist``, else digits."""
    return load_mnist_split(config) if config.mnist is not None else load_digits_split(config)


def dataset_name(split: Split) -> str:
    """The hosted dataset's name, hence its tag: ``digits`` (``#digits``) or ``mnist``."""
    return split.name.lower()


def owner_shares(
    split: Split, owner_ids: Sequence[str]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each owner's contiguous share of the training set, cut as ``federate`` cuts it."""
    chunk = -(-len(split.train_x) // len(owner_ids))
    return {
        owner: (split.train_x[start : start + chunk], split.train_y[start : start + chunk])
        for owner, start in zip(owner_ids, range(0, len(split.train_x), chunk), strict=False)
    }


def write_owner_files(split: Split, owner_ids: Sequence[str], directory: Path) -> dict[str, Path]:
    """One safetensors file per owner holding its share (``data``, ``target``): owner -> path.

    What an owner's operator would load with ``tensorfleet worker <owner> --dataset
    digits=PATH``: the worker tags the tensors ``#digits`` and ``#data``/``#target``.
    """
    from safetensors.torch import save_file

    files = {}
    for owner, (data, target) in owner_shares(split, owner_ids).items():
        path = directory / f"{owner}-{dataset_name(split)}.safetensors"
        save_file(
            {"data": data.contiguous(), "target": target.contiguous()},
            str(path),
            metadata={"description": f"{owner}'s share of {split.name} ({len(data)} samples)"},
        )
        files[owner] = path
    return files


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
    announce: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train federated (``owners``, averaged on ``aggregator``) and centralized; report both.

    Every object the run creates on the workers is deleted before this returns or
    raises (an error, or Ctrl-C, which stops the run at the next batch, saying so
    through ``announce``, default ``echo``); nothing else on the workers is touched.
    """
    split = load_split(config)
    workers = [*owners, aggregator]
    with stop_between_steps(announce or echo) as stop:
        try:
            result = _train(config, split, owners, aggregator, echo, progress, stop)
        except BaseException as error:
            # The traceback holds every frame of the run, and the frames its pointers:
            # clear them, so that release() deletes everything the run made.
            _clear_frames(error)
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                release(workers)
            raise
        release(workers)
        stop.check()  # Ctrl-C during the clean-up: the run is complete, but stop as asked
    echo(
        f"final test accuracy: federated {result.federated_accuracy[-1]:.2f}%, centralized "
        f"{result.central_accuracy[-1]:.2f}% (gap {result.gap:+.2f} points) after "
        f"{count(config.rounds, 'round')} x {count(config.local_epochs, 'local epoch')}, "
        f"{result.seconds:.1f} s"
    )
    if config.secure_agg:
        echo(secure_summary(result))
    if plot is not None:
        write_plot(
            result,
            plot,
            f"FedAvg on {split.name}: {len(owners)} owners, "
            f"{config.local_epochs} local epochs per round",
        )
        echo(f"plot written to {plot}")
    return result


def _train(
    config: DemoConfig,
    split: Split,
    owners: Sequence[Any],
    aggregator: Any,
    echo: Callable[[str], None],
    progress: bool,
    stop: StopRequest,
) -> DemoResult:
    """The rounds themselves; every pointer they make lives in this frame or below it."""
    from tqdm.auto import tqdm

    classes = int(split.train_y.max()) + 1
    features = int(split.train_x.shape[1])
    federated_model = make_model(features, config.hidden, classes, config.seed)
    central_model = make_model(features, config.hidden, classes, config.seed)
    training = LocalTraining(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        one_message_per_batch=not config.step_by_step,
    )
    result = DemoResult(train_samples=len(split.train_x), test_samples=len(split.test_x))

    if config.hosted:
        # the owners host their shares: the client finds them by tag and never holds them
        tag = f"#{dataset_name(split)}"
        dataset = FederatedDataset.from_search(owners, tag)
        echo(
            f"{split.name}: {len(dataset)} training samples hosted by "
            f"{', '.join(owner.id for owner in owners)}, found with search({tag!r}); "
            f"{len(split.test_x)} held out for testing; averaging on {aggregator.id}"
        )
    else:
        echo(
            f"{split.name}: {len(split.train_x)} training samples federated over "
            f"{', '.join(owner.id for owner in owners)}; {len(split.test_x)} held out for "
            f"testing; averaging on {aggregator.id}"
        )
        dataset = federate(TensorDataset(split.train_x, split.train_y), owners)
    strategy = FedAvg(
        aggregator, training, generator=torch.Generator().manual_seed(config.seed + 1)
    )
    # the secure run: same initial weights, same batches (its own generator, same seed)
    secure_model = make_model(features, config.hidden, classes, config.seed)
    secure_strategy = SecureFedAvg(
        training, generator=torch.Generator().manual_seed(config.seed + 1)
    )
    if config.secure_agg:
        echo(
            "secure aggregation beside it: each owner's update is shared among "
            f"{', '.join(owner.id for owner in owners)}; only the average is reconstructed"
        )
    central_optimizer = training.make_optimizer(central_model.parameters())
    central_generator = torch.Generator().manual_seed(config.seed + 1)
    batches_per_round = config.local_epochs * sum(
        -(-len(dataset[owner]) // config.batch_size) for owner in dataset.workers
    )
    if config.secure_agg:
        batches_per_round *= 2

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

            def on_batch(bar: Any = bar) -> None:
                bar.update()
                stop.check()  # a safe point: this batch's commands are all queued

            # with --secure-agg the two modes take turns going first, so that neither
            # always pays for what the other left queued (deletes, the baseline's work)
            secure_first = config.secure_agg and round_number % 2 == 0
            if secure_first:
                secure_outcome = secure_strategy.fit_round(secure_model, dataset, on_batch=on_batch)
            outcome = strategy.fit_round(federated_model, dataset, on_batch=on_batch)
            if config.secure_agg and not secure_first:
                secure_outcome = secure_strategy.fit_round(secure_model, dataset, on_batch=on_batch)
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
        if config.secure_agg:
            _record_secure(result, outcome.timings, secure_outcome.timings)
            result.secure_accuracy.append(accuracy(secure_model, split.test_x, split.test_y))
            line += (
                f"  |  secure agg: acc {result.secure_accuracy[-1]:6.2f}%, aggregation "
                f"{result.secure_aggregate_seconds[-1] * 1000:.0f} ms "
                f"(plain {result.plain_aggregate_seconds[-1] * 1000:.0f} ms)"
            )
        if progress:
            rounds.write(line)
        else:
            echo(line)
        stop.check()
    result.seconds = time.perf_counter() - start
    return result


def _record_secure(result: DemoResult, plain: dict[str, float], secure: dict[str, float]) -> None:
    result.plain_aggregate_seconds.append(plain["aggregate"])
    result.secure_aggregate_seconds.append(secure["aggregate"])
    result.plain_round_seconds.append(sum(plain.values()))
    result.secure_round_seconds.append(sum(secure.values()))


def secure_summary(result: DemoResult) -> str:
    """What secure aggregation reached and cost, beside plain FedAvg (medians per round)."""
    plain_aggregate = statistics.median(result.plain_aggregate_seconds) * 1000
    secure_aggregate = statistics.median(result.secure_aggregate_seconds) * 1000
    plain_round = statistics.median(result.plain_round_seconds)
    secure_round = statistics.median(result.secure_round_seconds)
    return (
        f"secure aggregation: final accuracy {result.secure_accuracy[-1]:.2f}% vs plain FedAvg "
        f"{result.federated_accuracy[-1]:.2f}% (difference {result.secure_gap:+.2f} points); "
        f"per round (median): aggregation {secure_aggregate:.0f} ms secure vs "
        f"{plain_aggregate:.0f} ms plain (x{secure_aggregate / max(plain_aggregate, 1e-9):.1f}), "
        f"whole round {secure_round:.2f} s vs {plain_round:.2f} s"
    )


def count(number: int, noun: str) -> str:
    """``3 rounds``, ``1 round``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _clear_frames(error: BaseException) -> None:
    """Drop the locals of every finished frame in ``error``'s tracebacks (and its causes')."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def release(workers: Sequence[Any]) -> None:
    """Delete every object of this run that is still unreferenced, and wait until it is gone.

    Dropped pointers queue their deletes (``gc.collect()`` finalizes those caught in
    reference cycles, such as a module and its parameters); a ping to each worker sends
    them and waits until they ran. A pipelined error not reported yet is raised once, by
    the first ping; the ping after it confirms the worker is done.
    """
    gc.collect()
    for worker in workers:
        try:
            worker.synchronize()
        except TensorFleetError:
            worker.synchronize()


def write_plot(result: DemoResult, path: Path, title: str) -> None:
    """Test accuracy and training loss per round, federated beside centralized, as a PNG.

    ``path``'s directory must exist: nothing is created but the file.
    """
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
    try:
        figure.savefig(path, dpi=120, format="png")
    finally:
        plt.close(figure)


# ---------------------------------------------------------------------------------- workers


@contextlib.contextmanager
def demo_workers(
    fleet: bool,
    owner_ids: Sequence[str],
    announce: Callable[[str], None],
    hosted: Mapping[str, Path] | None = None,
    dataset: str = "digits",
) -> Iterator[tuple[list[Any], Any]]:
    """(data owners, aggregator): in-process, or the running fleet's, or a private fleet's.

    With ``hosted`` (owner id -> safetensors file of its share), each owner hosts its
    share as its operator's private data named ``dataset``: in-process through
    ``VirtualWorker(..., data=[...])``; on a fleet, the running fleet's workers if they
    all serve and every owner already hosts ``#dataset`` (``tensorfleet worker
    --dataset``), else a private fleet whose owners load the files with ``--dataset``.

    No worker is cleared: the run deletes what it makes (:func:`run_demo`), and a
    private fleet is deleted as a whole afterwards.
    """
    import client as sy

    hook = sy.TorchHook(torch)
    ids = [*owner_ids, AGGREGATOR]
    context: contextlib.AbstractContextManager[list[Any]]
    if fleet and hosted is not None:
        from deploy.fleet_launch import private_fleet, serving_workers

        running = serving_workers(ids, hook)
        if running is not None and all(
            len(owner.search(f"#{dataset}", tag)) == 1
            for owner in running[:-1]
            for tag in ("#data", "#target")
        ):
            from broker.settings import get_settings

            announce(
                f"--hosted: using the running fleet (namespace {get_settings().namespace}), "
                f"whose owners {', '.join(owner_ids)} host #{dataset}: their own shares are "
                "used, not the demo's files"
            )
            context = contextlib.nullcontext(running)
        else:
            why = (
                f"not every one of {', '.join(ids)} serves"
                if running is None
                else f"the running fleet's owners do not all host #{dataset}"
            )
            announce(
                f"--hosted: the owners load their shares when they start (--dataset), and {why}, "
                "so the demo starts a private fleet"
            )
            options = {owner: [f"{dataset}={path}"] for owner, path in hosted.items()}
            context = private_fleet(ids, hook, announce, datasets=options)
    elif fleet:
        from deploy.fleet_launch import fleet_workers

        context = fleet_workers(ids, hook, announce)
    else:
        from client.hosted import dataset_tensors

        workers = []
        for worker_id in ids:
            path = (hosted or {}).get(worker_id)
            data = None if path is None else dataset_tensors(worker_id, dataset, path)
            workers.append(sy.VirtualWorker(hook, id=worker_id, data=data))
        context = contextlib.nullcontext(workers)
    with context as workers:
        yield workers[:-1], workers[-1]


@click.command()
@click.option(
    "--rounds",
    type=POSITIVE_INT,
    default=DemoConfig.rounds,
    show_default=True,
    help="FedAvg rounds.",
)
@click.option(
    "--local-epochs",
    type=POSITIVE_INT,
    default=DemoConfig.local_epochs,
    show_default=True,
    help="Epochs each owner trains per round (the baseline trains as many).",
)
@click.option(
    "--batch-size",
    type=POSITIVE_INT,
    default=DemoConfig.batch_size,
    show_default=True,
    help="Samples per training batch.",
)
@click.option(
    "--lr",
    type=PositiveFloat(),
    default=DemoConfig.lr,
    show_default=True,
    help="SGD learning rate.",
)
@click.option(
    "--hidden",
    type=POSITIVE_INT,
    default=DemoConfig.hidden,
    show_default=True,
    help="Hidden units.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**32 - 1),
    default=DemoConfig.seed,
    show_default=True,
    help="Seed of the shuffle, the split and the initial weights.",
)
@click.option(
    "--fleet",
    is_flag=True,
    help="Run on fleet workers: the running fleet if bob, alice, jon and secure_worker all "
    "serve (the demo deletes what it creates there), else a private fleet started for the run.",
)
@click.option(
    "--out",
    type=OutputFile(),
    default=Path("fedavg_digits.png"),
    show_default=True,
    help="PNG plot to write (its directory must exist).",
)
@click.option(
    "--mnist",
    type=mnist.MnistDirectory(),
    default=None,
    help="Directory holding MNIST's four IDX files (optionally .gz) itself: train on them "
    "instead of digits.",
)
@click.option(
    "--max-train",
    type=POSITIVE_INT,
    default=None,
    help="Use at most this many training samples (handy with --mnist).",
)
@click.option(
    "--owners",
    type=WorkerIds(AGGREGATOR),
    default=",".join(DATA_OWNERS),
    show_default=True,
    help=f"Comma-separated data-owner worker ids (distinct, not {AGGREGATOR}).",
)
@click.option(
    "--hosted",
    is_flag=True,
    help="The owners host their shares as private data (safetensors files the demo writes, "
    "loaded by the workers: data= in-process, --dataset on a private fleet) and the client "
    "finds them by tag and trains on them without ever holding them.",
)
@click.option(
    "--secure-agg",
    is_flag=True,
    help="Also train with secure aggregation (each owner's update additively shared among "
    "the owners, only the average reconstructed) from the same start, and print its "
    "accuracy and per-round cost beside plain FedAvg's.",
)
@click.option(
    "--step-by-step",
    is_flag=True,
    help="Send each training batch as its separate commands (forward, backward, step...) "
    "instead of one training-step plan call: slower, same results; for comparison.",
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
    owners: tuple[str, ...],
    hosted: bool,
    secure_agg: bool,
    step_by_step: bool,
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
        hosted=hosted,
        secure_agg=secure_agg,
        step_by_step=step_by_step,
    )
    kind = "fleet workers (RabbitMQ -> Celery -> Redis)" if fleet else "in-process workers"
    click.echo(f"TensorFleet demo on {kind}{', owners hosting their data' if hosted else ''}")
    with contextlib.ExitStack() as stack:
        files: dict[str, Path] | None = None
        name = "digits"
        if hosted:  # what each owner's operator has on disk before its worker starts
            split = load_split(config)
            name = dataset_name(split)
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tf-hosted-")))
            files = write_owner_files(split, owners, directory)
        data_owners, aggregator = stack.enter_context(
            demo_workers(
                fleet, owners, lambda line: click.echo(line, err=True), hosted=files, dataset=name
            )
        )
        run_demo(
            config,
            data_owners,
            aggregator,
            echo=click.echo,
            progress=not no_progress,
            plot=out,
            announce=lambda line: click.echo(line, err=True),
        )
