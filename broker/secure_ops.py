"""Worker-side ops of secure aggregation: CSPRNG randomness and additive splitting.

Additive secret sharing (client/sharing.py) works over the ring of 64-bit
integers: ``torch.int64`` arithmetic wraps around modulo 2^64, so a share is an
ordinary int64 tensor and ``+``, ``-``, ``*`` and matmul on shares are the
ordinary allowlisted torch ops. Two things torch does not offer are here:

* :func:`random_like`: uniformly random int64 values from the operating system's
  CSPRNG (``os.urandom``), because ``torch.randint`` is a Mersenne twister whose
  state can be recovered from its outputs, and a share drawn from it would not be
  uniformly random to someone who saw earlier ones;
* :func:`split`: ``n`` additive shares of an int64 tensor, made where the tensor
  lives (a data owner splits its own update, the crypto provider its triples).

Both are pure torch functions with no transport. They are named in the op
vocabulary (:data:`SECURE_OPS`, merged into :data:`broker.ops.ALLOWED`) so a
worker runs them through its allowlist, its limits and its ownership rules like
any other op. On meta tensors they only describe their results, so the client
and the worker's limits infer shapes without drawing randomness.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy
import torch

#: Most shares one split may make (a share per holder; a fleet has far fewer workers).
MAX_SHARES = 64


def _random_int64(shape: torch.Size) -> torch.Tensor:
    count = 1
    for size in shape:
        count *= size
    values = numpy.frombuffer(os.urandom(8 * count), dtype=numpy.int64).copy()
    return torch.from_numpy(values).reshape(shape)


def random_like(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of ``tensor``'s shape, int64, uniformly random over the ring (CSPRNG)."""
    if tensor.is_meta:
        return torch.empty(tensor.shape, dtype=torch.int64, device="meta")
    return _random_int64(tensor.shape)


def _check_ring(tensor: torch.Tensor, what: str) -> None:
    if tensor.dtype != torch.int64:
        raise TypeError(
            f"{what} takes an int64 tensor (the ring of 64-bit integers), not {tensor.dtype}: "
            "encode floats with .fix_prec() first"
        )


def split(tensor: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` int64 tensors that sum to ``tensor`` modulo 2^64.

    The first ``count - 1`` are uniformly random (CSPRNG); the last is ``tensor``
    minus their sum, so any ``count - 1`` of them are independent of ``tensor``.
    """
    _check_ring(tensor, "secure.split")
    if type(count) is not int or not 2 <= count <= MAX_SHARES:
        raise ValueError(f"secure.split makes 2 to {MAX_SHARES} shares, not {count!r}")
    if tensor.is_meta:
        return tuple(
            torch.empty(tensor.shape, dtype=torch.int64, device="meta") for _ in range(count)
        )
    shares = [_random_int64(tensor.shape) for _ in range(count - 1)]
    last = tensor.detach().clone()
    for share in shares:
        last -= share  # int64 arithmetic wraps: this is subtraction modulo 2^64
    return (*shares, last)


#: wire name -> callable, merged into the default allowlist (broker.ops.ALLOWED)
SECURE_OPS: dict[str, Callable[..., Any]] = {
    "secure.random_like": random_like,
    "secure.split": split,
}
