"""TensorFleet's user API: ``import client as sy``.

Exactly the public contract (the README's API tour): the hook, the two worker kinds,
pointers, the error tree, federated data, optimizers and plans.
"""

from typing import Any

from broker.errors import (
    BrokerConnectionError,
    ForbiddenOperationError,
    GetRequiredError,
    InvalidTensorForRemoteGet,
    NotSupportedError,
    ObjectNotFoundError,
    PlanNotBuiltError,
    TensorFleetError,
    TensorsNotCollocatedException,
    WorkerNotFoundException,
    WorkerUnavailableError,
)
from client import (
    exceptions,  # every error, as sy.exceptions (PySyft's syft.exceptions)
    federated,  # federated learning: FederatedDataset/Loader, Optims, FedAvg
)
from client.federated import BaseDataset, FederatedDataLoader, FederatedDataset, PointerDataset
from client.fixed_precision import FixedPrecisionTensor
from client.hook import TorchHook
from client.multipointer import MultiPointerTensor, combine_pointers
from client.plan import Plan, func2plan
from client.pointer import PointerTensor
from client.sharing import AdditiveSharingTensor
from client.unsupported import missing_name
from client.workers import BaseWorker, FleetWorker, VirtualWorker


def __getattr__(name: str) -> Any:
    """``sy.<a PySyft 0.2 name TensorFleet lacks>``: NotSupportedError saying what instead."""
    return missing_name(name)


#: the hook's local worker ("me"); set by ``TorchHook(torch)``
local_worker: Any = None

__all__ = [
    "AdditiveSharingTensor",
    "BaseDataset",
    "BaseWorker",
    "BrokerConnectionError",
    "FederatedDataLoader",
    "FederatedDataset",
    "FixedPrecisionTensor",
    "FleetWorker",
    "ForbiddenOperationError",
    "GetRequiredError",
    "InvalidTensorForRemoteGet",
    "MultiPointerTensor",
    "NotSupportedError",
    "ObjectNotFoundError",
    "Plan",
    "PlanNotBuiltError",
    "PointerDataset",
    "PointerTensor",
    "TensorFleetError",
    "TensorsNotCollocatedException",
    "TorchHook",
    "VirtualWorker",
    "WorkerNotFoundException",
    "WorkerUnavailableError",
    "combine_pointers",
    "exceptions",
    "federated",
    "func2plan",
    "local_worker",
]
