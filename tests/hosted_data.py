"""A small dataset each owner hosts in the hosted-data tests (``--dataset toy=PATH``).

Two owners, ``bob`` and ``alice``, each hold 64 samples of 4 features whose label
is the sign of a fixed linear function (learnable by a linear model in a few
steps), in a safetensors file with a description and an extra ``#toy-train`` tag.
The session fleet (tests/conftest.py) starts bob and alice with these files; an
in-process test hosts the same tensors with ``data=`` (client.hosted.dataset_tensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

HOSTED_OWNERS = ("bob", "alice")
NAME = "toy"
SAMPLES = 64
FEATURES = 4
DESCRIPTION = "a linearly separable toy dataset"


def write_owner_file(path: Path, seed: int) -> Path:
    """One owner's data and targets (different samples per seed, the same rule)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(SAMPLES, FEATURES, generator=generator)
    rule = torch.tensor([1.5, -2.0, 0.5, 1.0])
    target = (data @ rule > 0).long()
    save_file(
        {"data": data, "target": target},
        str(path),
        metadata={"description": DESCRIPTION, "tags": "#toy-train"},
    )
    return path


def write_files(directory: Path) -> dict[str, Path]:
    """One file per owner in ``directory``: owner id -> path."""
    return {
        owner: write_owner_file(directory / f"{owner}-{NAME}.safetensors", seed)
        for seed, owner in enumerate(HOSTED_OWNERS)
    }


def dataset_options(files: dict[str, Path]) -> dict[str, list[str]]:
    """``--dataset`` entries per worker id, for tests/fleet_fixture.fleet(datasets=...)."""
    return {owner: [f"{NAME}={path}"] for owner, path in files.items()}
