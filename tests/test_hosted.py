"""Hosted data on every worker kind (issue 9.3): search, private pointers, training on it.

bob and alice host the toy dataset of tests/hosted_data.py: on the fleet they were
started with ``--dataset toy=PATH`` (tests/conftest.py), in-process it comes with
``VirtualWorker(hook, id=..., data=[...])``. The client finds it by tag, computes
and trains on it and fetches results, but never fetches, moves or sends the data.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import hosted_data
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

import client as sy
from broker.errors import DatasetNotFoundError, GetNotPermittedError
from client.cli import main
from client.federated.dataset import BaseDataset
from client.hosted import dataset_tensors


@pytest.fixture
def owners(hook: Any, worker_kind: str, bob: Any, alice: Any, hosted_files: dict[str, Path]):
    """(bob, alice), each hosting its toy share; in-process through ``data=``."""
    if worker_kind == "virtual":
        for owner, path in hosted_files.items():
            sy.VirtualWorker(hook, id=owner, data=dataset_tensors(owner, hosted_data.NAME, path))
    return bob, alice


def file_tensors(hosted_files: dict[str, Path], owner: str) -> dict[str, torch.Tensor]:
    return load_file(str(hosted_files[owner]))


def test_search_finds_hosted_tensors_by_tag_and_by_id(owners, hosted_files):
    bob, alice = owners
    (data,) = bob.search("#toy", "#data")
    assert data.shape == (hosted_data.SAMPLES, hosted_data.FEATURES)
    assert data.dtype == torch.float32
    assert data.location is bob and data.private and not data.gc
    assert {"#toy", "#data", "#toy-train"} <= data.tags
    assert data.description == hosted_data.DESCRIPTION
    (target,) = bob.search(["#toy", "#target"])  # a list works too, as in PySyft
    assert target.dtype == torch.int64 and target.shape == (hosted_data.SAMPLES,)
    assert len(bob.search("#toy")) == 2
    assert bob.search("#toy", "#nothing-has-this") == []
    (by_id,) = bob.search(data.id_at_location)
    assert by_id.id_at_location == data.id_at_location and by_id.tags == data.tags
    (alices,) = alice.search("#toy", "#data")
    assert alices.id_at_location != data.id_at_location
    expected = file_tensors(hosted_files, "bob")["data"]
    assert torch.allclose((data * 2).sum(dim=0).get(), (expected * 2).sum(dim=0))
    assert torch.equal(data[:3].get(), expected[:3])  # a slice is the caller's own copy
    assert bob.object_count() == 0  # hosted data is nobody's object but its operator's


def test_dropped_search_pointers_never_delete_the_hosted_data(owners, hosted_files):
    bob, _ = owners
    for _ in range(3):
        pointers = bob.search("#toy")
        assert len(pointers) == 2
        del pointers
        gc.collect()
        bob.synchronize()  # the deletes a pointer would queue have run by now
    (data,) = bob.search("#toy", "#data")
    expected = file_tensors(hosted_files, "bob")["data"]
    assert torch.allclose(data.sum().get(), expected.sum())


def test_get_move_and_send_are_refused_and_the_pointer_stays_usable(owners, hosted_files):
    bob, alice = owners
    (data,) = bob.search("#toy", "#data")
    with pytest.raises(GetNotPermittedError, match=r"private data .* never \.get\(\)"):
        data.get()
    with pytest.raises(GetNotPermittedError, match=str(data.id_at_location)):
        data.move(alice)
    with pytest.raises(GetNotPermittedError, match="bob"):
        data.send(alice)
    # nothing moved, nothing was made, and the same pointer still computes
    assert data.location is bob
    assert alice.object_count() == 0 and alice.search("#toy", "#data")[0].id_at_location != (
        data.id_at_location
    )
    expected = file_tensors(hosted_files, "bob")["data"]
    assert torch.allclose((data @ torch.ones(4).send(bob)).get(), expected @ torch.ones(4))
    assert bob.object_count() == 0


def test_tags_and_description_travel_with_a_sent_tensor(bob):
    x = torch.tensor([1.0, 2.0]).tag("#fun", "#x").describe("two numbers")
    pointer = x.send(bob)
    assert pointer.tags == {"#fun", "#x"} and pointer.description == "two numbers"
    (found,) = bob.search("#fun", "#x")
    assert found.id_at_location == pointer.id_at_location
    assert not found.private and not found.gc
    back = found.get()  # the caller's own object: it may take it
    assert torch.equal(back, x) and back.tags == {"#fun", "#x"}
    assert back.description == "two numbers"
    assert bob.search("#fun") == []
    with pytest.raises(TypeError, match="without spaces"):
        torch.ones(1).tag("#two words")


def test_request_search_is_pysyfts_spelling_of_search(hook, bob):
    pointer = torch.tensor([4.0]).tag("#request-search").send(bob)
    (found,) = hook.local_worker.request_search("#request-search", location=bob)
    assert found.id_at_location == pointer.id_at_location and found.location is bob
    with pytest.raises(TypeError, match="location must be a worker"):
        hook.local_worker.request_search("#request-search", location="bob")


def test_an_in_process_worker_hosts_ten_thousand_tensors(hook):
    """PySyft 0.2.4's test_spinup_time hosts 10,000 tensors: all of them are found."""
    data = [torch.tensor([float(i)]).tag("#spinup") for i in range(10_000)]
    worker = sy.VirtualWorker(hook, id="spinup", data=data)
    found = worker.search("#spinup")
    assert len(found) == 10_000
    assert sorted(pointer.id_at_location for pointer in found) == sorted(t.id for t in data)


