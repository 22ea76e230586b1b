"""``sy.FederatedDataLoader(iter_per_worker=True)`` and ``num_iterators=k`` (§3.17).

PySyft 0.2.4: with ``iter_per_worker`` there is one iterator per worker and ``next``
returns a dict with a batch from every worker; ``num_iterators=k`` runs k iterators
(capped at ``len(workers) - 1``), returns dicts of k batches, and an iterator whose
worker is exhausted hops to a worker no iterator has used yet.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import client as sy


def share(first: int, samples: int) -> sy.BaseDataset:
    """Targets first .. first + samples - 1, so batches show which samples they hold."""
    index = torch.arange(first, first + samples)
    return sy.BaseDataset(index.float().unsqueeze(1), index)


def targets(batches: dict[str, Any]) -> dict[str, list[int]]:
    return {worker: target.get().tolist() for worker, (_, target) in batches.items()}


def test_iter_per_worker_yields_one_batch_per_worker(bob: Any, alice: Any) -> None:
    federated = sy.FederatedDataset([share(0, 5).send(bob), share(100, 3).send(alice)])

    loader = sy.FederatedDataLoader(federated, batch_size=2, iter_per_worker=True)
    dicts = list(loader)

    assert loader.num_iterators == 2
    # bob has 3 batches, alice 2: alice drops out of the last dict
    assert [targets(batches) for batches in dicts] == [
        {"bob": [0, 1], "alice": [100, 101]},
        {"bob": [2, 3], "alice": [102]},
        {"bob": [4]},
    ]
    assert len(loader) == len(dicts) == 3


def test_iter_per_worker_batches_are_pointers_on_their_worker(bob: Any, alice: Any) -> None:
    federated = sy.FederatedDataset([share(0, 4).send(bob), share(10, 4).send(alice)])

    loader = sy.FederatedDataLoader(federated, batch_size=4, iter_per_worker=True, drop_last=True)
    (batches,) = list(loader)

    assert list(batches) == ["bob", "alice"]
    for worker in (bob, alice):
        data, target = batches[worker.id]
        assert data.location is worker and target.location is worker
        assert data.shape == (4, 1)


def test_iter_per_worker_shuffles_within_each_worker(bob: Any, alice: Any) -> None:
    federated = sy.FederatedDataset([share(0, 6).send(bob), share(10, 6).send(alice)])

    generator = torch.Generator().manual_seed(0)
    loader = sy.FederatedDataLoader(
        federated, batch_size=3, shuffle=True, iter_per_worker=True, generator=generator
    )
    seen: dict[str, list[int]] = {"bob": [], "alice": []}
    for batches in loader:
        for worker, values in targets(batches).items():
            seen[worker] += values

    assert sorted(seen["bob"]) == list(range(6))
    assert sorted(seen["alice"]) == list(range(10, 16))


def test_num_iterators_is_capped_at_one_less_than_the_workers(
    bob: Any, alice: Any, secure_worker: Any
) -> None:
    federated = sy.FederatedDataset(
        [share(0, 4).send(bob), share(10, 4).send(alice), share(20, 4).send(secure_worker)]
    )

    loader = sy.FederatedDataLoader(federated, batch_size=2, num_iterators=3)

    assert loader.num_iterators == 2  # PySyft keeps one worker idle to switch to
    dicts = [targets(batches) for batches in loader]
    # two iterators start on bob and alice; the first to finish takes secure_worker
    assert dicts == [
        {"bob": [0, 1], "alice": [10, 11]},
        {"bob": [2, 3], "alice": [12, 13]},
        {"secure_worker": [20, 21]},
        {"secure_worker": [22, 23]},
    ]
    assert len(loader) == 4


def test_an_iterator_hops_to_an_idle_worker_when_its_own_is_done(
    bob: Any, alice: Any, secure_worker: Any
) -> None:
    federated = sy.FederatedDataset(
        [share(0, 2).send(bob), share(10, 6).send(alice), share(20, 2).send(secure_worker)]
    )

    loader = sy.FederatedDataLoader(federated, batch_size=2, num_iterators=2)

    assert [targets(batches) for batches in loader] == [
        {"bob": [0, 1], "alice": [10, 11]},
        {"secure_worker": [20, 21], "alice": [12, 13]},
        {"alice": [14, 15]},
    ]
    assert len(loader) == 3


def test_one_iterator_is_the_plain_loader(bob: Any, alice: Any) -> None:
    federated = sy.FederatedDataset([share(0, 3).send(bob), share(10, 3).send(alice)])

    # two workers: num_iterators=2 is capped at 1, the plain loader of (data, target) tuples
    loader = sy.FederatedDataLoader(federated, batch_size=2, num_iterators=2)

    assert loader.num_iterators == 1
    assert [target.get().tolist() for _, target in loader] == [[0, 1], [2], [10, 11], [12]]


def test_bad_iterator_options_are_refused(bob: Any) -> None:
    federated = sy.FederatedDataset([share(0, 2).send(bob)])

    with pytest.raises(ValueError, match="num_iterators must be a positive int"):
        sy.FederatedDataLoader(federated, num_iterators=0)
    with pytest.raises(TypeError, match="iter_per_worker must be True or False"):
        sy.FederatedDataLoader(federated, iter_per_worker="yes")
