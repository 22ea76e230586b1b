"""Every command's fields are checked where the message is decoded (issue 8.2).

Each test speaks the protocol itself, as a buggy or hostile client would, on both
worker kinds: a command whose fields have the wrong types is answered with
MalformedMessageError naming the field, nothing is stored under a bad id, and the
worker keeps serving the honest client's objects exactly. On the fleet the worker is
then killed and restarted: nothing the bad commands sent may stop it from loading.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from broker import protocol
from broker.errors import MalformedMessageError
from broker.protocol import Ref

TENSOR = torch.tensor([1.0, 2.0])


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def bad_commands(x_id: int) -> list[tuple[list[Any], str]]:
    """(command, words the error must contain): one per field kind the schema checks."""
    add = protocol.OP, "torch.add"
    return [
        ([protocol.STORE, "x", TENSOR, None], "object id"),
        ([protocol.STORE, 1.5, TENSOR, None], "object id"),
        ([protocol.STORE, True, TENSOR, None], "object id"),
        ([protocol.STORE, -1, TENSOR, None], "object id"),
        ([protocol.STORE, 2**64 - 1, TENSOR, None], "object id"),
        ([*add, [Ref(x_id), 1], {}, ["r"], True, None], "object id"),
        ([*add, [Ref(x_id), 1], {}, [True], True, None], "object id"),
        ([*add, [Ref(x_id), nested(40)], {}, [5], True, None], "nest deeper"),
        ([*add, [Ref(x_id), 1], {1: 2}, [5], True, None], "string keys"),
        ([*add, [Ref(x_id), 1], {}, [5], "yes", None], "true or false"),
        ([*add, [Ref(-5), 1], {}, [5], True, None], "object id"),
        ([protocol.OP, 7, [], {}, [5], True, None], "op name"),
        ([protocol.DELETE, "x"], "object id"),
        ([protocol.GET, "x", None], "object id"),
        ([protocol.SEND_TO, x_id, 5, 6, None], "name"),
        ([protocol.SEND_TO, x_id, "alice", "6", None], "object id"),
        ([protocol.SEARCH, "#digits", None], "search query"),
        ([protocol.FORWARD_FAILED, ["a"], {}], "object id"),
        ([protocol.FORWARD_FAILED, [5], {"type": 1}], "error record"),
        ([protocol.PING, "request"], "request"),
        ([protocol.OBJECTS, 1.5], "request"),
        ([protocol.RUN_PLAN, x_id, [], [5], 1, None], "true or false"),
    ]


def test_commands_with_wrong_field_types_are_refused_and_the_worker_keeps_serving(
    bob: Any, worker_kind: str, request: pytest.FixtureRequest
) -> None:
    x = TENSOR.send(bob)
    session, before = bob.session, set(bob._objects)
    for command, words in bad_commands(x.id_at_location):
        session.enqueue(bob.id, command)
        with pytest.raises(MalformedMessageError, match=words) as error:
            session.synchronize(bob.id)
        assert f"{command[0]} field" in str(error.value)
        assert set(bob._objects) == before, command
    assert torch.equal((x * 2).get(), TENSOR * 2)

    if worker_kind == "fleet":
        fleet = request.getfixturevalue("fleet")
        fleet.kill("bob")
        fleet.start("bob")
        assert set(bob._objects) == before
    assert torch.equal(x.get(), TENSOR)


def test_an_envelope_with_wrong_types_is_refused_whole(bob: Any) -> None:
    from broker import codec

    x = TENSOR.send(bob)
    for envelope in (
        {"v": 1, "batch": "1", "sender": "me", "reply_to": None, "commands": []},
        {"v": 1, "batch": 1, "sender": 5, "reply_to": None, "commands": []},
        {"v": 1, "batch": 1, "sender": "me", "reply_to": 5, "commands": []},
        {"v": 1, "batch": 1, "sender": "", "reply_to": None, "commands": []},
        {"v": 1, "batch": 1, "sender": "me", "reply_to": None, "commands": {}},
    ):
        bob.session.transport.publish(bob.id, codec.encode(envelope))
    assert torch.equal(x.get(), TENSOR)
