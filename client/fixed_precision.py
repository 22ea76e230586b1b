"""Fixed precision: floats encoded as integers, so they can be secret-shared (PySyft 0.2).

``x.fix_prec()`` (``fix_precision``) multiplies by ``base ** precision_fractional``
(10**3 by default, as in PySyft), rounds, and keeps the result as an int64 tensor:
``torch.tensor([0.1, -1.5]).fix_prec().child`` is ``tensor([100, -1500])``.
``.float_prec()`` (``float_precision``) divides back. The integers live in the ring
of 64-bit integers (torch int64 wraps modulo 2^64), which is what
:mod:`client.sharing` splits into additive shares.

A :class:`FixedPrecisionTensor` wraps one of three children, and every op works on
each: a local int64 tensor, a pointer to one (then every op, the encoding and the
decoding included, is a remote op on that worker, pipelined like any other), or an
:class:`~client.sharing.AdditiveSharingTensor`. Products are rescaled (truncated)
once, as PySyft did: ``a * b`` and ``a @ b`` divide by the scale (rounding to
nearest on plain integers, stochastically on shares), so each costs less than one
unit in the last place.

Unlike PySyft, the wrapper is not a torch tensor: operators (``+ - * @ /``,
``sum``, ``mean``) work on it; ``torch.add(fpt, ...)`` does not. ``.child`` is the
integer tensor itself (PySyft reached it as ``x.child.child``).
"""

from __future__ import annotations

from typing import Any

import torch

from broker.errors import GetRequiredError, PrecisionMismatchError, SecureTypeError

DEFAULT_BASE = 10
DEFAULT_PRECISION = 3


def _is_pointer(value: Any) -> bool:
    from client.pointer import PointerTensor

    return type(value) is PointerTensor


def _is_shared(value: Any) -> bool:
    from client.sharing import AdditiveSharingTensor

    return isinstance(value, AdditiveSharingTensor)


def encode(value: Any, scale: int) -> Any:
    """``round(value * scale)`` as int64: a local tensor, or a remote op on a pointer."""
    return value.detach().double().mul(scale).round().long()


def decode(child: Any, scale: int, dtype: torch.dtype) -> Any:
    """``child / scale`` in ``dtype``: a local tensor, or a remote op on a pointer."""
    return child.double().div(scale).to(dtype)


