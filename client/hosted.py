"""Tags, search and hosted data on the client: ``t.tag(...)``, ``bob.search(...)``, ``data=``.

PySyft 0.2's spelling, on every worker kind::

    x = torch.tensor([1.0, 2.0]).tag("#digits", "#data").describe("two pixels")
    bob = sy.VirtualWorker(hook, id="bob", data=[x])     # bob's operator hosts x, privately
    data, = bob.search("#digits", "#data")               # fleet: tensorfleet worker bob --dataset

``search`` asks the worker for every object the caller may use whose tags hold
every query item (an int in the query names an object id) and returns pointers
to them with shape and dtype known, their ``tags`` and ``description``, and
garbage collection off (``ptr.gc`` is False): dropping a search pointer never
deletes the worker's data, as in PySyft. Data the worker's operator hosts is
``private`` on the pointer: ops on it run and their results are the caller's to
fetch, but ``.get()``, ``.move()`` and ``.send()`` of the pointer itself raise
``GetNotPermittedError`` and leave the pointer usable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from broker import codec, protocol
from client.pointer import PointerTensor, make_pointer, new_id

if TYPE_CHECKING:
    from client.workers import BaseWorker

#: the most items one search may name (the worker's schema refuses more)
MAX_QUERY = 64


def tag(tensor: torch.Tensor, *tags: str) -> torch.Tensor:
    """``t.tag("#digits", "#data")``: add tags (kept with the object where it is hosted)."""
    for item in tags:
        if not isinstance(item, str) or not item or len(item.split()) != 1:
            raise TypeError(
                f"a tag is a non-empty string without spaces such as '#digits', not {item!r}"
            )
    current = getattr(tensor, "tags", None) or set()
    tensor.tags = set(current) | set(tags)  # type: ignore[attr-defined]
    return tensor


def describe(tensor: torch.Tensor, description: str) -> torch.Tensor:
    """``t.describe("handwritten digits, 8x8")``: set the description; returns ``t``."""
    if not isinstance(description, str):
        raise TypeError(f"a description is a string, not {type(description).__name__}")
    tensor.description = description  # type: ignore[attr-defined]
    return tensor


def search(worker: BaseWorker, query: tuple[Any, ...]) -> list[Any]:
    """Pointers to the objects on ``worker`` matching every item of ``query`` (tags or ids)."""
    items = list(query)
    if len(items) == 1 and isinstance(items[0], list | tuple | set | frozenset):
        items = list(items[0])  # bob.search(["#a", "#b"]) as well as bob.search("#a", "#b")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise TypeError(f"search takes tags (str) and object ids (int), not {item!r}")
    if len(items) > MAX_QUERY:
        raise ValueError(f"a search names at most {MAX_QUERY} tags or ids, not {len(items)}")
    rows = worker._request([protocol.SEARCH, items, None], "search")
    found = []
    for row in rows:
        obj_id, shape, dtype, requires_grad, tags, description = row[:6]
        if shape is None and dtype == "plan":
            found.append(_plan_pointer(worker, obj_id, tags, description))
            continue
        pointer = make_pointer(
            worker,
            obj_id,
            (tuple(shape), codec.dtype_from_name(dtype), bool(requires_grad)),
            garbage_collect_data=False,
        )
        pointer.tags = set(tags)
        pointer.description = description or None
        pointer.private = bool(row[6]) if len(row) > 6 else False
        found.append(pointer)
    return found


def _plan_pointer(worker: BaseWorker, plan_id: int, tags: list[str], description: str) -> Any:
    """A found plan as a PointerPlan at ``worker`` (its ops fetched once, to infer shapes).

    Like a found tensor's pointer, dropping it never deletes the plan on the worker.
    """
    from client.plan import PointerPlan, _RemotePlan
    from client.plan_fetch import fetch_plan

    plan = fetch_plan(worker, plan_id)
    remote = _RemotePlan(worker, plan_id)
    remote.garbage_collect_data = False
    pointer = PointerPlan(plan.trace, {worker.id: remote})
    pointer.tags = set(tags)  # type: ignore[attr-defined]
    pointer.description = description or None  # type: ignore[attr-defined]
    return pointer


def hosted_tensors(tensors: Iterable[torch.Tensor]) -> list[Any]:
    """``data=`` for an in-process worker as the engine hosts it; sets ``t.id`` when missing.

    A tensor keeps the id it has (``t.id``, as in PySyft), so hosting it again replaces
    it; a tensor without one gets a new id. The worker keeps a copy, never ``t`` itself.
    """
    from worker.datasets import HostedTensor

    hosted = []
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or isinstance(tensor, PointerTensor):
            raise TypeError(
                f"data= takes local tensors for the worker to host, not {type(tensor).__name__}"
            )
        obj_id = getattr(tensor, "id", None)
        if not isinstance(obj_id, int):
            obj_id = new_id()
            tensor.id = obj_id  # type: ignore[attr-defined]
        hosted.append(
            HostedTensor(
                obj_id,
                tensor.detach().clone(),
                frozenset(getattr(tensor, "tags", None) or ()),
                str(getattr(tensor, "description", None) or ""),
            )
        )
    return hosted


def dataset_tensors(worker_id: str, name: str, path: Any) -> list[torch.Tensor]:
    """The tensors ``tensorfleet worker <worker_id> --dataset NAME=PATH`` hosts, as local ones.

    Each comes tagged (``#NAME``, ``#<tensor name>``, the file's tags), described and with
    the id the fleet worker gives it, so ``VirtualWorker(hook, id=worker_id, data=...)``
    hosts exactly what the fleet worker would (and loading it again replaces it).
    """
    from pathlib import Path

    from worker.datasets import load_dataset

    tensors = []
    for hosted in load_dataset(worker_id, name, Path(path)):
        tensor = hosted.tensor
        tensor.id = hosted.obj_id  # type: ignore[attr-defined]
        tag(tensor, *sorted(hosted.tags))
        describe(tensor, hosted.description)
        tensors.append(tensor)
    return tensors
