"""FederatedDataLoader: batches built on the workers that hold the data.

It yields every batch of the first worker (in ``FederatedDataset.workers``
order), then every batch of the next, shuffling only within a worker. A batch is
``(data, target)``, two pointers on that worker, each made by ONE command:
``share.data[indices]`` (a slice when not shuffling), so a batch costs two
pipelined commands, never one message per sample. ``len(loader)`` is the number
of batches it yields (PySyft 0.2's global ``ceil(total / batch_size)`` was wrong
whenever shares were not multiples of the batch size, issue #3707).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from broker.errors import NotSupportedError
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
        one_at_a_time = (
            "It runs one iterator: every batch of one worker, then the next; group the "
            "batches by data.location to train workers in turn."
        )
        if num_iterators != 1:
            raise NotSupportedError(
                f"sy.FederatedDataLoader(..., num_iterators={num_iterators!r})", one_at_a_time
            )
        if options.pop("iter_per_worker", False):
            raise NotSupportedError(
                "sy.FederatedDataLoader(..., iter_per_worker=True)", one_at_a_time
            )
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
        return sum(self.batches_of(self.federated_dataset[worker]) for worker in self.workers)

    def iter_worker(self, worker: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one worker's share, in order (one pass)."""
        share = self.federated_dataset[worker]
        for index in batch_indices(
            len(share), self.batch_size, self.shuffle, self.drop_last, self.generator
        ):
            yield share.data[index], share.targets[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for worker in self.workers:
            yield from self.iter_worker(worker)

    def __repr__(self) -> str:
        return f"<FederatedDataLoader {len(self)} batches of {self.batch_size} over {self.workers}>"
