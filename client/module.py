"""``nn.Module.send/get/copy/move``: models travel to the data, in place.

Filled in by the federated-training work; until then the methods exist so the hook
can attach them, and say clearly that they are not there yet.
"""

from __future__ import annotations

from typing import Any


def module_send(self: Any, *locations: Any) -> Any:
    raise NotImplementedError("nn.Module.send is not implemented yet")


def module_get(self: Any) -> Any:
    raise NotImplementedError("nn.Module.get is not implemented yet")


def module_copy(self: Any) -> Any:
    raise NotImplementedError("nn.Module.copy is not implemented yet")


def module_move(self: Any, destination: Any) -> Any:
    raise NotImplementedError("nn.Module.move is not implemented yet")
