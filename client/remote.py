"""Moving objects: send, get, move and remote_get, for tensors and pointers.

These are the calls that change *where* data lives. ``send`` is pipelined like
any op; ``get``, ``move`` and ``remote_get`` wait, because the next command may
depend on where the data now is. ``move`` and ``remote_get`` are carried out
worker to worker: the data never passes through the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from broker import codec, protocol
from broker.errors import (
    GetNotPermittedError,
    ObjectNotFoundError,
    TransferIncompleteError,
    WorkerUnavailableError,
)
from broker.meta import Meta
from broker.protocol import PointerRecord
from client import locate
from client.pointer import PointerTensor, make_pointer, new_id

#: PySyft's ``send`` options -> (default, what to do instead); the defaults are what we do
SEND_OPTIONS: dict[str, tuple[Any, str]] = {
    "inplace": (False, "Use x.send_(worker), which turns x itself into the pointer."),
    "garbage_collect_data": (
        True,
        "Set it on the pointer after sending: ptr = x.send(bob); ptr.gc = False.",
    ),
    "create_pointer": (True, "A send always returns a pointer: drop it if unused."),
    "no_wrap": (False, "Pointers are tensors already (ptr.child holds the pointer's state)."),
    "requires_grad": (False, "requires_grad travels with the tensor: set it before sending."),
    "local_autograd": (False, "Autograd runs where the data is: call .backward() there."),
    "preinitialize_grad": (False, "model.send(worker) gives trainable parameters zero grads."),
    "user": (None, "Clients are RabbitMQ users: the fleet knows who sent a command."),
}

#: PySyft's ``get`` options -> (default, what to do instead)
GET_OPTIONS: dict[str, tuple[Any, str]] = {
    "inplace": (False, "Use ptr.get_(), which turns the pointer itself back into the tensor."),
    "deregister_ptr": (True, "A get always ends the pointer: the data is here now."),
    "user": SEND_OPTIONS["user"],
    "reason": ("", "Requests carry no reason: a worker's operator decides what may be fetched."),
}


def local_meta(tensor: torch.Tensor) -> Meta:
    """What a pointer to a copy of ``tensor`` knows about it."""
    return (tuple(tensor.shape), tensor.dtype, tensor.requires_grad)


def _check_worker(location: Any) -> Any:
    from client.workers import BaseWorker

    if not isinstance(location, BaseWorker):
        raise TypeError(
            f"send() takes workers (sy.VirtualWorker or sy.FleetWorker), not "
            f"{type(location).__name__}: x.send(bob)"
        )
    return location


def send_tensor(tensor: torch.Tensor, locations: Sequence[Any]) -> Any:
    """``tensor.send(bob)``: bob keeps a copy under a new id; returns the pointer."""
    if not locations:
        raise TypeError("send() needs at least one worker: x.send(bob)")
    if len(locations) > 1:
        from client.multipointer import MultiPointerTensor

        return MultiPointerTensor.from_children(
            {_check_worker(w).id: send_tensor(tensor, [w]) for w in locations}
        )
    location = _check_worker(locations[0])
    obj_id = new_id()
    location._enqueue([protocol.STORE, obj_id, codec.tensor_ext(tensor), None])
    pointer = make_pointer(location, obj_id, local_meta(tensor))
    extra = tensor.__dict__
    if extra:  # tags and description are copied to the pointer (and stored with the object)
        pointer.tags = set(extra["tags"]) if extra.get("tags") else None
        pointer.description = extra.get("description")
    if tensor.requires_grad and tensor.is_leaf and tensor.grad is None:
        pointer.child.grad_cleared_epoch = location.backward_epoch
    return pointer


def send_pointer(wrapper: PointerTensor, locations: Sequence[Any]) -> Any:
    """``ptr.send(alice)``: alice keeps a pointer to the data; ownership passes to her."""
    if len(locations) != 1:
        raise NotImplementedError("A pointer can be sent onward to one worker at a time.")
    location = _check_worker(locations[0])
    pointer = wrapper.child
    if wrapper.private:  # hosted data: its worker refuses get and move; sending it on is no other
        raise GetNotPermittedError(pointer.id_at_location, pointer.location.id)
    if pointer.point_to_attr is not None:
        raise ValueError(f"{pointer!r} points at an attribute; send .clone() of it instead")
    _check_same_fleet(pointer.location, location)
    shape, dtype, requires_grad = pointer.meta
    record = PointerRecord(
        pointer.location.id,
        pointer.id_at_location,
        pointer.garbage_collect_data,
        shape,
        codec.dtype_name(dtype),
        requires_grad,
    )
    location._enqueue([protocol.STORE, pointer.id, record, None])
    pointer.garbage_collect_data = False
    route = (location.id, *(pointer.route or (pointer.location.id,)))
    return make_pointer(location, pointer.id, pointer.meta, route=route)


def get_pointer(wrapper: PointerTensor) -> Any:
    """``ptr.get()``: the object comes here and the worker forgets it."""
    pointer = wrapper.child
    try:
        payload = pointer.location._request([protocol.GET, pointer.ref, None], "get")
    except ObjectNotFoundError:
        source = pointer.moving_from
        if source is None:
            raise
        # a move that did not report done led here: say what became of the data
        _, problem = locate.after_move(source, pointer.location, pointer.id_at_location)
        if problem is None:
            raise
        raise TransferIncompleteError(
            pointer.id_at_location, source.id, pointer.location.id, problem
        ) from None
    pointer.moving_from = None
    if pointer.point_to_attr is not None:
        return payload
    pointer.garbage_collect_data = False
    if isinstance(payload, PointerRecord):
        # a pointer-to-pointer: what comes back is a pointer to the next hop, and it owns
        # the data (PySyft returned it with garbage collection off, which leaked)
        location = pointer.location.session.worker(payload.location)
        route = pointer.route[1:] if pointer.route is not None and len(pointer.route) > 2 else None
        return make_pointer(
            location,
            payload.id_at_location,
            pointer.meta,
            obj_id=pointer.id_at_location,
            route=route,
        )
    return payload


def move_pointer(wrapper: PointerTensor, destination: Any) -> Any:
    """``ptr.move(alice)``: bob sends the data straight to alice, same id; returns ``ptr``."""
    pointer = wrapper.child
    destination = _check_worker(destination)
    if destination is pointer.location:
        return wrapper
    if pointer.point_to_attr is not None:
        raise ValueError(f"{pointer!r} points at an attribute; move the tensor itself")
    _check_same_fleet(pointer.location, destination)
    source, obj_id = pointer.location, pointer.id_at_location
    try:
        # the destination answers a move: a silent destination fails it fast too
        source._request(
            [protocol.SEND_TO, obj_id, destination.id, obj_id, None],
            f"move to {destination.id}",
            watch=(destination.id,),
        )
    except WorkerUnavailableError:
        # no answer: ask both workers where the data is, point there, and say so
        where, problem = locate.after_move(source, destination, obj_id)
        _point(pointer, where)
        pointer.moving_from = source if problem is not None and where is destination else None
        if problem is not None:
            raise TransferIncompleteError(obj_id, source.id, destination.id, problem) from None
        return wrapper
    _point(pointer, destination)
    return wrapper


def _point(pointer: Any, location: Any) -> None:
    """Make ``pointer`` (a one-hop pointer, or the first hop of a chain) point at ``location``."""
    if location is pointer.location:
        return
    pointer.location = location
    if pointer.route is not None:
        pointer.route = (location.id, *pointer.route[1:])
        location.session.note_chain(pointer.route)


def remote_get_pointer(wrapper: PointerTensor) -> Any:
    """``ptr.remote_get()`` on me -> alice -> bob: the data moves from bob to alice."""
    pointer = wrapper.child
    pointer.location._request([protocol.REMOTE_GET, pointer.id_at_location, None], "remote_get")
    pointer.route = None  # the data is now where the pointer points
    return wrapper


def _check_same_fleet(source: Any, destination: Any) -> None:
    if source.session is not destination.session:
        raise ValueError(
            f"{source.id} and {destination.id} are not in the same fleet (one is in-process, "
            "the other a fleet worker), so data cannot pass between them directly: .get() it "
            "and .send() it instead."
        )


def send_in_place(tensor: torch.Tensor, locations: Sequence[Any]) -> Any:
    """``x.send_(bob)``: the same Python object becomes the pointer; returns it."""
    from client.module import _held_by_a_graph

    if len(locations) != 1:
        raise NotImplementedError(
            "Inplace send to several workers is currently not supported: use x.send(bob, alice)."
        )
    if type(tensor) is PointerTensor:
        pointer = send_pointer(tensor, locations)
    else:
        if _held_by_a_graph(tensor):
            raise RuntimeError(
                "x.send_(): a local autograd graph still uses this tensor; call .backward() "
                "on its output or del it first, or use x.send(worker), which copies."
            )
        pointer = send_tensor(tensor, locations)
    torch.utils.swap_tensors(tensor, pointer)
    return tensor


def get_in_place(wrapper: PointerTensor) -> Any:
    """``ptr.get_()``: the pointer object itself becomes the tensor again; returns it."""
    value = get_pointer(wrapper)
    torch.utils.swap_tensors(wrapper, value)
    return wrapper


def remote_send_pointer(wrapper: PointerTensor, destination: Any) -> Any:
    """``ptr.remote_send(alice)`` on me -> bob: the data goes from bob to alice (same id).

    Bob keeps a pointer to it under that id, so ``ptr`` becomes me -> bob -> alice (PySyft
    0.2.9's intent; 0.2.4 left the client's pointer dangling). Returns ``ptr``.
    """
    pointer = wrapper.child
    source = pointer.location
    if pointer.route is not None or pointer.point_to_attr is not None:
        raise ValueError(
            f"remote_send() sends data that {source.id} holds; {pointer!r} points at a "
            "pointer or an attribute: .move() it, or .clone() the attribute first"
        )
    destination = _check_worker(destination)
    if destination is source:
        return wrapper
    move_pointer(wrapper, destination)
    shape, dtype, requires_grad = pointer.meta
    record = PointerRecord(
        destination.id, pointer.id_at_location, True, shape, codec.dtype_name(dtype), requires_grad
    )
    source._enqueue([protocol.STORE, pointer.id_at_location, record, None])
    pointer.location = source
    pointer.route = (source.id, destination.id)
    source.session.note_chain(pointer.route)
    return wrapper
