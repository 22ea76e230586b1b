"""Federated data (§3.17): ``dataset.federate``, ``sy.FederatedDataset``,
``sy.FederatedDataLoader``, and lesson 004 §1.4 (the MNIST demo's flow, on digits).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recording import recording_commands
from torch import nn, optim
from torch.utils.data import Dataset, TensorDataset

import client as sy
from client.federated import BaseDataset


def numbered(samples: int) -> TensorDataset:
    """Sample i has data [i, 10 i] and target i, so batches show which samples they hold."""
    index = torch.arange(samples)
    return TensorDataset(torch.stack([index, index * 10], dim=1).float(), index)


def targets_of(batches) -> list[list[int]]:
    return [target.get().tolist() for _, target in batches]


# ------------------------------------------------------------------ federate


def test_federate_gives_contiguous_shares_in_worker_order(bob, alice):
    fd = numbered(10).federate((bob, alice))

    assert isinstance(fd, sy.FederatedDataset)
    assert fd.workers == ["bob", "alice"]
    assert len(fd) == 10
    assert len(fd["bob"]) == 5 and len(fd["alice"]) == 5
    assert fd["bob"].location is bob and fd[alice].location is alice
    assert torch.equal(fd["bob"].targets.get(), torch.arange(5))
    assert torch.equal(fd["alice"].data.get()[:, 1], torch.arange(5, 10).float() * 10)
    assert "bob, alice" in repr(fd) and "10" in repr(fd)


def test_each_share_is_two_objects_on_its_worker(bob, alice):
    with recording_commands(bob) as sent:
        fd = numbered(10).federate((bob, alice))
        bob.synchronize()

    stores = [(worker_id, command[0]) for worker_id, command in sent if command[0] == "store"]
    assert stores == [("bob", "store"), ("bob", "store"), ("alice", "store"), ("alice", "store")]
    assert len(bob._objects) == 2 and len(alice._objects) == 2
    del fd
    assert bob._objects == {} and alice._objects == {}


def test_few_samples_leave_the_last_workers_empty(bob, alice, secure_worker):
    # 4 items over 3 workers: shares of ceil(4 / 3) = 2, so only bob and alice get data
    fd = numbered(4).federate((bob, alice, secure_worker))

    assert fd.workers == ["bob", "alice"]
    assert [len(fd[w]) for w in fd.workers] == [2, 2]


def test_federate_is_attached_to_every_torch_dataset(bob):
    class Squares(Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, index: int):
            return torch.tensor([float(index)]), index * index

    fd = Squares().federate((bob,))

    assert fd.workers == ["bob"]
    assert torch.equal(fd["bob"].targets.get(), torch.tensor([0, 1, 4, 9, 16, 25]))


def test_federated_dataset_joins_shares_already_on_workers(bob, alice):
    share_bob = BaseDataset(torch.ones(3, 2), torch.zeros(3)).send(bob)
    share_alice = BaseDataset(torch.ones(4, 2), torch.ones(4)).send(alice)

    fd = sy.FederatedDataset([share_bob, share_alice])

    assert fd.workers == ["bob", "alice"]
    assert len(fd) == 7
    assert fd["alice"] is share_alice
    later = BaseDataset(torch.ones(1, 2), torch.zeros(1)).send(bob)
    assert sy.FederatedDataset([share_bob, share_alice, later])["bob"] is later


def test_unknown_worker_and_local_share_are_clear_errors(bob):
    fd = numbered(4).federate((bob,))

    with pytest.raises(KeyError, match=r"no share on worker 'carol'.*\['bob'\]"):
        fd["carol"]
    with pytest.raises(ValueError, match="send each one first"):
        sy.FederatedDataset([BaseDataset(torch.ones(2, 2), torch.ones(2))])


def test_base_dataset_send_and_get(bob):
    local = BaseDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 2]))
    remote = local.send(bob)

    assert remote.location is bob and len(remote) == 3
    data, target = remote[1]
    assert torch.equal(data.get(), torch.tensor([2.0, 3.0])) and target.get().item() == 1
    back = remote.get()
    assert back.location is None
    assert torch.equal(back.data, local.data)
    assert bob._objects == {}


# ------------------------------------------------------------------ loader


def test_loader_yields_every_batch_of_a_worker_then_the_next(bob, alice):
    loader = sy.FederatedDataLoader(numbered(10).federate((bob, alice)), batch_size=3)

    batches = list(loader)

    assert [data.location.id for data, _ in batches] == ["bob", "bob", "alice", "alice"]
    assert targets_of(batches) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    assert len(loader) == len(batches) == 4


@pytest.mark.parametrize(
    ("batch_size", "drop_last", "expected"),
    [(4, False, 4), (3, True, 2), (5, False, 2), (10, True, 0), (1, False, 10)],
)
def test_len_is_the_number_of_batches_it_yields(bob, alice, batch_size, drop_last, expected):
    loader = sy.FederatedDataLoader(
        numbered(10).federate((bob, alice)), batch_size=batch_size, drop_last=drop_last
    )

    assert len(loader) == expected
    assert sum(1 for _ in loader) == expected


def test_a_batch_is_one_command_per_tensor_built_on_its_worker(bob, alice):
    loader = sy.FederatedDataLoader(numbered(40).federate((bob, alice)), batch_size=8, shuffle=True)

    with recording_commands(bob) as sent:
        batches = list(loader)
        bob.synchronize()
        alice.synchronize()

    ops = [(worker_id, command[1]) for worker_id, command in sent if command[0] == "op"]
    # 20 samples each, batches of 8: 3 batches per worker, 2 commands (data, targets) each
    assert ops == [("bob", "Tensor.__getitem__")] * 6 + [("alice", "Tensor.__getitem__")] * 6
    assert [data.shape[0] for data, _ in batches] == [8, 8, 4, 8, 8, 4]
    assert all(data.location is target.location for data, target in batches)


def test_shuffle_stays_within_each_worker(bob, alice):
    fd = numbered(20).federate((bob, alice))
    loader = sy.FederatedDataLoader(
        fd, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )

    batches = list(loader)
    seen = targets_of(batches)

    bobs = [t for (data, _), ts in zip(batches, seen, strict=True) if data.location is bob
            for t in ts]  # fmt: skip
    alices = [t for (data, _), ts in zip(batches, seen, strict=True) if data.location is alice
              for t in ts]  # fmt: skip
    assert sorted(bobs) == list(range(10)) and sorted(alices) == list(range(10, 20))
    assert bobs != list(range(10))  # shuffled
    # batch data and targets stay paired
    for data, targets in zip(batches, seen, strict=True):
        assert data[0].get()[:, 0].long().tolist() == targets


def test_a_seeded_shuffle_is_reproducible(bob):
    fd = numbered(12).federate((bob,))

    def order(seed: int) -> list[list[int]]:
        loader = sy.FederatedDataLoader(
            fd, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return targets_of(loader)

    assert order(3) == order(3)
    torch.manual_seed(4)
    first = targets_of(sy.FederatedDataLoader(fd, batch_size=5, shuffle=True))
    torch.manual_seed(4)
    assert targets_of(sy.FederatedDataLoader(fd, batch_size=5, shuffle=True)) == first


def test_loader_refuses_a_plain_dataset():
    with pytest.raises(TypeError, match="not a FederatedDataset"):
        sy.FederatedDataLoader(numbered(4), batch_size=2)


def test_loader_ignores_torch_dataloader_options_with_a_warning(bob):
    fd = numbered(4).federate((bob,))

    with pytest.warns(UserWarning, match="num_workers"):
        loader = sy.FederatedDataLoader(fd, batch_size=2, num_workers=1, pin_memory=True)
    assert len(loader) == 2
    with pytest.raises(TypeError, match="unexpected options"):
        sy.FederatedDataLoader(fd, batch_size=2, bogus=True)


# ------------------------------------------------------------------ lesson 004 §1.4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def digits(train: bool) -> TensorDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return TensorDataset(x[:1400], y[:1400]) if train else TensorDataset(x[1400:], y[1400:])


def test_004_mnist_demo_training_flow(bob, alice):
    """The lesson's train() and test() with a FederatedDataLoader, on digits (no download)."""
    torch.manual_seed(0)
    federated_train_loader = sy.FederatedDataLoader(
        digits(train=True).federate((bob, alice)), batch_size=64, shuffle=True
    )
    test_loader = torch.utils.data.DataLoader(digits(train=False), batch_size=100)
    model = Net()
    optimizer = optim.SGD(model.parameters(), lr=0.5)

    def train() -> list[float]:
        model.train()
        losses = []
        for batch_idx, (data, target) in enumerate(federated_train_loader):
            model.send(data.location)  # send the model to the right location
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            model.get()  # get the model back
            if batch_idx % 5 == 0:
                losses.append(loss.get().item())  # get the loss back
        return losses

    def test() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                pred = model(data).argmax(1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()
        return 100.0 * correct / len(test_loader.dataset)

    assert len(federated_train_loader) == 2 * 11  # 700 samples each, batches of 64
    first = train()
    accuracy = test()
    for _ in range(2):
        train()
    assert first[-1] < first[0]
    assert test() > max(accuracy, 85.0)
    assert all(type(param) is nn.Parameter for param in model.parameters())
