"""PySyft's ``allowed_to_get`` and ``GetNotPermittedError``, on both worker kinds.

PySyft 0.2.4: a worker asked for an object checks ``allowed_to_get`` and refuses
with ``GetNotPermittedError`` when the owner's policy forbids it; a local tensor is
always allowed. Here the policy is the worker's ownership table (worker/access.py):
your own objects may be taken; data the worker's operator hosts may be computed on
but never taken; another client's objects are refused outright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hosted_data
import pytest
import torch
from attacker import refusal

import client as sy
from broker import protocol
from broker.errors import GetNotPermittedError, PermissionDeniedError
from client.hosted import dataset_tensors
from worker.access import OPERATOR, allowed_to_get


@pytest.fixture
def owner(hook: Any, worker_kind: str, bob: Any, hosted_files: dict[str, Path]) -> Any:
    """bob, hosting the toy dataset (in-process through ``data=``)."""
    if worker_kind == "virtual":
        path = hosted_files["bob"]
        sy.VirtualWorker(hook, id="bob", data=dataset_tensors("bob", hosted_data.NAME, path))
    return bob


def test_the_policy_table() -> None:
    assert allowed_to_get("carol", "carol")
    assert allowed_to_get(None, "carol")  # an object made before owners were kept
    assert not allowed_to_get(OPERATOR, "carol")
    assert not allowed_to_get("dave", "carol")


def test_a_local_tensor_is_always_allowed(hook: Any) -> None:
    assert torch.tensor([1.0]).allowed_to_get() is True


def test_my_own_objects_are_allowed(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0]).send(bob)
    y = x * 3

    assert x.allowed_to_get() is True and y.allowed_to_get() is True
    assert torch.equal(y.get(), torch.tensor([3.0, 6.0]))


def test_hosted_data_is_not_allowed_and_get_says_so(owner: Any) -> None:
    (data,) = owner.search("#toy", "#data")

    assert data.allowed_to_get() is False
    with pytest.raises(GetNotPermittedError, match=r"never \.get\(\)"):
        data.get()
    # what is computed from it is the caller's, and may be fetched
    total = data.sum()
    assert total.allowed_to_get() is True
    assert total.get().shape == ()


def test_the_worker_refuses_get_whatever_the_client_believes(owner: Any) -> None:
    (data,) = owner.search("#toy", "#data")
    data.private = False  # a client that ignores the flag is refused by the worker itself

    with pytest.raises(GetNotPermittedError, match=str(data.id_at_location)):
        data.get()
    assert data.allowed_to_get() is False  # the pointer stays usable


def test_asking_about_a_missing_object_says_so(bob: Any) -> None:
    x = torch.tensor([1.0]).send(bob)
    x.get()

    with pytest.raises(sy.ObjectNotFoundError):
        x.allowed_to_get()


# ------------------------------------------------------------------ attacks


def test_another_clients_object_is_refused_not_answered(bob: Any, attacker: Any) -> None:
    secret = torch.tensor([3.0, 1.0, 4.0]).send(bob)
    bob.synchronize()

    error = refusal(attacker, "bob", [protocol.ALLOWED_TO_GET, secret.id_at_location, 1])

    assert error["type"] == PermissionDeniedError.__name__
    assert str(secret.id_at_location) in error["message"]
    assert secret.allowed_to_get() is True
    assert torch.equal(secret.get(), torch.tensor([3.0, 1.0, 4.0]))


def test_a_malformed_allowed_to_get_is_refused_and_the_worker_keeps_serving(
    bob: Any, attacker: Any
) -> None:
    x = torch.tensor([1.0]).send(bob)
    bob.synchronize()

    for bad in ("x", -1, 2**63, 2.5, [1]):
        error = refusal(attacker, "bob", [protocol.ALLOWED_TO_GET, bad, 1])
        assert error["type"] == "MalformedMessageError", bad
        assert "allowed_to_get field 1" in error["message"]
    attacker.send("bob", [[protocol.ALLOWED_TO_GET, 1, "request"]])
    (reply,) = attacker.replies(1)
    assert reply[1] is False and "field 2" in reply[2]["message"]
    assert x.allowed_to_get() is True
    assert torch.equal(x.get(), torch.tensor([1.0]))
