"""Federated learning on pointers: data shares, their loader, per-worker optimizers, FedAvg.

One job per module, as in flwr: :mod:`~client.federated.dataset` (shares on
workers), :mod:`~client.federated.loader` (batches built on the workers),
:mod:`~client.federated.optims` (optimizer state per worker),
:mod:`~client.federated.fedavg` (averaging on a trusted worker),
:mod:`~client.federated.secure_fedavg` (averaging by additive sharing) and
:mod:`~client.federated.utils` (PySyft's helpers on local models).
"""

from client.federated.dataset import BaseDataset, FederatedDataset, PointerDataset, federate
from client.federated.fedavg import (
    FedAvg,
    LocalTraining,
    RoundResult,
    load_parameters,
    secure_average,
    train_epochs,
)
from client.federated.loader import FederatedDataLoader, batch_indices, local_batches
from client.federated.optims import Optims
from client.federated.secure_fedavg import SecureFedAvg, secure_aggregate
from client.federated.utils import (
    accuracy,
    add_model,
    extract_batches_per_worker,
    federated_avg,
    scale_model,
)

__all__ = [
    "BaseDataset",
    "FedAvg",
    "FederatedDataLoader",
    "FederatedDataset",
    "LocalTraining",
    "Optims",
    "PointerDataset",
    "RoundResult",
    "SecureFedAvg",
    "accuracy",
    "add_model",
    "batch_indices",
    "extract_batches_per_worker",
    "federate",
    "federated_avg",
    "load_parameters",
    "local_batches",
    "scale_model",
    "secure_aggregate",
    "secure_average",
    "train_epochs",
]
