"""Federated data: datasets whose shares live on the workers that own them.

``dataset.federate((bob, alice))`` cuts a torch dataset into contiguous shares
(``ceil(len / n_workers)`` samples each, in order, as PySyft 0.2 did), sends
each share's data and targets to its worker as two tensors, and returns a
:class:`FederatedDataset`: one :class:`BaseDataset` per worker, holding the two
pointers and its length (known here, so nothing needs a round trip).
``sy.FederatedDataset([share_on_bob, share_on_alice])`` joins shares that are
already on workers, and ``FederatedDataset.from_search((bob, alice), "#digits")``
the shares of a dataset the workers host (found by tag; the client never holds it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from broker.errors import DatasetNotFoundError
from client.pointer import PointerTensor


def _worker_id(worker: Any) -> str:
    """A worker handle or a worker id, as the id."""
    return worker if isinstance(worker, str) else str(worker.id)


class BaseDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Data and targets of one owner: local tensors, or pointers to tensors on one worker.

    ``len`` is the number of samples; ``ds[i]`` is ``(data[i], targets[i])`` (pointers
    when the dataset is remote); ``ds[[3, 1, 4]]`` is one batch, one command per tensor.
    """

    data: Any
    targets: Any

    def __init__(self, data: torch.Tensor, targets: torch.Tensor) -> None:
        if data.shape[0] != targets.shape[0]:
            raise ValueError(
                f"data has {data.shape[0]} samples but targets has "
                f"{targets.shape[0]}: they must match"
            )
        remote = [type(t) is PointerTensor for t in (data, targets)]
        if remote[0] != remote[1] or (
            remote[0] and cast(Any, data).location is not cast(Any, targets).location
        ):
            raise ValueError("data and targets must both be local or both be on the same worker")
        self.data = data
        self.targets = targets

    @property
    def location(self) -> Any:
        """The worker holding the data (None for a local dataset)."""
        return self.data.location if type(self.data) is PointerTensor else None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index], self.targets[index]

    @classmethod
    def from_search(
        cls,
        worker: Any,
        *query: str,
        data_tag: str = "#data",
        target_tag: str = "#target",
    ) -> BaseDataset:
        """The share of a dataset ``worker`` hosts: ``worker.search(*query, "#data")`` and
        ``"#target"``, one tensor each (DatasetNotFoundError otherwise).

        The client never holds the data: batches are built and trained on where it is,
        and its pointers never delete it (search pointers have garbage collection off).
        """
        found = []
        for tag in (data_tag, target_tag):
            pointers = worker.search(*query, tag)
            if len(pointers) != 1:
                raise DatasetNotFoundError(
                    str(worker.id), " ".join(str(item) for item in (*query, tag)), len(pointers)
                )
            found.append(pointers[0])
        return cls(found[0], found[1])

    def send(self, worker: Any) -> PointerDataset:
        """Send the whole dataset to ``worker``; returns its :class:`PointerDataset`.

        PySyft 0.2.4's form (0.2.0-0.2.3 sent in place); this local dataset is unchanged.
        A dataset already on a worker is refused: ``.get()`` it first, or move its data.
        """
        if self.location is not None:
            raise ValueError(
                f"this dataset is already on {self.location.id}: .get() it first to send it "
                "elsewhere"
            )
        return PointerDataset(self.data.send(worker), self.targets.send(worker))

    def get(self) -> BaseDataset:
        """Bring data and targets back: a local dataset; the worker forgets them."""
        if self.location is None:
            return self
        return BaseDataset(self.data.get(), self.targets.get())

    def federate(self, workers: Sequence[Any]) -> FederatedDataset:
        """Contiguous shares of this (local) dataset, one per worker."""
        return federate(self, workers)

    def __repr__(self) -> str:
        where = "local" if self.location is None else f"on {self.location.id}"
        return f"<BaseDataset {len(self)} samples {where}>"


