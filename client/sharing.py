"""Additive secret sharing over the ring of 64-bit integers (PySyft 0.2's ``x.share(...)``).

``x.share(bob, alice, crypto_provider=secure_worker)`` splits an int64 tensor ``x``
into shares ``s_bob + s_alice = x (mod 2^64)``, one per holder, each alone
uniformly random (drawn from the operating system's CSPRNG, broker/secure_ops.py).
torch's int64 arithmetic wraps modulo 2^64, so a share is an ordinary int64 tensor
on its holder and the protocol is made of ordinary pointer ops:

* ``+``/``-`` of shared tensors: each holder adds its shares; a public value is
  added by the first holder only; ``*`` by a public value: each holder multiplies.
* ``*`` and ``@`` of two shared tensors: a Beaver triple ``c = a * b`` (or ``a @ b``)
  made by the crypto provider, split there and moved to the holders worker to
  worker; the masked differences ``x - a`` and ``y - b`` are opened among the
  holders (each sends a copy of its share to the others, worker to worker), and
  each holder computes its share of ``c + e*b + a*d + e*d``.
* ``/`` by a public integer (truncation): with two holders each divides its own
  share, rounding down, after the first added the divisor (SecureML's local
  truncation; the two floors make it stochastic rounding, unbiased and off by less
  than one unit; it is wrong with probability about ``|x| / 2^63`` per element,
  when the two shares overflow); with more holders, the shares of all but the
  first are first summed on the second holder, and its result split again.
* ``.get()`` fetches every share and adds them: the reconstruction.

Sharing a pointer splits the tensor on its own worker (``secure.split``) and the
shares *move* to their holders: they never pass through the client. Shares are
ordinary objects, owned by the principal who made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from broker import secure_ops
from broker.errors import (
    CryptoProviderMissingError,
    NotSupportedError,
    SecureTypeError,
    SharesNotAlignedError,
    TooFewShareHoldersError,
)
from client import pointer as pointer_module
from client.pointer import PointerTensor

#: PySyft's share options -> (default, what instead)
SHARE_OPTIONS: dict[str, tuple[Any, str]] = {
    "field": (None, "Shares live in the ring of 64-bit integers (int64 wraps modulo 2^64)."),
    "dtype": ("long", "Shares are int64: the ring of 64-bit integers."),
    "requires_grad": (False, "Shared tensors carry no autograd: train in plain text first."),
    "no_wrap": (False, "An AdditiveSharingTensor is its own wrapper: .child holds the shares."),
}


def _remote(func: Any, *args: Any) -> Any:
    """Run an op of the vocabulary on the worker of its pointer argument (pipelined)."""
    return pointer_module._remote_call(func, args, {})


def _move(share: Any, holder: Any) -> Any:
    from client.remote import move_pointer

    return move_pointer(share, holder)


def _check_holders(workers: Sequence[Any]) -> list[Any]:
    from client.workers import BaseWorker

    for worker in workers:
        if not isinstance(worker, BaseWorker):
            raise SecureTypeError(
                f"share() takes workers (sy.VirtualWorker or sy.FleetWorker), not "
                f"{type(worker).__name__}"
            )
    distinct = list({worker.id: worker for worker in workers}.values())
    if len(distinct) < 2:
        raise TooFewShareHoldersError(len(distinct))
    return distinct


def share(
    value: Any, workers: Sequence[Any], crypto_provider: Any, options: dict[str, Any]
) -> AdditiveSharingTensor:
    """Additive shares of ``value`` (a local int64 tensor or a pointer to one) on ``workers``."""
    from client.unsupported import check_options

    check_options("x.share", options, SHARE_OPTIONS)
    holders = _check_holders(workers)
    if isinstance(value, AdditiveSharingTensor):
        raise SecureTypeError(f"{value!r} is already shared")
    if not isinstance(value, torch.Tensor):
        raise SecureTypeError(f"share() takes a tensor, not {type(value).__name__}")
    if value.is_floating_point():
        raise SecureTypeError(
            f"share() splits integers, and this tensor is {value.dtype}: call "
            "x.fix_prec().share(...) to share floats"
        )
    if type(value) is PointerTensor:
        shares = _share_pointer(value, holders)
    else:
        parts = secure_ops.split(value.detach().long(), len(holders))
        shares = {h.id: cast(Any, part).send(h) for h, part in zip(holders, parts, strict=True)}
    return AdditiveSharingTensor(shares, holders, crypto_provider)


def _share_pointer(value: PointerTensor, holders: list[Any]) -> dict[str, PointerTensor]:
    """Split on the data's worker, then move each share to its holder, worker to worker."""
    pointer = value.child
    if pointer.route is not None or pointer.point_to_attr is not None:
        raise NotSupportedError(
            f"share() of {pointer!r} (a pointer to a pointer or to an attribute)",
            "Call .remote_get() (or .clone() the attribute) first, so the data's own worker "
            "splits it.",
        )
    source = value if value.dtype == torch.int64 else value.long()
    parts = _remote(secure_ops.split, source, len(holders))
    return {h.id: _move(part, h) for h, part in zip(holders, parts, strict=True)}


