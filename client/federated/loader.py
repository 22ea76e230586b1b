"""FederatedDataLoader: batches built on the workers that hold the data.

It yields every batch of the first worker (in ``FederatedDataset.workers``
order), then every batch of the next, shuffling only within a worker. A batch is
``(data, target)``, two pointers on that worker, each made by ONE command:
``share.data[indices]`` (a slice when not shuffling), so a batch costs two
pipelined commands, never one message per sample. ``len(loader)`` is the number
of batches it yields (PySyft 0.2's global ``ceil(total / batch_size)`` was wrong
whenever shares were not multiples of the batch size, issue #3707).

Two PySyft 0.2.4 options run several workers' iterators at once, and ``next``
yields a dict ``{worker_id: (data, target)}`` with one batch from each:

- ``iter_per_worker=True``: one iterator per worker; a worker whose share is
  exhausted drops out of the dicts; iteration ends when every worker is done.
- ``num_iterators=k``: ``k`` iterators, capped at ``len(workers) - 1`` as in
  PySyft (it keeps a worker idle to switch to; with one worker, 1). Iterator i
  starts on worker i; when its worker is exhausted it moves on to the next worker
  no iterator has taken yet, in ``workers`` order; an iterator with no worker left
  drops out. With the cap at 1 the loader is the plain one (tuples, not dicts).

Either way ``len(loader)`` is the number of dicts it yields.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from client.federated.dataset import BaseDataset, FederatedDataset

#: options of torch's DataLoader that mean nothing when the data is on workers
_IGNORED_OPTIONS = (
    "num_workers",
    "pin_memory",
    "collate_fn",
    "persistent_workers",
    "prefetch_factor",
    "timeout",
    "worker_init_fn",
)


def batch_indices(
    size: int,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    generator: torch.Generator | None = None,
) -> Iterator[slice | list[int]]:
    """The index of each batch of ``size`` samples: a slice, or a list of ints when shuffled.

    The same function orders local batches (``local_batches``), so a federated run
    and its local replay see the same samples in the same order.
    """
    order = torch.randperm(size, generator=generator) if shuffle else None
    stop_at = size - size % batch_size if drop_last else size
    for start in range(0, stop_at, batch_size):
        stop = min(start + batch_size, size)
        yield slice(start, stop) if order is None else order[start:stop].tolist()


def local_batches(
    data: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a FederatedDataLoader would build on a worker, from local tensors."""
    for index in batch_indices(int(data.shape[0]), batch_size, shuffle, drop_last, generator):
        yield data[index], targets[index]


class FederatedDataLoader:
    """``sy.FederatedDataLoader(fd, batch_size=32, shuffle=True, drop_last=False)``.

    ``generator`` seeds the per-worker shuffles (``torch.Generator``); without it the
    global torch RNG is used, so ``torch.manual_seed`` makes a run reproducible.
    """

    def __init__(
        self,
        federated_dataset: FederatedDataset,
        batch_size: int = 8,
        shuffle: bool = False,
        drop_last: bool = False,
        num_iterators: int = 1,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(federated_dataset, FederatedDataset):
            raise TypeError(
                "Your dataset is not a FederatedDataset, please use "
                "torch.utils.data.DataLoader instead (or dataset.federate(workers) "
                "first)."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, not {batch_size!r}")
        if type(num_iterators) is not int or num_iterators < 1:
            raise ValueError(f"num_iterators must be a positive int, not {num_iterators!r}")
        iter_per_worker = options.pop("iter_per_worker", False)
        if type(iter_per_worker) is not bool:
            raise TypeError(f"iter_per_worker must be True or False, not {iter_per_worker!r}")
        unknown = sorted(set(options) - set(_IGNORED_OPTIONS))
        if unknown:
            raise TypeError(f"FederatedDataLoader got unexpected options {unknown}")
        if options:
            warnings.warn(
                f"FederatedDataLoader ignores {sorted(options)}: batches are built on the workers",
                stacklevel=2,
            )
        self.federated_dataset = federated_dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.iter_per_worker = iter_per_worker
        workers = len(federated_dataset.workers)
        #: how many workers' iterators run at once (PySyft 0.2.4's cap: one worker stays idle)
        self.num_iterators = workers if iter_per_worker else max(1, min(num_iterators, workers - 1))

    @property
    def workers(self) -> list[str]:
        return self.federated_dataset.workers

    def batches_of(self, share: BaseDataset) -> int:
        """How many batches one worker's share gives."""
        size = len(share)
        if self.drop_last:
            return size // self.batch_size
        return math.ceil(size / self.batch_size)

    def __len__(self) -> int:
        counts = [self.batches_of(self.federated_dataset[worker]) for worker in self.workers]
        if self.iter_per_worker:
            return max(counts, default=0)
        if self.num_iterators == 1:
            return sum(counts)
        return sum(1 for _ in _slot_schedule(counts, self.num_iterators))

    def iter_worker(self, worker: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one worker's share, in order (one pass)."""
        share = self.federated_dataset[worker]
        for index in batch_indices(
            len(share), self.batch_size, self.shuffle, self.drop_last, self.generator
        ):
            yield share.data[index], share.targets[index]

    def __iter__(self) -> Iterator[Any]:
        if self.num_iterators == 1 and not self.iter_per_worker:
            for worker in self.workers:
                yield from self.iter_worker(worker)
            return
        yield from self._iter_together()

    def _iter_together(self) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Dicts of one batch per running iterator (iter_per_worker / num_iterators)."""
        waiting = list(self.workers)
        running: list[tuple[str, Iterator[tuple[torch.Tensor, torch.Tensor]]]] = []
        while waiting and len(running) < self.num_iterators:
            worker = waiting.pop(0)
            running.append((worker, self.iter_worker(worker)))
        while running:
            batches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            still: list[tuple[str, Iterator[tuple[torch.Tensor, torch.Tensor]]]] = []
            for worker, batches_of_worker in running:
                while True:
                    batch = next(batches_of_worker, None)
                    if batch is not None:
                        batches[worker] = batch
                        still.append((worker, batches_of_worker))
                        break
                    if not waiting:  # this iterator has no worker left to move to
                        break
                    worker = waiting.pop(0)
                    batches_of_worker = self.iter_worker(worker)
            running = still
            if batches:
                yield batches

    def __repr__(self) -> str:
        if self.num_iterators > 1:
            return (
                f"<FederatedDataLoader {len(self)} dicts of {self.num_iterators} batches of "
                f"{self.batch_size} over {self.workers}>"
            )
        return f"<FederatedDataLoader {len(self)} batches of {self.batch_size} over {self.workers}>"


def _slot_schedule(counts: list[int], slots: int) -> Iterator[int]:
    """How many batches each dict of a ``num_iterators=slots`` loader holds (for ``len``).

    The same moves as ``_iter_together`` on batch counts: iterators take workers in
    order and move to the next unused worker when theirs is exhausted.
    """
    waiting = list(counts)
    running: list[int] = []
    while waiting and len(running) < slots:
        running.append(waiting.pop(0))
    while running:
        taken = []
        for left in running:
            while left == 0 and waiting:
                left = waiting.pop(0)
            if left > 0:
                taken.append(left - 1)
        running = taken
        if taken:
            yield len(taken)
