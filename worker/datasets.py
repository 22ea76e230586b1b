"""Datasets a worker's operator hosts: loaded at start-up, private, found by tag.

``tensorfleet worker bob --dataset digits=/data/digits.safetensors`` (or
``TENSORFLEET_DATASETS=digits=/data/digits.safetensors`` for a plain Celery
worker) loads every tensor of the safetensors file. Each is tagged with the
dataset's name and its own name (``#digits``, ``#data``, ``#target``), plus any
tags the file's metadata lists (``{"tags": "#mnist #train"}``), and described by
the metadata's ``description``. The worker keeps them under ids derived from
the worker, the dataset and the tensor name (the same after every restart),
owned by the operator (:data:`worker.access.OPERATOR`): clients find them with
``bob.search("#digits")``, compute on them, train on them and fetch results, but
never ``.get()``, ``.move()`` or ``.send()`` the data itself
(``GetNotPermittedError``). They are not written to Redis: the file is their home.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from broker.errors import ConfigurationError

#: the most tensors one dataset file may hold (a bound on what a start-up loads)
MAX_TENSORS = 1024


@dataclass(frozen=True)
class HostedTensor:
    """One tensor of a hosted dataset, ready to be kept by the worker."""

    obj_id: int
    tensor: torch.Tensor
    tags: frozenset[str]
    description: str


def parse_option(option: str) -> tuple[str, Path]:
    """``name=PATH`` -> (name, path), refusing anything else with a clear error."""
    name, sep, path = option.partition("=")
    name = name.strip()
    if (
        not sep
        or not name
        or not path.strip()
        or not name.replace("_", "").replace("-", "").isalnum()
    ):
        raise ConfigurationError(
            "--dataset / TENSORFLEET_DATASETS",
            option,
            "NAME=PATH, NAME of letters, digits, '_' or '-' "
            "(for example digits=/data/digits.safetensors)",
        )
    return name, Path(path.strip())


def hosted_id(worker_id: str, dataset: str, tensor_name: str) -> int:
    """The id a hosted tensor has on ``worker_id``: stable, and far from random client ids."""
    digest = hashlib.blake2b(
        f"hosted:{worker_id}:{dataset}:{tensor_name}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits, as every object id


def load_dataset(worker_id: str, name: str, path: Path) -> list[HostedTensor]:
    """Every tensor of the safetensors file at ``path``, tagged; ConfigurationError if unusable."""
    where = f"--dataset {name}={path}"
    if not path.is_file():
        raise ConfigurationError(where, str(path), "an existing safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            if not keys or len(keys) > MAX_TENSORS:
                raise ConfigurationError(
                    where, str(path), f"a safetensors file with 1 to {MAX_TENSORS} tensors"
                )
            tensors = {key: handle.get_tensor(key) for key in keys}
    except ConfigurationError:
        raise
    except Exception as error:
        raise ConfigurationError(where, str(path), f"a safetensors file ({error})") from None
    extra = frozenset(tag for tag in metadata.get("tags", "").split() if tag.startswith("#"))
    description = metadata.get("description", f"{name} hosted by {worker_id}")
    return [
        HostedTensor(
            hosted_id(worker_id, name, key),
            tensor,
            frozenset({f"#{name}", f"#{key}"}) | extra,
            description,
        )
        for key, tensor in tensors.items()
    ]
