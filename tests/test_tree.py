"""The one tree walker: exactly lists, tuples and dicts are containers."""

from __future__ import annotations

import torch

from broker.tree import leaves, map_leaves


def test_map_leaves_keeps_container_types_and_replaces_only_leaves() -> None:
    value = [1, (2, {"a": 3, "b": [4]}), "x"]
    doubled = map_leaves(value, lambda leaf: leaf * 2)
    assert doubled == [2, (4, {"a": 6, "b": [8]}), "xx"]
    assert type(doubled[1]) is tuple and type(doubled[1][1]["b"]) is list


def test_sizes_and_named_values_are_leaves_not_containers() -> None:
    size = torch.Size([2, 3])
    assert list(leaves([size, {"k": (size,)}])) == [size, size]
    assert map_leaves((size,), lambda leaf: leaf)[0] is size


def test_leaves_come_depth_first_in_order() -> None:
    assert list(leaves([1, [2, (3, {"z": 4, "a": 5})], 6])) == [1, 2, 3, 4, 5, 6]
