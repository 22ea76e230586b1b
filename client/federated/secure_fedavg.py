"""FedAvg with secure aggregation: no single party sees any owner's update.

Plain :class:`~client.federated.fedavg.FedAvg` trusts its aggregator: the trained
copies move there and it sees each of them. :class:`SecureFedAvg` replaces that
step with additive secret sharing among the data owners themselves
(client/sharing.py):

1. on each owner's own worker, its trained parameters are flattened, scaled by its
   public weight (its share of the samples), encoded in fixed precision, and split
   into one additive share per owner (``secure.split``, CSPRNG);
2. the shares move to the other owners worker to worker (ordinary ``move``
   transfers): the client never holds one, and an owner only ever receives
   uniformly random values from the others;
3. each owner adds the shares it holds, one from every owner: its share of the
   weighted sum, which *is* the average because the weights sum to one;
4. the client fetches those summed shares and adds them: it reconstructs the
   average, and only the average.

No crypto provider is needed: aggregation only adds shares and multiplies by
public weights (each owner applies its own weight before sharing, in plain text on
its own data). The threat model and what is not protected are in the README's
"Secure aggregation" section.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from client.federated.fedavg import FedAvg, LocalTraining
from client.fixed_precision import DEFAULT_BASE, FixedPrecisionTensor, fix_precision
from client.sharing import _check_holders

#: fractional digits of the encoded updates: rounding costs at most 5e-7 per owner
SECURE_PRECISION = 6


def flat_update(model: nn.Module, weight: float) -> Any:
    """``weight`` times the model's parameters as one flat tensor (a pointer, on its owner)."""
    with torch.no_grad():
        flat = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
        return flat * weight


def share_updates(
    updates: Sequence[Any],
    owners: Sequence[Any],
    base: int = DEFAULT_BASE,
    precision_fractional: int = SECURE_PRECISION,
) -> list[FixedPrecisionTensor]:
    """Each update (a pointer on its owner) encoded and split among ``owners``, on its owner.

    The split runs on the update's own worker and each share moves from there to its
    holder: a share never passes through the client.
    """
    holders = _check_holders(owners)
    return [
        fix_precision(update, base=base, precision_fractional=precision_fractional).share(*holders)
        for update in updates
    ]


def secure_sum(shared: Sequence[FixedPrecisionTensor]) -> FixedPrecisionTensor:
    """The sum of shared tensors: each holder adds the shares it holds, nothing is revealed."""
    total = shared[0]
    for item in shared[1:]:
        total = total + item
    return total


def secure_aggregate(
    copies: Sequence[nn.Module],
    weights: Sequence[float],
    base: int = DEFAULT_BASE,
    precision_fractional: int = SECURE_PRECISION,
) -> list[torch.Tensor]:
    """The weighted average of ``copies`` (each on its own owner), by additive sharing.

    Returns each parameter's average, in ``parameters()`` order, as local tensors.
    """
    if len(weights) != len(copies):
        raise ValueError(f"{len(weights)} weights for {len(copies)} models")
    owners = [cast(Any, next(iter(copy.parameters()))).location for copy in copies]
    shapes = [param.shape for param in copies[0].parameters()]
    updates = [flat_update(copy, weight) for copy, weight in zip(copies, weights, strict=True)]
    shared = share_updates(updates, owners, base, precision_fractional)
    del updates
    total = secure_sum(shared)
    del shared  # each owner's individual shares are deleted; only the sums remain
    flat = cast(torch.Tensor, total.get().float_precision())
    return [
        part.reshape(shape)
        for part, shape in zip(flat.split([shape.numel() for shape in shapes]), shapes, strict=True)
    ]


class SecureFedAvg(FedAvg):
    """FedAvg whose average is computed by additive sharing among the data owners.

    It needs at least two owners (TooFewShareHoldersError otherwise) and no aggregator.
    """

    def __init__(
        self,
        training: LocalTraining | None = None,
        generator: torch.Generator | None = None,
        weighted: bool = True,
        precision_fractional: int = SECURE_PRECISION,
    ) -> None:
        super().__init__(None, training, generator, weighted)
        self.precision_fractional = precision_fractional

    def aggregate(
        self, copies: Sequence[nn.Module], weights: Sequence[float]
    ) -> tuple[float, list[torch.Tensor]]:
        """Wait for every owner's training, then average by secure aggregation."""
        for local_copy in copies:  # a round trip to each owner: its training is done
            cast(Any, next(iter(local_copy.parameters()))).location.object_count()
        fitted = time.perf_counter()
        return fitted, secure_aggregate(
            copies, weights, precision_fractional=self.precision_fractional
        )