def _open(shared: AdditiveSharingTensor) -> dict[str, Any]:
    """Reveal a *masked* shared value to every holder: holder id -> pointer to it there.

    Each holder sends a copy of its share to every other holder (worker to worker) and
    adds what it received. Used only for Beaver's masked differences, which are
    uniformly random to anyone who does not know the triple.
    """
    opened: dict[str, Any] = {}
    for holder in shared.holders:
        total = shared.child[holder.id]
        for other in shared.holders:
            if other is not holder:
                total = total + _move(shared.child[other.id].clone(), holder)
        opened[holder.id] = total
    return opened


def _triple(
    provider: Any, x: AdditiveSharingTensor, y: AdditiveSharingTensor, kind: str
) -> tuple[AdditiveSharingTensor, AdditiveSharingTensor, AdditiveSharingTensor]:
    """A Beaver triple made and split by ``provider``, its shares moved to the holders."""
    from client.factories import make_remote

    count = len(x.holders)
    template_a = make_remote(provider, "zeros", (tuple(x.shape),), {"dtype": torch.int64})
    template_b = make_remote(provider, "zeros", (tuple(y.shape),), {"dtype": torch.int64})
    a = _remote(secure_ops.random_like, template_a)
    b = _remote(secure_ops.random_like, template_b)
    c = a * b if kind == "mul" else a @ b
    triple = []
    for value in (a, b, c):
        parts = _remote(secure_ops.split, value, count)
        moved = {h.id: _move(part, h) for h, part in zip(x.holders, parts, strict=True)}
        triple.append(AdditiveSharingTensor(moved, x.holders, provider))
    return triple[0], triple[1], triple[2]


