"""The shape cache's key: the client's hot path and :meth:`ShapeCache.key` build the same one.

The pipelined-op hot path (``client.pointer._fast_call``) builds its cache key in the
same pass as the wire arguments, each part from :func:`broker.meta.arg_key`; every other
call goes through :meth:`broker.meta.ShapeCache.key`, which uses the same function. If
the two ever disagreed, the hot path would miss the cache for good and every pipelined
op would pay the slow path. Here each hot-path lookup is recorded and compared with the
key ``ShapeCache.key`` gives.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from broker.meta import ShapeCache
from client import pointer as pointer_module


@pytest.mark.parametrize(
    "other", ["pointer", 2, 0.5, True], ids=["pointer", "int", "float", "bool"]
)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_the_hot_paths_key_is_shape_caches_key(
    bob: Any, other: Any, grad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = torch.ones(3, 2).send(bob)
    b = torch.ones(3, 2).send(bob) if other == "pointer" else other
    looked_up: list[tuple[tuple[Any, ...], bool]] = []
    cache = pointer_module.SHAPES
    real_cached = cache.cached

    def recording_cached(key: tuple[Any, ...]) -> Any:
        found = real_cached(key)
        looked_up.append((key, found is not None))
        return found

    monkeypatch.setattr(cache, "cached", recording_cached)
    with torch.set_grad_enabled(grad):
        first = a + b  # may take the slow path, which fills the cache
        second = a + b  # the hot path: must find what the slow path cached
    assert looked_up, "the hot path looked nothing up"
    key, found = looked_up[-1]
    func = key[0]  # the torch function __torch_function__ was handed (Tensor.add)
    assert key == ShapeCache.key(func, grad, (a, b), {}, pointer_module._pointer_meta)
    assert found
    assert first.shape == second.shape == torch.Size([3, 2])
