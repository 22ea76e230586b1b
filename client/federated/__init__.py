"""Federated learning on pointers: data shares, their loader, per-worker optimizers, FedAvg.

One job per module, as in flwr: :mod:`~client.federated.dataset` (shares on
workers), :mod:`~client.federated.loader` (batches built on the workers),
:mod:`~client.federated.optims` (optimizer state per worker) and
:mod:`~client.federated.fedavg` (averaging on a trusted worker).
"""

from client.federated.dataset import BaseDataset, FederatedDataset, federate
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

__all__ = [
    "BaseDataset",
    "FedAvg",
    "FederatedDataLoader",
    "FederatedDataset",
    "LocalTraining",
    "Optims",
    "RoundResult",
    "batch_indices",
    "federate",
    "load_parameters",
    "local_batches",
    "secure_average",
    "train_epochs",
]