class AdditiveSharingTensor:
    """A tensor split into additive shares, one per holder (PySyft's ``.child`` of shares)."""

    def __init__(
        self, shares: dict[str, PointerTensor], holders: Sequence[Any], crypto_provider: Any
    ) -> None:
        #: holder id -> pointer to that holder's share (PySyft's ``x.child.child``)
        self.child = shares
        self.holders = list(holders)
        self.crypto_provider = crypto_provider

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.child[self.holders[0].id].shape)

    @property
    def locations(self) -> list[Any]:
        return list(self.holders)

    def __repr__(self) -> str:
        inner = ", ".join(f"{key}: {value!r}" for key, value in self.child.items())
        return f"[AdditiveSharingTensor {{{inner}}}]"

    def _wrap(self, shares: dict[str, Any]) -> AdditiveSharingTensor:
        return AdditiveSharingTensor(shares, self.holders, self.crypto_provider)

    def _map(self, func: Any) -> AdditiveSharingTensor:
        return self._wrap({key: func(value) for key, value in self.child.items()})

    def _aligned(self, op: str, other: AdditiveSharingTensor) -> None:
        mine = [h.id for h in self.holders]
        theirs = [h.id for h in other.holders]
        if mine != theirs:
            raise SharesNotAlignedError(op, ", ".join(mine), ", ".join(theirs))

    def _public(self, value: Any, holder: Any) -> Any:
        """A public value where ``holder`` can use it: a number as is, a tensor sent there."""
        if type(value) is int:
            return value
        if isinstance(value, torch.Tensor) and type(value) is not PointerTensor:
            if value.is_floating_point():
                raise SecureTypeError(
                    f"a shared tensor mixes with integers, not {value.dtype}: encode floats "
                    "with .fix_prec() first"
                )
            return cast(Any, value.long()).send(holder)
        raise SecureTypeError(
            f"a shared tensor takes shared tensors, ints or local int tensors, not "
            f"{type(value).__name__}"
        )

    # -- reconstruction ------------------------------------------------------------------------
    def get(self) -> torch.Tensor:
        """Fetch every share and add them (modulo 2^64); the holders forget their shares."""
        total: torch.Tensor | None = None
        for holder in self.holders:
            part = self.child[holder.id].get()
            total = part if total is None else total + part
        assert total is not None
        return total

    # -- linear ops: each holder on its own share -----------------------------------------------
    def __add__(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            self._aligned("+", other)
            return self._wrap({k: v + other.child[k] for k, v in self.child.items()})
        first = self.holders[0]
        # the other holders copy their shares: the result owns its shares, so that its
        # .get() (which deletes them) leaves this tensor whole
        shares = {key: share.clone() for key, share in self.child.items()}
        shares[first.id] = self.child[first.id] + self._public(other, first)
        return self._wrap(shares)

    __radd__ = __add__

    def __neg__(self) -> AdditiveSharingTensor:
        return self._map(lambda share: -share)

    def __sub__(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            self._aligned("-", other)
            return self._wrap({k: v - other.child[k] for k, v in self.child.items()})
        return self + (-other)

    def __rsub__(self, other: Any) -> AdditiveSharingTensor:
        return (-self) + other

    def __mul__(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            return self._beaver("*", other, "mul")
        return self._wrap({h.id: self.child[h.id] * self._public(other, h) for h in self.holders})

    __rmul__ = __mul__

    def __matmul__(self, other: Any) -> AdditiveSharingTensor:
        if isinstance(other, AdditiveSharingTensor):
            return self._beaver("@", other, "matmul")
        return self._wrap({h.id: self.child[h.id] @ self._public(other, h) for h in self.holders})

    def _beaver(self, op: str, other: AdditiveSharingTensor, kind: str) -> AdditiveSharingTensor:
        self._aligned(op, other)
        provider = self.crypto_provider or other.crypto_provider
        if provider is None:
            raise CryptoProviderMissingError(op)
        a, b, c = _triple(provider, self, other, kind)
        eps = _open(self - a)
        delta = _open(other - b)

        def apply(left: Any, right: Any) -> Any:
            return left * right if kind == "mul" else left @ right

        first = self.holders[0].id
        shares = {}
        for holder in self.holders:
            key = holder.id
            share = c.child[key] + apply(eps[key], b.child[key]) + apply(a.child[key], delta[key])
            if key == first:  # the public e*d term, added once
                share = share + apply(eps[key], delta[key])
            shares[key] = share
        return self._wrap(shares)

    def sum(self, *args: Any, **kwargs: Any) -> AdditiveSharingTensor:
        return self._map(lambda share: share.sum(*args, **kwargs))

    def truncate(self, divisor: int) -> AdditiveSharingTensor:
        """Shares of ``x / divisor`` (stochastically rounded), for a public positive integer.

        ``floor(s0 / d) + floor(s1 / d)`` is ``floor(x / d)`` or one less, depending on the
        shares' remainders, which are uniformly random; adding ``d`` to the first share
        makes the expected result exactly ``x / d``.
        """
        if type(divisor) is not int or divisor <= 0:
            raise SecureTypeError(f"division takes a public positive int, not {divisor!r}")
        first, second, *rest = self.holders
        if not rest:
            return self._wrap(
                {
                    first.id: torch.div(
                        self.child[first.id] + divisor, divisor, rounding_mode="floor"
                    ),
                    second.id: torch.div(self.child[second.id], divisor, rounding_mode="floor"),
                }
            )
        # more than two holders: the others' shares join the second's, which alone is still
        # uniformly random to it (the first holder's share is missing); truncate the two-party
        # sharing; then the second splits its result again among the others
        joined: Any = self.child[second.id]
        for holder in rest:
            joined = joined + _move(self.child[holder.id].clone(), second)
        low = torch.div(self.child[first.id] + divisor, divisor, rounding_mode="floor")
        high = torch.div(joined, divisor, rounding_mode="floor")
        parts = _remote(secure_ops.split, high, len(self.holders) - 1)
        shares = {first.id: low}
        for holder, part in zip([second, *rest], parts, strict=True):
            shares[holder.id] = _move(part, holder)
        return self._wrap(shares)

    def __truediv__(self, other: Any) -> AdditiveSharingTensor:
        return self.truncate(other)

    div = __truediv__

    def mean(self) -> AdditiveSharingTensor:
        return self.sum() / max(int(self.shape.numel()), 1)

    add = __add__
    sub = __sub__
    mul = __mul__
    matmul = mm = __matmul__
