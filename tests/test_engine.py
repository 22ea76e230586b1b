"""The engine on its own: message-level behaviour that no transport changes."""

from __future__ import annotations

import pytest
import torch

from broker import codec, protocol
from broker.errors import MalformedMessageError
from broker.protocol import Ref
from worker.engine import Delivery, Engine, Middleware, derive_id

#: the principal the engine's tests send as; in-process, a client's reply address is its name
TESTER = Delivery(principal="tester")


def run(engine: Engine, commands: list, batch: int = 1) -> list:
    body = codec.encode(protocol.envelope(batch, "tester", "tester", commands))
    result = engine.handle(body, TESTER)
    return result.replies


def test_an_op_runs_and_its_result_is_kept() -> None:
    engine = Engine("bob")
    run(engine, [[protocol.STORE, 1, torch.tensor([1.0, 2.0]), None]])
    replies = run(engine, [[protocol.OP, "torch.add", [Ref(1), Ref(1)], {}, [2], True, 7]])
    assert replies == [[7, True, [[[2], "float32", False]]]]
    assert torch.equal(engine.store.objects[2], torch.tensor([2.0, 4.0]))


def test_a_forbidden_op_is_refused_by_name_and_the_message_rejected() -> None:
    engine = Engine("bob")
    run(engine, [[protocol.STORE, 1, torch.tensor([1.0]), None]])
    body = codec.encode(
        protocol.envelope(
            2, "tester", "tester", [[protocol.OP, "os.system", ["echo owned"], {}, [3], True, 5]]
        )
    )
    result = engine.handle(body, TESTER)
    assert result.rejected is not None and "os.system" in result.rejected
    assert result.replies[0][1] is False
    assert result.replies[0][2]["type"] == "ForbiddenOperationError"
    assert 3 not in engine.store.objects and 3 in engine.store.failures


def test_an_unknown_command_is_reported_and_the_next_one_still_runs() -> None:
    engine = Engine("bob")
    replies = run(engine, [["launch_missiles", 1], [protocol.PING, 9]])
    assert replies[0][2]["type"] == "UnknownCommandError"
    assert replies[1] == [9, True, True]


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1garbage",
        codec.encode([1, 2, 3]),
        codec.encode({"v": 99, "batch": 1, "sender": "x", "reply_to": None, "commands": []}),
    ],
)
def test_a_malformed_message_raises_malformed_message_error(body: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        Engine("bob").handle(body)


def test_replies_go_only_to_the_senders_own_address() -> None:
    """Aiming a worker's replies at another party's queue is refused before anything runs."""
    engine = Engine("bob")
    run(engine, [[protocol.STORE, 1, torch.tensor([1.0]), None]])
    body = codec.encode(
        protocol.envelope(2, "tester", "victim", [[protocol.GET, Ref(1), 3], [protocol.PING, 4]])
    )
    with pytest.raises(MalformedMessageError, match="'victim' is not a reply queue of 'tester'"):
        engine.handle(body, TESTER)
    assert run(engine, [[protocol.PING, 5]]) == [[5, True, True]]  # still serving


def test_middleware_sees_every_message_with_its_duration_and_errors() -> None:
    seen: list[tuple[str, int, int]] = []

    class Recorder(Middleware):
        def after_message(self, worker_id: str, commands: int, seconds: float, errors: int) -> None:
            assert seconds >= 0
            seen.append((worker_id, commands, errors))

    engine = Engine("bob", middleware=[Recorder()])
    run(engine, [[protocol.PING, 1], [protocol.GET, Ref(404), 2]])
    assert seen == [("bob", 2, 1)]
    assert engine.stats.messages == 1 and engine.stats.errors == 1


def test_forwarded_result_ids_are_deterministic_and_differ_per_hop() -> None:
    assert derive_id(42, "bob") == derive_id(42, "bob")
    assert derive_id(42, "bob") != derive_id(42, "alice")
    assert 0 <= derive_id(42, "bob") < 2**63


def test_object_ids_use_all_63_bits_and_never_repeat() -> None:
    from client.pointer import new_id

    ids = [new_id() for _ in range(20_000)]  # crosses several 4096-id refills
    assert len(set(ids)) == len(ids)
    assert all(0 <= obj_id < 2**63 for obj_id in ids)
    assert max(ids) >= 2**62  # a 36-bit (PySyft) id space would never reach this
