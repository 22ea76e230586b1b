"""Hosted datasets at the engine: tagged, found by search, usable, never taken (no transport)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from broker import codec, protocol
from broker.errors import ConfigurationError
from broker.protocol import Ref
from worker.datasets import hosted_id, load_dataset, parse_option
from worker.engine import Delivery, Engine


def _run(engine: Engine, principal: str, commands: list) -> list:
    body = codec.encode(protocol.envelope(1, principal, None, commands))
    return engine.handle(body, Delivery(principal=principal)).replies


def test_a_hosted_dataset_is_found_used_and_never_taken(tmp_path: Path) -> None:
    path = tmp_path / "digits.safetensors"
    save_file(
        {"data": torch.arange(12.0).reshape(4, 3), "target": torch.tensor([0, 1, 0, 1])},
        str(path),
        metadata={"description": "four digits", "tags": "#toy"},
    )
    engine = Engine("bob")
    for hosted in load_dataset("bob", *parse_option(f"digits={path}")):
        engine.host(hosted)
    (found,) = _run(engine, "carol", [[protocol.SEARCH, ["#digits", "#data"], 1]])
    assert found[1] is True and len(found[2]) == 1
    data_id, shape, dtype, _, tags, description, private = found[2][0]
    assert data_id == hosted_id("bob", "digits", "data") and private is True
    assert (shape, dtype, description) == ([4, 3], "float32", "four digits")
    assert {"#digits", "#data", "#toy"} <= set(tags)
    replies = _run(
        engine,
        "carol",
        [
            [protocol.OP, "Tensor.sum", [Ref(data_id)], {}, [7], True, None],
            [protocol.OP, "Tensor.__getitem__", [Ref(data_id), 0], {}, [8], True, None],
            [protocol.GET, Ref(7), 2],
            [protocol.GET, Ref(data_id), 3],
            [protocol.SEND_TO, data_id, "alice", 9, 4],
            [protocol.OP, "Tensor.add_", [Ref(8), 100], {}, [], True, None],
            [protocol.DELETE, data_id],
        ],
    )
    by_request = {reply[0]: reply for reply in replies if reply[0] is not None}
    assert by_request[2][2] == torch.tensor(66.0)
    assert by_request[3][2]["type"] == "GetNotPermittedError"
    assert by_request[4][2]["type"] == "GetNotPermittedError"
    assert any(r[0] is None and r[2]["type"] == "PermissionDeniedError" for r in replies)
    # the row view carol changed in place was a copy: the operator's data is untouched
    assert torch.equal(engine.store.objects[data_id], torch.arange(12.0).reshape(4, 3))
    assert _run(engine, "carol", [[protocol.COUNT, 5]])[0][2] == 1  # its own object 8 only


def test_a_dataset_option_that_cannot_be_used_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="NAME=PATH"):
        parse_option("no-equals-sign")
    with pytest.raises(ConfigurationError, match="existing safetensors file"):
        load_dataset("bob", "digits", tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigurationError, match="a safetensors file"):
        load_dataset("bob", "digits", tmp_path / "junk.safetensors")
