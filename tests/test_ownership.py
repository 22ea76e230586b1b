"""Objects belong to the client whose command created them: another client is refused.

The victim uses the pointer API; the attacker (tests/attacker.py) speaks the raw
protocol as another principal: a RabbitMQ user of its own on the fleet (its
``user_id`` is checked by RabbitMQ), another client of the hub in-process. Every
attack must be refused with a clear error, and the victim's objects and results
must stay exact.
"""

from __future__ import annotations

import uuid
from typing import Any

import torch
from attacker import refusal

from broker import protocol
from broker.protocol import PointerRecord, Ref

SECRET = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0])


def new_id() -> int:
    return uuid.uuid4().int % 2**63


def test_another_client_cannot_read_list_or_count_my_objects(bob: Any, attacker: Any) -> None:
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    error = refusal(attacker, "bob", [protocol.GET, Ref(secret.id_at_location), 1])
    assert error["type"] == "PermissionDeniedError"
    assert str(secret.id_at_location) in error["message"] and "bob" in error["message"]
    attacker.send("bob", [[protocol.OBJECTS, 2], [protocol.COUNT, 3]])
    answers = {request: payload for request, ok, payload in attacker.replies(2)}
    assert answers == {2: {}, 3: 0}
    assert torch.equal(secret.get(), SECRET)


def test_another_client_cannot_overwrite_delete_or_clear_my_objects(
    bob: Any, attacker: Any
) -> None:
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    victim_id = secret.id_at_location
    error = refusal(attacker, "bob", [protocol.STORE, victim_id, torch.zeros(5), 1])
    assert error["type"] == "PermissionDeniedError"
    # computing into my id is an overwrite too
    own = new_id()
    attacker.send("bob", [[protocol.STORE, own, torch.zeros(5), None]])
    error = refusal(
        attacker, "bob", [protocol.OP, "torch.add", [Ref(own), 1], {}, [victim_id], True, 2]
    )
    assert error["type"] == "PermissionDeniedError"
    attacker.send("bob", [[protocol.DELETE, victim_id], [protocol.CLEAR, 3]])
    replies = attacker.replies(2)
    assert any(not ok and payload["type"] == "PermissionDeniedError" for _, ok, payload in replies)
    assert torch.equal(secret.get(), SECRET)


def test_another_client_cannot_compute_on_or_change_my_objects(bob: Any, attacker: Any) -> None:
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    victim = Ref(secret.id_at_location)
    for name, args, kwargs in (
        ("torch.add", [victim, 0], {}),  # read it through an op
        ("Tensor.add_", [victim, 1], {}),  # change it in place
        ("Tensor.__setitem__", [victim, 0, 7.0], {}),
        ("torch.add", [torch.ones(5), 1], {"out": victim}),  # write into it with out=
    ):
        error = refusal(attacker, "bob", [protocol.OP, name, args, kwargs, [new_id()], True, 1])
        assert error["type"] == "PermissionDeniedError", (name, error)
    attacker.send("bob", [[protocol.SETATTR, victim, "requires_grad", True]])
    (reply,) = attacker.replies(1)
    assert reply[1] is False and reply[2]["type"] == "PermissionDeniedError"
    assert torch.equal((secret * 1).get(), SECRET)
    assert torch.equal(secret.get(), SECRET)


def test_another_client_cannot_move_or_exfiltrate_my_objects(
    bob: Any, alice: Any, attacker: Any
) -> None:
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    victim_id = secret.id_at_location
    error = refusal(attacker, "bob", [protocol.SEND_TO, victim_id, "alice", new_id(), 1])
    assert error["type"] == "PermissionDeniedError"
    # a pointer of its own that names my object does not help: bob checks who asks
    record = new_id()
    attacker.send(
        "alice",
        [
            [
                protocol.STORE,
                record,
                PointerRecord("bob", victim_id, True, (5,), "float32", False),
                None,
            ]
        ],
    )
    error = refusal(attacker, "alice", [protocol.REMOTE_GET, record, 1])
    assert error["type"] == "PermissionDeniedError"
    assert torch.equal(secret.get(), SECRET)


def test_a_client_cannot_aim_a_workers_replies_at_my_reply_queue(bob: Any, attacker: Any) -> None:
    """Gets of the attacker's own tensor, replies addressed to the victim's queue under the
    victim's next request ids: they would come from bob, a worker the victim talks to.
    Bob refuses the whole message before running it; the victim's get stays exact."""
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    victim_address = bob.session.transport.reply_address
    upcoming = next(bob.session._requests)
    decoy = new_id()
    attacker.send("bob", [[protocol.STORE, decoy, torch.full((5,), 666.0), 1]])
    assert attacker.replies(1)[0][:2] == [1, True]
    gets = [[protocol.GET, Ref(decoy), request] for request in range(upcoming, upcoming + 5)]
    attacker.send("bob", gets, reply_to=victim_address)
    attacker.send("bob", [[protocol.PING, 2]])  # bob runs messages in order: the attack is done
    assert attacker.replies(1) == [[2, True, True]]
    assert torch.equal(secret.get(), SECRET)
    attacker.send("bob", [[protocol.GET, Ref(decoy), 3]])  # the refused gets ran nothing
    (reply,) = attacker.replies(1)
    assert reply[1] is True and torch.equal(reply[2], torch.full((5,), 666.0))


def test_a_client_cannot_pose_as_a_worker_acting_for_me(bob: Any, attacker: Any) -> None:
    """A forwarded envelope is believed only from the forwarding worker's own identity."""
    secret = SECRET.clone().send(bob)
    bob.synchronize()
    for victim in ("me", "guest", "@anonymous"):  # whoever the victim is, in either kind
        attacker.send(
            "bob",
            [[protocol.GET, Ref(secret.id_at_location), 1]],
            forwarded=True,
            on_behalf_of=victim,
        )
    assert attacker.replies(1, timeout=3.0) == []  # refused as malformed, never answered
    assert torch.equal(secret.get(), SECRET)
