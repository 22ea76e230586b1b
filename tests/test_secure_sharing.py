"""Additive secret sharing (PySyft 0.2's ``x.share(bob, alice, crypto_provider=...)``).

What PySyft 0.2.4 documents, restated (its ``test_additive_shared.py`` and the
tutorials' Part 9/10): ``t.share(bob, alice, crypto_provider=james)`` leaves one share
on each holder and ``.get()`` reconstructs ``t``; ``x + y``, ``x - y``, ``x * y`` and
``x @ y`` of shared tensors reconstruct to the plain result (products via Beaver
triples from the crypto provider); floats go through ``fix_prec()`` first and come
back with ``.get().float_prec()``; ``x / 2`` divides by a public integer. Here the
ring is int64 modulo 2^64, and shares of a pointer travel worker to worker.
"""

from __future__ import annotations

import pytest
import torch
from recording import recording_commands
from torch import nn

import client as sy
from broker.errors import (
    CryptoProviderMissingError,
    SecureTypeError,
    SharesNotAlignedError,
    TooFewShareHoldersError,
)

#: one unit in the last place of the default precision (10**-3): a product or a
#: division by a public int rounds stochastically on shares, off by less than this
ULP = 1e-3


def close(actual: torch.Tensor, expected: torch.Tensor, units: float = 1.0) -> bool:
    return torch.allclose(actual, expected, rtol=0, atol=units * ULP + 1e-6)


def test_share_and_get_as_pysyft(bob, alice, secure_worker):
    t = torch.tensor([25, -3, 2**40])
    x = t.share(bob, alice, crypto_provider=secure_worker)
    assert isinstance(x, sy.AdditiveSharingTensor)
    assert list(x.child) == ["bob", "alice"]  # one share per holder, by worker id
    assert x.child["bob"].location is bob and x.child["alice"].location is alice
    # each holder stores one int64 share, and neither equals the secret
    (bobs,) = bob._objects.values()
    (alices,) = alice._objects.values()
    assert bobs.dtype == alices.dtype == torch.int64
    assert not torch.equal(bobs, t) and not torch.equal(alices, t)
    assert torch.equal(bobs + alices, t)  # int64 addition wraps: the ring is mod 2^64
    assert secure_worker.object_count() == 0
    assert torch.equal(x.get(), t)
    assert bob.object_count() == alice.object_count() == 0  # get() consumed the shares


def test_shares_are_fresh_randomness_each_time(bob, alice):
    t = torch.zeros(64, dtype=torch.int64)
    first = t.share(bob, alice)
    second = t.share(bob, alice)
    bobs = bob._objects
    a, b = (bobs[first.child["bob"].id_at_location], bobs[second.child["bob"].id_at_location])
    assert not torch.equal(a, b)
    assert len(set(a.tolist())) == 64  # 64 draws from 2^64 values: no repeats


def test_arithmetic_of_shared_integers(bob, alice, secure_worker):
    t = torch.tensor([1, 2, 3, 4])
    u = torch.tensor([5, -6, 7, 8])
    x = t.share(bob, alice, crypto_provider=secure_worker)
    y = u.share(bob, alice, crypto_provider=secure_worker)
    assert torch.equal((x + y).get(), t + u)
    assert torch.equal((x - y).get(), t - u)
    assert torch.equal((x * y).get(), t * u)
    assert torch.equal((x * x).get(), t * t)
    assert torch.equal((x + 10).get(), t + 10)  # a public value is added once
    assert torch.equal((x * 3).get(), t * 3)
    assert torch.equal((x * u).get(), t * u)  # a public tensor
    assert torch.equal((7 - x).get(), 7 - t)
    assert torch.equal(x.sum().get(), t.sum())
    m = torch.tensor([[1, 2], [3, 4]])
    shared = m.share(bob, alice, crypto_provider=secure_worker)
    assert torch.equal((shared @ shared).get(), m @ m)


