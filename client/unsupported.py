"""PySyft 0.2 names TensorFleet does not provide: each raises, saying what to use instead.

A PySyft user's code must never run with a feature silently dropped. So the names,
methods and options of PySyft 0.2.4 that TensorFleet lacks raise
:class:`~broker.errors.NotSupportedError`: a module-level name (``sy.TrainConfig``),
a tensor or module method (``x.encrypt()``, ``x.share_(...)``) or a
keyword option (``sy.VirtualWorker(hook, id="bob", log_msgs=True)``). Options
given their PySyft default, which asks for what TensorFleet does anyway, pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker.errors import NotSupportedError

_FLEET = (
    "Use sy.FleetWorker(hook, id=...) for a worker of a running fleet (RabbitMQ, Celery, "
    "Redis), started with `tensorfleet worker <id>`."
)
_SMPC = (
    "TensorFleet's secure computation is additive sharing of fixed-precision tensors: "
    "x.fix_prec().share(bob, alice, crypto_provider=secure_worker), then .get().float_prec() "
    "(client/sharing.py); FedAvg(secure=True) aggregates that way."
)

#: ``sy.<name>`` in PySyft 0.2.4 that TensorFleet lacks -> what to use instead
NAMES: dict[str, str] = {
    "WebsocketClientWorker": _FLEET,
    "WebsocketServerWorker": _FLEET,
    "TrainConfig": (
        "Train with a plain loop over sy.FederatedDataLoader batches (the model goes to the "
        "data with model.send), or with client.federated.FedAvg."
    ),
    "CRTPrecisionTensor": _SMPC,
    "LargePrecisionTensor": _SMPC,
    "ReplicatedSharingTensor": _SMPC,
    "PrivateTensor": (
        "A worker's operator hosts private data instead: clients compute on it but cannot "
        ".get() it (GetNotPermittedError)."
    ),
    "LoggingTensor": "Use the engine's hooks (worker.engine Middleware) to observe commands.",
    "AutogradTensor": "Remote autograd is built in: call .backward() on a pointer.",
    "Protocol": "Send and run plans one at a time: plan.send(worker)(*pointers).",
    "func2protocol": "Send and run plans one at a time: plan.send(worker)(*pointers).",
    "method2plan": "Decorate a function with @sy.func2plan, or subclass sy.Plan.",
    "KerasHook": "TensorFleet hooks PyTorch only: sy.TorchHook(torch).",
    "TFEWorker": "TensorFleet hooks PyTorch only: sy.TorchHook(torch).",
    "create_sandbox": (
        "Make the workers yourself: bob = sy.VirtualWorker(hook, id='bob'), then send data "
        "with x.send(bob) or dataset.federate((bob, alice))."
    ),
    "make_hook": "Use hook = sy.TorchHook(torch).",
    "ID_PROVIDER": (
        "Object ids come from the operating system's random generator so that they cannot "
        "be guessed; they cannot be set or seeded."
    ),
    "serde": (
        "Messages are msgpack with safetensors tensors (broker.codec); objects are not "
        "serialized by the user."
    ),
    "grid": _FLEET,
    "PublicGridNetwork": _FLEET,
    "VirtualGrid": _FLEET,
}

#: tensor methods PySyft 0.2.4 added that TensorFleet lacks -> what to use instead
TENSOR_METHODS: dict[str, str] = {
    "share_": "Sharing makes a new object: y = x.share(bob, alice, crypto_provider=...).",
    "encrypt": _SMPC,
    "decrypt": _SMPC,
    "private_tensor": NAMES["PrivateTensor"],
    "create_pointer": "Send the tensor instead: x.send(worker) returns its pointer.",
    "mid_get": "Call ptr.remote_get() on a pointer to a pointer.",
}

#: nn.Module methods PySyft 0.2.4 added that TensorFleet lacks -> what to use instead
MODULE_METHODS: dict[str, str] = {
    "float_precision": "Decode the parameters model.fix_precision() returned: .float_precision().",
    "float_prec": "Decode the parameters model.fix_precision() returned: .float_prec().",
    "encrypt": _SMPC,
    "decrypt": _SMPC,
}

#: keyword options of sy.VirtualWorker / sy.FleetWorker in PySyft -> (default, what instead)
WORKER_OPTIONS: dict[str, tuple[Any, str]] = {
    "log_msgs": (
        False,
        "Watch a fleet's messages with Celery's events (Flower), or count commands with the "
        "engine's metrics hooks.",
    ),
    "verbose": (False, "Turn on Python logging instead: logging.basicConfig(level='DEBUG')."),
    "auto_add": (
        True,
        "Every worker of a session already knows every other: no registration is needed.",
    ),
    "message_pending_time": (
        0,
        "Latency cannot be simulated: try a real fleet (sy.FleetWorker) to measure it.",
    ),
}

#: keyword options of sy.TorchHook in PySyft -> (default, what instead)
HOOK_OPTIONS: dict[str, tuple[Any, str]] = {
    "is_client": (
        True,
        "The local worker never registers its own tensors: keep references to them; the "
        "objects on a worker are listed by worker._objects.",
    ),
    "verbose": WORKER_OPTIONS["verbose"],
    "seed": (None, NAMES["ID_PROVIDER"] + " Seed data with torch.manual_seed."),
}


def check_options(
    call: str, options: Mapping[str, Any], known: Mapping[str, tuple[Any, str]]
) -> None:
    """Raise NotSupportedError for the first option that is unknown or not at its default."""
    for name, value in options.items():
        if name in known:
            default, alternative = known[name]
            if value is default or (
                isinstance(value, bool | int | float | str) and value == default
            ):
                continue
            raise NotSupportedError(f"{call}(..., {name}={value!r})", alternative)
        raise NotSupportedError(
            f"{call}(..., {name}=...)",
            f"{call} takes no option {name!r}; see the README's API tour for what it takes.",
        )


def missing_name(name: str) -> Any:
    """The module ``__getattr__`` of ``client``: a PySyft name it lacks says what instead."""
    alternative = NAMES.get(name)
    if alternative is None:
        raise AttributeError(f"module 'client' has no attribute {name!r}")
    raise NotSupportedError(f"sy.{name}", alternative)


def _stub(owner: str, name: str, alternative: str) -> Callable[..., Any]:
    def unsupported(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError(f"{owner}.{name}()", alternative)

    unsupported.__name__ = name
    unsupported.__doc__ = f"Not supported by TensorFleet (PySyft 0.2 had it): {alternative}"
    return unsupported


def install(tensor_class: type, module_class: type) -> None:
    """Attach the stubs for PySyft's tensor and module methods (called by TorchHook)."""
    for name, alternative in TENSOR_METHODS.items():
        if not hasattr(tensor_class, name):
            setattr(tensor_class, name, _stub("Tensor", name, alternative))
    for name, alternative in MODULE_METHODS.items():
        if not hasattr(module_class, name):
            setattr(module_class, name, _stub("Module", name, alternative))
