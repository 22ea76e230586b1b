"""TorchHook: the one place TensorFleet attaches methods to torch classes.

PySyft 0.2 monkeypatched every torch function. TensorFleet intercepts through
``__torch_function__`` on its pointer type instead, and attaches only this
short, listed set: ``Tensor.send``, ``Tensor.tag`` and ``Tensor.describe``
(client/hosted.py), the ``nn.Module`` methods ``send``/``get``/
``copy``/``move``, and ``Dataset.federate``. Hooking twice changes nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from client import hosted
from client import pointer as pointer_module
from client.workers import VirtualWorker, local_worker

_installed = False


def _tensor_send(self: torch.Tensor, *locations: Any, **options: Any) -> Any:
    """``x.send(bob)``: bob keeps a copy; returns a pointer. ``x.send(bob, alice)``: one each."""
    from client.remote import send_tensor

    return send_tensor(self, locations)


def _install() -> None:
    global _installed
    if _installed:
        return
    from client import module as module_methods

    torch.Tensor.send = _tensor_send  # type: ignore[attr-defined]
    torch.Tensor.tag = hosted.tag  # type: ignore[attr-defined]
    torch.Tensor.describe = hosted.describe  # type: ignore[attr-defined]
    for name in ("send", "get", "copy", "move"):
        setattr(torch.nn.Module, name, getattr(module_methods, f"module_{name}"))
    try:
        from client.federated.dataset import federate
    except ImportError:  # pragma: no cover - the federated package is optional in a slim install
        pass
    else:
        torch.utils.data.Dataset.federate = federate  # type: ignore[attr-defined]
    _installed = True


class TorchHook:
    """``hook = sy.TorchHook(torch)``: makes tensors and modules sendable; idempotent."""

    def __init__(
        self,
        torch_module: Any = torch,
        local_worker_: VirtualWorker | None = None,
        is_client: bool = True,
        verbose: bool = False,
    ) -> None:
        if torch_module is not torch:
            raise TypeError("TorchHook hooks the torch module: sy.TorchHook(torch)")
        _install()
        self.torch = torch_module
        self.local_worker = local_worker_ if local_worker_ is not None else local_worker()
        pointer_module.DEFAULT_OWNER = self.local_worker
        package = sys.modules.get("client")
        if package is not None:
            package.local_worker = self.local_worker  # type: ignore[attr-defined]
