"""What a worker agrees to run: allowlisted torch callables, looked up by wire name only."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.errors import ForbiddenOperationError
from broker.ops import ALLOWED


class Allowlist:
    """Resolves wire names to callables; anything not listed is refused by name."""

    def __init__(self, allowed: Mapping[str, Callable[..., Any]] = ALLOWED) -> None:
        self._allowed = dict(allowed)

    @property
    def table(self) -> Mapping[str, Callable[..., Any]]:
        """Name -> callable, for the engine's hot path (read only)."""
        return self._allowed

    def resolve(self, name: str, worker_id: str) -> Callable[..., Any]:
        """The callable for ``name``; ForbiddenOperationError if it is not listed."""
        try:
            return self._allowed[name]
        except (KeyError, TypeError):
            raise ForbiddenOperationError(str(name), worker_id) from None


DEFAULT_ALLOWLIST = Allowlist()
