"""``model.fix_precision().share(bob, alice, crypto_provider=...)`` for a model's parameters.

PySyft 0.2 converted each parameter in place. A torch module can only hold real
tensors, so TensorFleet leaves the model untouched and returns a
:class:`FixedPrecisionParameters`: the parameters by name, each a
:class:`~client.fixed_precision.FixedPrecisionTensor` (of local tensors, of
pointers when the model was sent, or of shares once ``.share(...)`` is called).
That is what secure aggregation needs: add the shared parameters of several
models, divide by a public count, ``.get()``, ``.float_precision()``, and
``.load_into(model)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from broker.errors import SecureTypeError
from client.fixed_precision import DEFAULT_BASE, DEFAULT_PRECISION, FixedPrecisionTensor


class FixedPrecisionParameters:
    """A model's parameters in fixed precision, by name; arithmetic applies to each."""

    def __init__(self, parameters: dict[str, FixedPrecisionTensor]) -> None:
        self._parameters = parameters

    def __getitem__(self, name: str) -> FixedPrecisionTensor:
        return self._parameters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parameters)

    def __len__(self) -> int:
        return len(self._parameters)

    def keys(self) -> list[str]:
        return list(self._parameters)

    def items(self) -> list[tuple[str, FixedPrecisionTensor]]:
        return list(self._parameters.items())

    def __repr__(self) -> str:
        return f"FixedPrecisionParameters({list(self._parameters)})"

    def _map(self, func: Callable[[FixedPrecisionTensor], Any]) -> FixedPrecisionParameters:
        return FixedPrecisionParameters({k: func(v) for k, v in self._parameters.items()})

    def _zip(
        self, other: FixedPrecisionParameters, func: Callable[[Any, Any], Any]
    ) -> FixedPrecisionParameters:
        if list(other) != list(self):
            raise SecureTypeError(
                f"the models have different parameters ({list(self)} and {list(other)})"
            )
        return FixedPrecisionParameters({k: func(v, other[k]) for k, v in self.items()})

    def share(self, *workers: Any, crypto_provider: Any = None) -> FixedPrecisionParameters:
        """Each parameter split into additive shares among ``workers``."""
        return self._map(lambda p: p.share(*workers, crypto_provider=crypto_provider))

    def get(self) -> FixedPrecisionParameters:
        """Each parameter's integers brought here (reconstructed from shares)."""
        return self._map(lambda p: p.get())

    def float_precision(self) -> dict[str, torch.Tensor]:
        """The decoded parameters, by name."""
        return {name: p.float_precision() for name, p in self.items()}

    float_prec = float_precision

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy the decoded values into ``model``'s (local) parameters; returns it."""
        values = self.float_precision()
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(values[name])
        return model

    def __add__(self, other: Any) -> FixedPrecisionParameters:
        if isinstance(other, FixedPrecisionParameters):
            return self._zip(other, lambda a, b: a + b)
        return self._map(lambda p: p + other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> FixedPrecisionParameters:
        if isinstance(other, FixedPrecisionParameters):
            return self._zip(other, lambda a, b: a - b)
        return self._map(lambda p: p - other)

    def __mul__(self, other: Any) -> FixedPrecisionParameters:
        return self._map(lambda p: p * other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> FixedPrecisionParameters:
        return self._map(lambda p: p / other)


def module_fix_precision(
    self: nn.Module,
    base: int = DEFAULT_BASE,
    precision_fractional: int = DEFAULT_PRECISION,
) -> FixedPrecisionParameters:
    """``model.fix_precision()``: the parameters (local or pointers) in fixed precision."""
    from client.fixed_precision import fix_precision

    return FixedPrecisionParameters(
        {
            name: fix_precision(param, base=base, precision_fractional=precision_fractional)
            for name, param in self.named_parameters()
        }
    )


def module_share(self: nn.Module, *workers: Any, **options: Any) -> FixedPrecisionParameters:
    """``model.share(...)``: PySyft shared integer parameters; floats need fix_precision first."""
    raise SecureTypeError(
        "model.share() would split float parameters; call model.fix_precision().share(...)"
    )
