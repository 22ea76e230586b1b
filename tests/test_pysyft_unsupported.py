"""PySyft 0.2 names TensorFleet lacks raise NotSupportedError saying what instead (issue 12.5).

Never silently ignored: an unknown option, a PySyft option asking for something
TensorFleet does not do, a PySyft class or method. Options at their PySyft default
ask for what TensorFleet does anyway, so they pass.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import client as sy
from client import unsupported


def test_the_error_is_in_the_tree_and_on_the_facade() -> None:
    error = sy.NotSupportedError("sy.TrainConfig", "Train with a loop.")

    assert isinstance(error, sy.TensorFleetError)
    assert isinstance(error, NotImplementedError)
    assert isinstance(error, AttributeError)
    assert sy.exceptions.NotSupportedError is sy.NotSupportedError
    assert "sy.TrainConfig" in str(error)
    assert "Train with a loop." in str(error)


@pytest.mark.parametrize("name", sorted(unsupported.NAMES))
def test_pysyft_module_names_say_what_to_use_instead(name: str) -> None:
    with pytest.raises(sy.NotSupportedError) as raised:
        getattr(sy, name)

    assert f"sy.{name}" in str(raised.value)
    assert unsupported.NAMES[name] in str(raised.value)
    assert not hasattr(sy, name)


def test_other_missing_names_are_plain_attribute_errors() -> None:
    with pytest.raises(AttributeError) as raised:
        sy.NoSuchThing  # noqa: B018

    assert type(raised.value) is AttributeError
    assert "NoSuchThing" in str(raised.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"log_msgs": True}, "log_msgs=True"),
        ({"verbose": True}, "verbose=True"),
        ({"auto_add": False}, "auto_add=False"),
        ({"message_pending_time": 0.5}, "message_pending_time=0.5"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_worker_options_tensorfleet_lacks_are_refused(
    hook: Any, worker_kind: str, options: dict[str, Any], named: str
) -> None:
    kind = sy.VirtualWorker if worker_kind == "virtual" else sy.FleetWorker

    with pytest.raises(sy.NotSupportedError, match=f"sy.{kind.__name__}") as raised:
        kind(hook, id="bob", **options)

    assert named in str(raised.value)


def test_worker_options_at_their_pysyft_defaults_pass(hook: Any, worker_kind: str) -> None:
    kind = sy.VirtualWorker if worker_kind == "virtual" else sy.FleetWorker

    bob = kind(hook, id="bob", log_msgs=False, verbose=False, auto_add=True)

    assert bob is kind(hook, id="bob")
    assert torch.equal(torch.tensor([1, 2]).send(bob).get(), torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"is_client": False}, "is_client=False"),
        ({"verbose": True}, "verbose=True"),
        ({"seed": 3}, "seed=3"),
        ({"framework": "tf"}, "framework"),
    ],
)
def test_hook_options_tensorfleet_lacks_are_refused(options: dict[str, Any], named: str) -> None:
    with pytest.raises(sy.NotSupportedError, match=r"sy\.TorchHook") as raised:
        sy.TorchHook(torch, **options)

    assert named in str(raised.value)


def test_hook_takes_pysyft_defaults_and_its_local_worker_keyword(hook: Any) -> None:
    again = sy.TorchHook(torch, is_client=True, verbose=False, seed=None)
    named = sy.TorchHook(torch, local_worker=hook.local_worker)

    assert again.local_worker is hook.local_worker
    assert named.local_worker is hook.local_worker


@pytest.mark.parametrize("method", sorted(unsupported.TENSOR_METHODS))
def test_pysyft_tensor_methods_say_what_instead(bob: Any, method: str) -> None:
    local = torch.tensor([1.0, 2.0])
    pointer = local.send(bob)

    for tensor in (local, pointer):
        with pytest.raises(sy.NotSupportedError, match=f"Tensor.{method}"):
            getattr(tensor, method)(bob)
    assert torch.equal(pointer.get(), local)


@pytest.mark.parametrize("method", sorted(unsupported.MODULE_METHODS))
def test_pysyft_module_methods_say_what_instead(hook: Any, method: str) -> None:
    with pytest.raises(sy.NotSupportedError, match=f"Module.{method}"):
        getattr(nn.Linear(2, 1), method)()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"inplace": True}, "send_"),
        ({"garbage_collect_data": False}, "ptr.gc = False"),
        ({"no_wrap": True}, "no_wrap=True"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_send_options_tensorfleet_lacks_are_refused(
    bob: Any, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(sy.NotSupportedError) as raised:
        torch.tensor([1.0]).send(bob, **options)
    assert named in str(raised.value)

    pointer = torch.tensor([1.0]).send(bob)
    with pytest.raises(sy.NotSupportedError):
        pointer.send(bob, **options)
    assert bob.object_count() == 1


def test_send_and_get_options_at_their_defaults_pass(bob: Any) -> None:
    pointer = torch.tensor([1.0]).send(bob, inplace=False, garbage_collect_data=True)

    assert torch.equal(pointer.get(deregister_ptr=True, reason=""), torch.tensor([1.0]))


def test_get_options_tensorfleet_lacks_are_refused(bob: Any) -> None:
    pointer = torch.tensor([1.0]).send(bob)

    with pytest.raises(sy.NotSupportedError, match="get_"):
        pointer.get(inplace=True)
    with pytest.raises(sy.NotSupportedError, match="deregister_ptr=False"):
        pointer.get(deregister_ptr=False)
    assert torch.equal(pointer.get(), torch.tensor([1.0]))