class PointerDataset(BaseDataset):
    """A dataset sent whole to a worker: ``ptr = BaseDataset(data, targets).send(bob)``.

    As PySyft 0.2.4's ``PointerDataset``: ``len(ptr)``, ``ptr.data`` and ``ptr.targets``
    (pointers), ``ptr[i]`` (two pointers, made on the worker), ``ptr.location`` and
    ``ptr.get()`` (the local :class:`BaseDataset`; the worker forgets it). On the worker
    the dataset is its two tensors, so every op, plan and loader works on them as on any
    pointer; its length is known here, so ``len`` costs no round trip. Dropping the
    last reference deletes the data on the worker, as for a tensor pointer.
    """

    def __init__(self, data: torch.Tensor, targets: torch.Tensor) -> None:
        if type(data) is not PointerTensor:
            raise TypeError(
                "a PointerDataset holds pointers: make one with BaseDataset(data, "
                "targets).send(worker)"
            )
        super().__init__(data, targets)

    @property
    def id_at_location(self) -> tuple[int, int]:
        """The ids of the data and the targets on the worker."""
        return (self.data.id_at_location, self.targets.id_at_location)

    def get(self) -> BaseDataset:
        """The dataset, back here; the worker forgets it."""
        return BaseDataset(self.data.get(), self.targets.get())

    def __repr__(self) -> str:
        return (
            f"[PointerDataset | me -> {self.location.id}:{self.id_at_location}] "
            f"({len(self)} samples)"
        )


class FederatedDataset:
    """Shares of a dataset, one per worker, keyed by worker id in insertion order.

    ``fd.workers`` lists the ids; ``fd["bob"]`` (or ``fd[bob]``) is bob's share;
    ``len(fd)`` counts every sample. A later share on the same worker replaces the
    earlier one, as in PySyft.
    """

    def __init__(self, datasets: Iterable[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        for dataset in datasets:
            location = getattr(dataset, "location", None)
            if location is None:
                raise ValueError(
                    "FederatedDataset takes datasets on workers: send each one "
                    "first (BaseDataset(data, targets).send(bob)), or call "
                    "dataset.federate(workers)"
                )
            self.datasets[_worker_id(location)] = dataset

    @classmethod
    def from_search(cls, workers: Sequence[Any], *query: str, **tags: str) -> FederatedDataset:
        """The shares of a dataset the ``workers`` host, found by tag (PySyft Part 8's
        ``BaseDataset(search(..."#data")[0], search(..."#target")[0])`` per worker).

        ``FederatedDataset.from_search((bob, alice), "#digits")``; ``data_tag`` and
        ``target_tag`` (default ``#data``, ``#target``) name the two tensors of a share.
        """
        return cls(BaseDataset.from_search(worker, *query, **tags) for worker in workers)

    @property
    def workers(self) -> list[str]:
        """The worker ids, in insertion order."""
        return list(self.datasets)

    def __getitem__(self, worker: Any) -> BaseDataset:
        worker_id = _worker_id(worker)
        try:
            return self.datasets[worker_id]
        except KeyError:
            raise KeyError(
                f"no share on worker {worker_id!r}; this dataset has shares on {self.workers}"
            ) from None

    def __len__(self) -> int:
        return sum(len(dataset) for dataset in self.datasets.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.datasets)

    def __repr__(self) -> str:
        return (
            f"FederatedDataset\n    Distributed accross: {', '.join(self.workers)}\n"
            f"    Number of datapoints: {len(self)}\n"
        )


def _as_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``dataset`` as one data tensor and one target tensor."""
    if isinstance(dataset, BaseDataset):
        return dataset.data, dataset.targets
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    # a general dataset (transforms, PIL images...): one pass through a DataLoader
    samples = len(dataset)
    loader = DataLoader(dataset, batch_size=max(samples, 1), shuffle=False)
    data, targets = next(iter(loader))
    return torch.as_tensor(data), torch.as_tensor(targets)


def federate(self: Any, workers: Sequence[Any]) -> FederatedDataset:
    """``dataset.federate((bob, alice))``: contiguous shares of the dataset, one per worker.

    The share size is ``ceil(len / n_workers)``: with few samples the last workers
    may get nothing (PySyft 0.2 did the same). Each share is two commands, data and
    targets, and the data never comes back through the client.
    """
    workers = list(workers)
    if not workers:
        raise ValueError("federate() needs at least one worker: dataset.federate((bob, alice))")
    if any(isinstance(worker, str) for worker in workers):
        raise TypeError(
            "federate() takes worker handles (sy.VirtualWorker or sy.FleetWorker), "
            "not ids: dataset.federate((bob, alice))"
        )
    data, targets = _as_tensors(self)
    if type(data) is PointerTensor:
        raise ValueError("this dataset is already on a worker: federate a local dataset")
    samples = int(data.shape[0])
    chunk = math.ceil(samples / len(workers)) if samples else 0
    shares = []
    for index, start in enumerate(range(0, samples, max(chunk, 1))):
        worker = workers[index % len(workers)]
        stop = min(start + chunk, samples)
        shares.append(BaseDataset(data[start:stop], targets[start:stop]).send(worker))
    return FederatedDataset(shares)