def test_fixed_precision_shared_floats_as_pysyft(bob, alice, secure_worker):
    x = torch.tensor([0.1, 0.2, 0.3]).fix_prec().share(bob, alice, crypto_provider=secure_worker)
    y = torch.tensor([0.1, 0.2, 0.3]).fix_prec().share(bob, alice, crypto_provider=secure_worker)
    assert torch.equal((x + y).get().float_prec(), torch.tensor([0.2, 0.4, 0.6]))
    a_plain = torch.tensor([1.5, -2.25, 0.125])
    b_plain = torch.tensor([2.0, 4.0, -8.0])
    a = a_plain.fix_prec().share(bob, alice, crypto_provider=secure_worker)
    b = b_plain.fix_prec().share(bob, alice, crypto_provider=secure_worker)
    assert close((a * b).get().float_prec(), a_plain * b_plain)
    assert close((a - b).get().float_prec(), a_plain - b_plain, 0)
    assert close((a * 0.5).get().float_prec(), a_plain * 0.5)
    assert close((a + 1.25).get().float_prec(), a_plain + 1.25, 0)
    assert close((a / 2).get().float_prec(), a_plain / 2)
    assert close(a.sum().get().float_prec(), a_plain.sum(), 0)
    assert close(a.mean().get().float_prec(), a_plain.mean())
    m_plain = torch.tensor([[1.0, 2.0], [3.0, 4.5]])
    n_plain = torch.tensor([[0.5, -1.0], [1.5, 2.0]])
    m = m_plain.fix_prec().share(bob, alice, crypto_provider=secure_worker)
    n = n_plain.fix_prec().share(bob, alice, crypto_provider=secure_worker)
    assert close((m @ n).get().float_prec(), m_plain @ n_plain)


def test_three_holders_divide_by_a_public_integer(bob, alice, jon, secure_worker):
    plain = torch.tensor([10.5, -3.25, 7.0])
    x = plain.fix_prec().share(bob, alice, jon, crypto_provider=secure_worker)
    assert list(x.child.child) == ["bob", "alice", "jon"]
    assert close((x / 3).get().float_prec(), plain / 3)
    y = plain.fix_prec().share(bob, alice, jon, crypto_provider=secure_worker)
    assert close((y * y).get().float_prec(), plain * plain)


def test_beaver_triples_come_from_the_crypto_provider_worker_to_worker(bob, alice, secure_worker):
    x = torch.tensor([3, 4]).share(bob, alice, crypto_provider=secure_worker)
    y = torch.tensor([5, 6]).share(bob, alice, crypto_provider=secure_worker)
    assert bob.object_count() == alice.object_count() == 2
    with recording_commands(bob) as sent:
        z = x * y
        assert bob.object_count() > 0  # every queued command has run
    # the provider drew the randomness and split the triple; shares left it by send_to
    ops_on_provider = [c[1] for w, c in sent if w == "secure_worker" and c[0] == "op"]
    assert "secure.random_like" in ops_on_provider and "secure.split" in ops_on_provider
    assert any(w == "secure_worker" and c[0] == "send_to" for w, c in sent)
    # the client sent no tensor to anyone and fetched nothing: no share passed through it
    assert not [c for _, c in sent if c[0] in ("store", "get")]
    assert torch.equal(z.get(), torch.tensor([15, 24]))


def test_sharing_a_pointer_moves_the_shares_worker_to_worker(bob, alice, jon, secure_worker):
    secret = torch.tensor([0.5, -1.5, 2.25])
    ptr = secret.send(jon)
    assert jon.object_count() == 1
    with recording_commands(jon) as sent:
        shared = ptr.fix_prec().share(bob, alice, crypto_provider=secure_worker)
        assert jon.object_count() == 1  # the split ran on jon, and both shares left it
    assert not [c for _, c in sent if c[0] in ("store", "get")]  # nothing via the client
    assert [w for w, c in sent if c[0] == "send_to"] == ["jon", "jon"]
    ops_on_jon = [c[1] for w, c in sent if w == "jon" and c[0] == "op"]
    assert "secure.split" in ops_on_jon
    encoded = (secret * 1000).round().long()
    for holder in (bob, alice):
        (stored,) = holder._objects.values()
        assert stored.dtype == torch.int64 and not torch.equal(stored, encoded)
    assert torch.equal(shared.get().float_prec(), secret)
    assert torch.equal(ptr.get(), secret)  # the shared pointer's own data is untouched