def truncate(child: Any, divisor: int) -> Any:
    """``child / divisor`` rounded, for a public positive integer ``divisor``, on any child.

    A local or remote tensor rounds half up; shares round stochastically (see
    :meth:`client.sharing.AdditiveSharingTensor.truncate`), off by less than one unit.
    """
    if type(divisor) is not int or divisor <= 0:
        raise SecureTypeError(
            f"division takes a public positive int, not {divisor!r}: multiply by a "
            "fixed-precision encoding of its inverse instead"
        )
    if _is_shared(child):
        return child.truncate(divisor)
    return torch.div(child + divisor // 2, divisor, rounding_mode="floor")


class FixedPrecisionTensor:
    """A float tensor kept as integers scaled by ``base ** precision_fractional``."""

    def __init__(
        self,
        child: Any,
        base: int = DEFAULT_BASE,
        precision_fractional: int = DEFAULT_PRECISION,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if type(base) is not int or base < 2 or type(precision_fractional) is not int:
            raise SecureTypeError(
                f"fix_prec(base={base!r}, precision_fractional={precision_fractional!r}) takes "
                "integers, base at least 2"
            )
        self.child = child
        self.base = base
        self.precision_fractional = precision_fractional
        self.dtype = dtype

    # -- what it is ------------------------------------------------------------------------
    @property
    def scale(self) -> int:
        """The integer one unit (1.0) is encoded as."""
        return int(self.base**self.precision_fractional)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.child.shape)

    def size(self) -> torch.Size:
        return self.shape

    def numel(self) -> int:
        return int(self.shape.numel())

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def location(self) -> Any:
        """The worker of a pointer child (PySyft's ``ptr.fix_prec().location``)."""
        return self.child.location

    def _label(self) -> str:
        return f"base {self.base}, {self.precision_fractional} fractional digits"

    def __repr__(self) -> str:
        return f"FixedPrecisionTensor({self._label()})>{self.child!r}"

    def _wrap(self, child: Any) -> FixedPrecisionTensor:
        return FixedPrecisionTensor(child, self.base, self.precision_fractional, self.dtype)

    # -- moving and decoding -------------------------------------------------------------------
    def float_precision(self) -> Any:
        """Decode: a float tensor (a pointer to one, for a pointer child)."""
        if _is_shared(self.child):
            raise GetRequiredError("float_precision()", repr(self))
        return decode(self.child, self.scale, self.dtype)

    float_prec = float_precision

    def get(self) -> FixedPrecisionTensor:
        """Bring the integers here (reconstructing shares); ``.float_prec()`` decodes them."""
        if isinstance(self.child, torch.Tensor) and not _is_pointer(self.child):
            return self
        return self._wrap(self.child.get())

    def send(self, *workers: Any) -> FixedPrecisionTensor:
        """Send the integers (a local child) to a worker; returns the wrapper of the pointer."""
        return self._wrap(self.child.send(*workers))

    def share(
        self, *workers: Any, crypto_provider: Any = None, **options: Any
    ) -> FixedPrecisionTensor:
        """Split the integers into additive shares held by ``workers`` (see client.sharing)."""
        from client.sharing import share

        return self._wrap(share(self.child, workers, crypto_provider, options))

    def fix_precision(self, *args: Any, **kwargs: Any) -> FixedPrecisionTensor:
        raise SecureTypeError(f"{self!r} is already fixed precision")

    fix_prec = fix_precision

    # -- arithmetic ---------------------------------------------------------------------------
    def _other(self, op: str, other: Any) -> tuple[Any, bool]:
        """``other``'s child in this scale, and whether it is scaled (False: a plain int)."""
        if isinstance(other, FixedPrecisionTensor):
            if (other.base, other.precision_fractional) != (self.base, self.precision_fractional):
                raise PrecisionMismatchError(op, self._label(), other._label())
            return other.child, True
        if type(other) is int:
            return other, False
        if type(other) is float:
            return round(other * self.scale), True
        if isinstance(other, torch.Tensor) and not _is_pointer(other):
            if other.is_floating_point():
                return encode(other, self.scale), True
            return other.long(), False
        raise SecureTypeError(
            f"{op} on {self!r} takes fixed-precision tensors, local tensors or numbers, not "
            f"{type(other).__name__}"
        )

    def __add__(self, other: Any) -> FixedPrecisionTensor:
        child, scaled = self._other("+", other)
        return self._wrap(self.child + (child if scaled else _scale_int(child, self.scale)))

    __radd__ = __add__

    def __sub__(self, other: Any) -> FixedPrecisionTensor:
        child, scaled = self._other("-", other)
        return self._wrap(self.child - (child if scaled else _scale_int(child, self.scale)))

    def __rsub__(self, other: Any) -> FixedPrecisionTensor:
        return (-self) + other

    def __neg__(self) -> FixedPrecisionTensor:
        return self._wrap(-self.child)

    def __mul__(self, other: Any) -> FixedPrecisionTensor:
        child, scaled = self._other("*", other)
        product = _commuted_mul(self.child, child)
        return self._wrap(truncate(product, self.scale) if scaled else product)

    __rmul__ = __mul__

    def __matmul__(self, other: Any) -> FixedPrecisionTensor:
        child, scaled = self._other("@", other)
        if not scaled:
            raise SecureTypeError("@ takes a tensor, not an integer")
        return self._wrap(truncate(self.child @ child, self.scale))

    def __truediv__(self, other: Any) -> FixedPrecisionTensor:
        return self._wrap(truncate(self.child, other))

    div = __truediv__

    add = __add__
    sub = __sub__
    mul = __mul__
    matmul = mm = __matmul__

    def sum(self, *args: Any, **kwargs: Any) -> FixedPrecisionTensor:
        """The sum of the encoded values (no rescaling needed)."""
        return self._wrap(self.child.sum(*args, **kwargs))

    def mean(self) -> FixedPrecisionTensor:
        """The mean of every element: the sum divided by their (public) count."""
        return self.sum() / max(self.numel(), 1)


def _scale_int(value: Any, scale: int) -> Any:
    return value * scale


def _commuted_mul(child: Any, other: Any) -> Any:
    """``child * other``, with a shared tensor on the left whatever the order."""
    if _is_shared(other) and not _is_shared(child):
        return other * child
    return child * other


def fix_precision(
    tensor: torch.Tensor,
    base: int = DEFAULT_BASE,
    precision_fractional: int = DEFAULT_PRECISION,
    **options: Any,
) -> FixedPrecisionTensor:
    """``x.fix_prec()``: ``x`` (local or a pointer) as integers scaled by base**precision."""
    from client.unsupported import check_options

    check_options("x.fix_precision", options, FIX_PRECISION_OPTIONS)
    wrapper = FixedPrecisionTensor(torch.empty(0), base, precision_fractional)
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    wrapper.dtype = dtype
    wrapper.child = encode(tensor, wrapper.scale)
    return wrapper


def not_fixed_precision(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``x.float_prec()`` on a tensor that was never encoded."""
    raise SecureTypeError(
        f"float_prec() decodes a fixed-precision tensor, but this is a plain {tensor.dtype} "
        "tensor (or a pointer to one)"
    )


#: PySyft's fix_precision options -> (default, what instead)
FIX_PRECISION_OPTIONS: dict[str, tuple[Any, str]] = {
    "no_wrap": (False, "A FixedPrecisionTensor is its own wrapper: read .child for the integers."),
    "dtype": ("long", "The integers are always int64: the ring of 64-bit integers."),
}