def test_a_missing_share_is_named_with_the_worker_and_the_tags(owners):
    bob, _ = owners
    with pytest.raises(DatasetNotFoundError, match=r'"bob" has 0 tensors tagged #absent #data'):
        sy.FederatedDataset.from_search([bob], "#absent")


def train(model: nn.Module, loader: Any, epochs: int) -> list[float]:
    """PySyft Part 6's loop: the model goes to each batch's owner; mean loss per epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    means = []
    for _ in range(epochs):
        losses = []
        for data, target in loader:
            model.send(data.location)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            model.get()
            losses.append(float(loss.get().detach()))
        means.append(sum(losses) / len(losses))
    return means


def test_training_on_hosted_data_the_client_never_held_converges(owners):
    bob, alice = owners
    dataset = sy.FederatedDataset.from_search((bob, alice), "#toy")
    assert dataset.workers == ["bob", "alice"] and len(dataset) == 2 * hosted_data.SAMPLES
    loader = sy.FederatedDataLoader(dataset, batch_size=16, shuffle=True)
    assert len(loader) == 8
    torch.manual_seed(0)
    model = nn.Linear(hosted_data.FEATURES, 2)
    losses = train(model, loader, epochs=4)
    assert losses[-1] < 0.6 * losses[0], losses
    del loader, dataset
    gc.collect()
    for owner in (bob, alice):
        owner.synchronize()
        assert owner.object_count() == 0  # batches and intermediates went with their pointers
        assert len(owner.search("#toy")) == 2  # and the data stayed


def test_a_plan_runs_on_hosted_data(owners, hosted_files):
    bob, _ = owners

    @sy.func2plan(args_shape=[(-1, hosted_data.FEATURES)])
    def scores(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).sum(dim=1)

    share = BaseDataset.from_search(bob, "#toy")
    plan = scores.send(bob)
    expected = file_tensors(hosted_files, "bob")["data"]
    assert torch.allclose(plan(share.data).get(), torch.relu(expected).sum(dim=1))
    assert torch.allclose(plan(share.data[:10]).get(), torch.relu(expected[:10]).sum(dim=1))
    assert torch.allclose(share.data.sum().get(), expected.sum())  # the data is untouched


# ------------------------------------------------------------------ the worker's --dataset


def test_the_worker_command_documents_and_checks_its_dataset_option(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(main, ["worker", "--help"], prog_name="tensorfleet")
    assert shown.exit_code == 0 and "--dataset NAME=PATH" in shown.output
    assert "bob.search" in shown.output
    for argument, complaint in (
        ("no-equals-sign", "is not NAME=PATH"),
        (f"digits={tmp_path / 'missing.safetensors'}", "is not a file"),
        ("bad name=/tmp/x", "is not NAME=PATH"),
    ):
        refused = runner.invoke(
            main, ["worker", "bob", "--dataset", argument], prog_name="tensorfleet"
        )
        assert refused.exit_code == 2, refused.output
        assert complaint in refused.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    refused = runner.invoke(
        main, ["worker", "bob", "--dataset", f"digits={junk}"], prog_name="tensorfleet"
    )
    assert refused.exit_code == 2 and "is not a safetensors file" in refused.output
    good = hosted_data.write_owner_file(tmp_path / "good.safetensors", 0)
    refused = runner.invoke(
        main,
        ["worker", "bob", "--dataset", f"a={good}", "--dataset", f"a={good}"],
        prog_name="tensorfleet",
    )
    assert refused.exit_code == 2 and "dataset a given more than once" in refused.output


def test_a_restarted_fleet_worker_hosts_the_same_data_under_the_same_ids(fleet, hook):
    """Pointers found before a crash keep working after it: hosted ids are stable."""
    alice = sy.FleetWorker(hook, id="alice")
    (data,) = alice.search("#toy", "#data")
    before = data.sum().get()
    fleet.kill("alice")
    fleet.start("alice")
    (again,) = alice.search("#toy", "#data")
    assert again.id_at_location == data.id_at_location
    assert torch.equal(data.sum().get(), before)