def test_a_holder_that_is_the_datas_worker_keeps_its_share(bob, alice, secure_worker):
    ptr = torch.tensor([7, 8, 9]).send(bob)
    with recording_commands(bob) as sent:
        shared = ptr.share(bob, alice, crypto_provider=secure_worker)
    assert [w for w, c in sent if c[0] == "send_to"] == ["bob"]  # only alice's share moves
    assert torch.equal(shared.get(), torch.tensor([7, 8, 9]))


def test_model_fix_precision_share_for_aggregation(bob, alice, jon, secure_worker):
    torch.manual_seed(0)
    first, second = nn.Linear(4, 2), nn.Linear(4, 2)
    expected = {
        name: (a.detach() + b.detach()) / 2
        for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True)
    }
    second.send(jon)  # one model lives on a worker: its parameters are shared from there
    one = first.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    two = second.fix_precision().share(bob, alice, crypto_provider=secure_worker)
    average = ((one + two) / 2).get().float_precision()
    for name, value in expected.items():
        # encoding rounds each parameter (half a unit), the division rounds again (< 1 unit)
        assert close(average[name], value, 1.5)
    target = nn.Linear(4, 2)
    ((one + two) / 2).get().load_into(target)
    assert close(target.weight.detach(), expected["weight"], 1.5)


def test_errors_name_the_problem_and_the_fix(bob, alice, secure_worker):
    t = torch.tensor([1, 2])
    with pytest.raises(TooFewShareHoldersError, match="at least 2 distinct workers"):
        t.share(bob)
    with pytest.raises(TooFewShareHoldersError):
        t.share(bob, bob)
    with pytest.raises(SecureTypeError, match=r"x\.fix_prec\(\)\.share"):
        torch.tensor([1.5]).share(bob, alice)
    with pytest.raises(SecureTypeError, match=r"model\.fix_precision"):
        nn.Linear(2, 1).share(bob, alice)
    x = t.share(bob, alice)  # no crypto provider
    with pytest.raises(CryptoProviderMissingError, match="crypto_provider=secure_worker"):
        _ = x * x
    y = t.share(alice, bob, crypto_provider=secure_worker)
    with pytest.raises(SharesNotAlignedError, match="same workers"):
        _ = x + y
    with pytest.raises(sy.NotSupportedError, match="remote_get"):
        t.send(bob).send(alice).share(bob, alice)


def test_split_is_a_csprng_op_of_the_vocabulary():
    from broker import secure_ops
    from broker.ops import ALLOWED, wire_name

    assert ALLOWED["secure.split"] is secure_ops.split
    assert wire_name(secure_ops.random_like) == "secure.random_like"
    secret = torch.tensor([5, -7, 2**62])
    torch.manual_seed(0)
    first = secure_ops.split(secret, 3)
    torch.manual_seed(0)  # torch's generator plays no part: the shares differ
    second = secure_ops.split(secret, 3)
    assert not torch.equal(first[0], second[0])
    assert torch.equal(first[0] + first[1] + first[2], secret)  # sums wrap modulo 2^64
    meta = secure_ops.split(torch.empty(4, 2, dtype=torch.int64, device="meta"), 2)
    assert [(m.shape, m.is_meta) for m in meta] == [(torch.Size([4, 2]), True)] * 2
    with pytest.raises(TypeError, match=r"fix_prec\(\)"):
        secure_ops.split(torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match="2 to 64 shares"):
        secure_ops.split(secret, 1)
