"""A local MNIST copy for ``tensorfleet demo --mnist DIR``: the four IDX files, checked first.

DIR itself must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped
(``.gz``), as http://yann.lecun.com/exdb/mnist/ distributes them. Nothing else is
searched: a copy in a subfolder, or anywhere else, is not used (the error names it).
Before any training, every file's IDX header is read and checked (magic number,
shape, and that images and labels agree), so a wrong or damaged file is a usage
error naming it (``click.BadParameter``, exit status 2), not a crash after minutes.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click
import numpy as np

#: the four files, by role; each may also end in .gz
FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "t10k-images": "t10k-images-idx3-ubyte",
    "t10k-labels": "t10k-labels-idx1-ubyte",
}
#: IDX magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels)
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


def _open(path: Path) -> IO[bytes]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    handle: IO[bytes] = opener(path, "rb")
    return handle


def find_files(directory: Path) -> dict[str, Path]:
    """The four IDX files in ``directory`` itself, by role (BadParameter naming any missing)."""
    found: dict[str, Path] = {}
    missing = []
    for role, name in FILES.items():
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        raise click.BadParameter(
            f"{directory} lacks {', '.join(missing)}: the four MNIST IDX files must be in "
            f"that directory itself{_elsewhere_hint(directory)}"
        )
    return found


def _elsewhere_hint(directory: Path) -> str:
    """Where the files are, if one subfolder down (a hint only: they are not read there)."""
    with_images = sorted(
        {path.parent for path in directory.glob(f"*/{FILES['train-images']}*") if path.is_file()}
    )
    if not with_images:
        return ""
    return f" (found {FILES['train-images']} in {with_images[0]}: use --mnist {with_images[0]})"


def _header(path: Path) -> tuple[int, ...]:
    """The shape an IDX file declares; click.BadParameter if it is not an unsigned-byte IDX file."""
    try:
        with _open(path) as handle:
            head = handle.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] not in (1, 3):
                raise click.BadParameter(
                    f"{path} is not an MNIST IDX file (its first bytes are wrong)"
                )
            dims = head[3]
            raw = handle.read(4 * dims)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise click.BadParameter(f"{path} cannot be read: {error}") from None
    if len(raw) < 4 * dims:
        raise click.BadParameter(f"{path} is cut short: its IDX header is incomplete")
    return struct.unpack(f">{dims}I", raw)


def check_directory(directory: Path) -> dict[str, Path]:
    """The four files of a usable copy in ``directory``; click.BadParameter saying what is wrong."""
    files = find_files(directory)
    shapes = {role: _header(path) for role, path in files.items()}
    for split in ("train", "t10k"):
        images, labels = shapes[f"{split}-images"], shapes[f"{split}-labels"]
        if len(images) != 3 or len(labels) != 1:
            raise click.BadParameter(
                f"{files[f'{split}-images']} must hold images (3 dimensions) and "
                f"{files[f'{split}-labels']} labels (1 dimension): are the two swapped?"
            )
        if images[0] != labels[0]:
            raise click.BadParameter(
                f"{files[f'{split}-images']} holds {images[0]} images but "
                f"{files[f'{split}-labels']} {labels[0]} labels: they must be one set"
            )
    if shapes["train-images"][1:] != shapes["t10k-images"][1:]:
        raise click.BadParameter(
            f"training images are {shapes['train-images'][1:]} pixels but test images "
            f"{shapes['t10k-images'][1:]}: both files must come from one MNIST copy"
        )
    return files


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape."""
    shape = _header(path)
    with _open(path) as handle:
        raw = handle.read()
    offset = 4 + 4 * len(shape)
    expected = int(np.prod(shape))
    if len(raw) - offset < expected:
        raise click.BadParameter(
            f"{path} is cut short: {len(raw) - offset} of {expected} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=offset).reshape(shape)


class MnistDirectory(click.Path):
    """``--mnist DIR``: an existing directory holding a usable MNIST copy (see the module)."""

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False, readable=True, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        directory = Path(os.fsdecode(super().convert(value, param, ctx)))
        try:
            check_directory(directory)
        except click.BadParameter as error:
            self.fail(error.message, param, ctx)
        return directory
