"""PySyft 0.2.4's ``PointerDataset`` (§3.17): a dataset sent whole, ``len``, ``.data``,
``.targets``, indexing and ``.get()``, on both worker kinds.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import client as sy


def dataset(samples: int = 5) -> sy.BaseDataset:
    """Sample i has data [i, 10 i] and target i."""
    index = torch.arange(samples)
    return sy.BaseDataset(torch.stack([index, index * 10], dim=1).float(), index)


def test_send_gives_a_dataset_pointer(bob: Any) -> None:
    local = dataset()
    pointer = local.send(bob)

    assert isinstance(pointer, sy.PointerDataset)
    assert pointer.location is bob
    assert len(pointer) == 5
    assert isinstance(pointer.data, sy.PointerTensor)
    assert isinstance(pointer.targets, sy.PointerTensor)
    assert pointer.data.location is bob and pointer.targets.location is bob
    assert pointer.id_at_location == (pointer.data.id_at_location, pointer.targets.id_at_location)
    assert "PointerDataset" in repr(pointer) and "bob" in repr(pointer)
    # the local dataset is unchanged, and bob holds the dataset's two tensors
    assert type(local.data) is torch.Tensor
    assert len(bob._objects) == 2


def test_indexing_gives_pointers_made_on_the_worker(bob: Any) -> None:
    pointer = dataset().send(bob)

    data, target = pointer[3]
    assert data.location is bob and target.location is bob
    assert torch.equal(data.get(), torch.tensor([3.0, 30.0]))
    assert target.get().item() == 3
    batch, targets = pointer[1:3]
    assert torch.equal(targets.get(), torch.tensor([1, 2]))
    assert batch.shape == (2, 2)


def test_get_returns_the_dataset_and_the_worker_forgets_it(bob: Any) -> None:
    pointer = dataset().send(bob)

    back = pointer.get()

    assert type(back) is sy.BaseDataset
    assert torch.equal(back.targets, torch.arange(5))
    assert torch.equal(back.data[:, 1], torch.arange(5).float() * 10)
    assert back.location is None
    assert bob._objects == {}


def test_dropping_the_pointer_deletes_the_dataset(bob: Any) -> None:
    pointer = dataset().send(bob)
    assert len(bob._objects) == 2

    del pointer

    assert bob._objects == {}


def test_computing_on_the_sent_dataset(bob: Any) -> None:
    pointer = dataset().send(bob)

    total = pointer.data.sum(dim=0)

    assert torch.equal(total.get(), torch.tensor([10.0, 100.0]))


def test_pointer_datasets_make_a_federated_dataset(bob: Any, alice: Any) -> None:
    on_bob, on_alice = dataset(3).send(bob), dataset(4).send(alice)

    federated = sy.FederatedDataset([on_bob, on_alice])

    assert federated.workers == ["bob", "alice"] and len(federated) == 7
    assert federated["alice"] is on_alice
    assert all(isinstance(federated[w], sy.PointerDataset) for w in federated.workers)


def test_a_sent_dataset_cannot_be_sent_again_from_here(bob: Any, alice: Any) -> None:
    pointer = dataset().send(bob)

    with pytest.raises(ValueError, match=r"already on bob: \.get\(\) it first"):
        pointer.send(alice)
    with pytest.raises(TypeError, match="BaseDataset"):
        sy.PointerDataset(torch.zeros(2), torch.zeros(2))
