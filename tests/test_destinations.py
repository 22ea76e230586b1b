"""Data and work go only to workers of the fleet: a made-up destination moves nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from broker import protocol
from broker.errors import UnknownWorkerError


def test_sending_to_a_worker_that_does_not_exist_moves_nothing(bob: Any) -> None:
    x = torch.tensor([1.0, 2.0, 3.0]).send(bob)
    with pytest.raises(UnknownWorkerError) as refused:
        bob._request(
            [protocol.SEND_TO, x.id_at_location, "no-such-worker", x.id_at_location, None],
            "move to no-such-worker",
        )
    assert "no-such-worker" in str(refused.value) and "stays on bob" in str(refused.value)
    assert torch.equal(x.get(), torch.tensor([1.0, 2.0, 3.0]))


def test_an_op_on_a_pointer_to_a_made_up_worker_is_refused(bob: Any) -> None:
    from broker.protocol import PointerRecord

    record = PointerRecord("no-such-worker", 7, True, (3,), "float32", False)
    bob._request([protocol.STORE, 123, record, None], "store")
    with pytest.raises(UnknownWorkerError):
        bob._request(
            [protocol.OP, "Tensor.add", [protocol.Ref(123), 1], {}, [124], True, None],
            "op Tensor.add",
        )
    bob._enqueue([protocol.DELETE, 123])  # dropping it forwards nothing anywhere
    bob.synchronize()
    assert bob.object_count() == 0
