"""PySyft 0.2's federated helpers (``syft.federated.utils``), on local models.

``add_model`` and ``scale_model`` change the model they are given, as in PySyft;
``federated_avg`` returns a new model (PySyft summed into the first model of the
dict, so averaging destroyed that model). Bring remote models back with
``model.get()`` first; to average without the client seeing each model, use
``client.federated.secure_average`` on a trusted worker.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from client.pointer import PointerTensor


def _local_parameters(model: nn.Module, call: str) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    if any(type(param) is PointerTensor for param in params.values()):
        raise ValueError(
            f"{call} works on local models: call model.get() first (or average on a worker "
            "with client.federated.secure_average)"
        )
    return params


def add_model(dst_model: nn.Module, src_model: nn.Module) -> nn.Module:
    """Add ``src_model``'s parameters into ``dst_model``'s (same names), in place; returns it."""
    destination = _local_parameters(dst_model, "add_model()")
    with torch.no_grad():
        for name, param in _local_parameters(src_model, "add_model()").items():
            if name in destination:
                destination[name].add_(param)
    return dst_model


def scale_model(model: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``model`` by ``scale``, in place; returns it."""
    with torch.no_grad():
        for param in _local_parameters(model, "scale_model()").values():
            param.mul_(scale)
    return model


def federated_avg(models: Mapping[Any, nn.Module]) -> nn.Module:
    """The parameter-wise mean of ``models`` (a dict, e.g. worker -> model), as a new model."""
    model_list = list(models.values())
    if not model_list:
        raise ValueError("federated_avg() needs at least one model")
    average = copy.deepcopy(model_list[0])
    for model in model_list[1:]:
        add_model(average, model)
    return scale_model(average, 1.0 / len(model_list))


def accuracy(pred_softmax: torch.Tensor, target: torch.Tensor) -> float:
    """The share of rows whose arg-max prediction equals the target (local tensors)."""
    if type(pred_softmax) is PointerTensor or type(target) is PointerTensor:
        raise ValueError("accuracy() reads values: .get() the predictions and targets first")
    pred = pred_softmax.argmax(dim=1)
    return float((pred.float() == target.view(pred.shape).float()).sum()) / float(len(target))


def extract_batches_per_worker(federated_train_loader: Any) -> dict[Any, list[Any]]:
    """Every batch of a FederatedDataLoader, grouped by worker: ``{worker: [(data, target)]}``.

    Every worker of the loader's dataset has a list, in the dataset's order, even if empty.
    """
    dataset = federated_train_loader.federated_dataset
    batches: dict[Any, list[Any]] = {
        dataset[worker_id].location: [] for worker_id in federated_train_loader.workers
    }
    for data, target in federated_train_loader:
        batches.setdefault(data.location, []).append((data, target))
    return batches
