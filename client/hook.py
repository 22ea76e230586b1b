"""TorchHook: the one place TensorFleet attaches methods to torch classes.

PySyft 0.2 monkeypatched every torch function. TensorFleet intercepts through
``__torch_function__`` on its pointer type instead, and attaches only this
short, listed set: ``Tensor.send``/``send_``/``copy``/``allowed_to_get``, ``Tensor.tag`` and
``Tensor.describe`` (client/hosted.py), the ``nn.Module`` methods
``send``/``get``/``copy``/``move``, ``Dataset.federate``, fixed precision and
sharing (``fix_prec``/``float_prec``/``share``, client/sharing.py), and stubs for PySyft's
methods TensorFleet lacks (:mod:`client.unsupported`). Hooking twice changes nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from client import hosted, unsupported
from client import pointer as pointer_module
from client.unsupported import HOOK_OPTIONS, check_options
from client.workers import VirtualWorker, local_worker

_installed = False


def _tensor_send(self: torch.Tensor, *locations: Any, **options: Any) -> Any:
    """``x.send(bob)``: bob keeps a copy; returns a pointer. ``x.send(bob, alice)``: one each."""
    from client.remote import SEND_OPTIONS, send_tensor

    check_options("x.send", options, SEND_OPTIONS)

    return send_tensor(self, locations)


def _tensor_send_(self: torch.Tensor, *locations: Any, **options: Any) -> Any:
    """``x.send_(bob)``: x itself becomes the pointer (same Python object); returns x."""
    from client.remote import send_in_place

    check_options("x.send_", options, {})
    return send_in_place(self, locations)


def _tensor_copy(self: torch.Tensor) -> torch.Tensor:
    """``x.copy()``: a copy of a local tensor (a pointer's ``copy()`` copies on its worker)."""
    return self.clone()


def _tensor_allowed_to_get(self: torch.Tensor) -> bool:
    """``t.allowed_to_get()``: a local tensor is yours (a pointer asks its worker)."""
    return True


def _tensor_share(
    self: torch.Tensor, *workers: Any, crypto_provider: Any = None, **options: Any
) -> Any:
    """``x.share(bob, alice, crypto_provider=secure_worker)``: additive shares of an int tensor."""
    from client.sharing import share

    return share(self, workers, crypto_provider, options)


def _install() -> None:
    global _installed
    if _installed:
        return
    from client import module as module_methods

    torch.Tensor.send = _tensor_send  # type: ignore[attr-defined]
    torch.Tensor.tag = hosted.tag  # type: ignore[attr-defined]
    torch.Tensor.describe = hosted.describe  # type: ignore[attr-defined]
    torch.Tensor.send_ = _tensor_send_  # type: ignore[attr-defined]
    torch.Tensor.copy = _tensor_copy  # type: ignore[attr-defined]
    torch.Tensor.allowed_to_get = _tensor_allowed_to_get  # type: ignore[attr-defined]
    _install_secure()
    unsupported.install(torch.Tensor, torch.nn.Module)  # PySyft's methods we lack: clear errors
    for name in ("send", "get", "copy", "move"):
        setattr(torch.nn.Module, name, getattr(module_methods, f"module_{name}"))
    try:
        from client.federated.dataset import federate
    except ImportError:  # pragma: no cover - the federated package is optional in a slim install
        pass
    else:
        torch.utils.data.Dataset.federate = federate  # type: ignore[attr-defined]
    _installed = True


def _install_secure() -> None:
    """Fixed precision and additive sharing (client/fixed_precision.py, client/sharing.py)."""
    from client import fixed_precision, secure_module

    for name in ("fix_precision", "fix_prec"):
        setattr(torch.Tensor, name, fixed_precision.fix_precision)
        setattr(torch.nn.Module, name, secure_module.module_fix_precision)
    for name in ("float_precision", "float_prec"):
        setattr(torch.Tensor, name, fixed_precision.not_fixed_precision)
    torch.Tensor.share = _tensor_share  # type: ignore[attr-defined]
    torch.nn.Module.share = secure_module.module_share  # type: ignore[attr-defined]


class TorchHook:
    """``hook = sy.TorchHook(torch)``: makes tensors and modules sendable; idempotent."""

    def __init__(
        self,
        torch_module: Any = torch,
        local_worker_: VirtualWorker | None = None,
        is_client: bool = True,
        verbose: bool = False,
        **options: Any,
    ) -> None:
        if torch_module is not torch:
            raise TypeError("TorchHook hooks the torch module: sy.TorchHook(torch)")
        if local_worker_ is None:  # PySyft's name for it
            local_worker_ = options.pop("local_worker", None)
        check_options("sy.TorchHook", {"is_client": is_client, "verbose": verbose}, HOOK_OPTIONS)
        check_options("sy.TorchHook", options, HOOK_OPTIONS)
        _install()
        self.torch = torch_module
        self.local_worker = local_worker_ if local_worker_ is not None else local_worker()
        pointer_module.DEFAULT_OWNER = self.local_worker
        package = sys.modules.get("client")
        if package is not None:
            package.local_worker = self.local_worker  # type: ignore[attr-defined]
