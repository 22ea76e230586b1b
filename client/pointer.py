"""Pointers: torch tensors that stand for data on a worker.

A :class:`PointerTensor` is a ``torch.Tensor`` wrapper subclass with the remote
tensor's shape, dtype and requires_grad, and no data. Everything torch does with
it (operators, ``torch.*``, ``torch.nn.functional.*``, tensor methods, ``.grad``
and ``.data``) reaches :meth:`PointerTensor.__torch_function__`, which answers
metadata locally, refuses to read values (call ``.get()``), and turns every other
call into a pipelined command: ids chosen here, result shapes inferred here, no
wait for the worker.

The pointer's state lives in :class:`Pointer` (``wrapper.child``, as in PySyft).
When the last reference to it goes, and it owns its object
(``garbage_collect_data``), its finalizer queues a delete for the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import MethodWrapperType
from typing import TYPE_CHECKING, Any

import numpy
import torch

from broker import codec, protocol
from broker.errors import GetRequiredError, TensorsNotCollocatedException
from broker.meta import Meta, ShapeCache, arg_key
from broker.ops import is_inplace, wire_name
from broker.tree import leaves

if TYPE_CHECKING:
    from client.workers import BaseWorker


class _SecureIds:
    """Object ids from the operating system's CSPRNG, drawn 4096 at a time.

    An id is the only name of an object on a worker, so it must not be guessable
    (issue 9): 63 random bits (ids travel as signed 64-bit integers) from
    ``os.urandom``. Drawing them in blocks keeps a new id at a list pop on the hot
    path; ``list.pop`` is atomic, so threads need no lock (two refilling at once
    only draw more randomness).
    """

    _BLOCK = 4096

    def __init__(self) -> None:
        self._pool: list[int] = []

    def __call__(self) -> int:
        try:
            return self._pool.pop()
        except IndexError:
            block = numpy.frombuffer(os.urandom(8 * self._BLOCK), dtype=numpy.uint64) >> 1
            self._pool = block.tolist()
            return self._pool.pop()


new_id = _SecureIds()
_REF = codec.ref_ext
_NO_KWARGS: dict[str, Any] = {}
SHAPES = ShapeCache()
#: the owner of new pointers: the hook's local worker ("me"), set by TorchHook
DEFAULT_OWNER: Any = None


class Pointer:
    """Where a pointer's object lives and whether the pointer owns it (``wrapper.child``)."""

    __slots__ = (
        "garbage_collect_data",
        "grad_cleared_epoch",
        "id",
        "id_at_location",
        "location",
        "meta",
        "moving_from",
        "owner",
        "point_to_attr",
        "ref",
        "route",
    )

    def __init__(
        self,
        location: BaseWorker,
        id_at_location: int,
        meta: Meta,
        obj_id: int | None = None,
        garbage_collect_data: bool = True,
        point_to_attr: str | None = None,
        owner: Any = None,
        route: tuple[str, ...] | None = None,
    ) -> None:
        self.id = new_id() if obj_id is None else obj_id
        self.location = location
        self.id_at_location = id_at_location
        self.meta = meta
        self.garbage_collect_data = garbage_collect_data
        self.point_to_attr = point_to_attr
        self.owner = owner if owner is not None else DEFAULT_OWNER
        self.ref = _REF(id_at_location, point_to_attr)
        #: the location's backward epoch when the remote .grad was last known to be None
        self.grad_cleared_epoch = -1
        #: for a pointer to a pointer: the worker ids the chain passes, first hop first (commands
        #: on it are forwarded along them); None for a pointer straight to data
        self.route = route
        if route is not None:  # its last hop answers for it (client.session: who may answer)
            location.session.note_chain(route)
        #: the worker a move that did not report done left from (client/locate.py), until
        #: the pointer is known to point where the data is
        self.moving_from: BaseWorker | None = None

    def __del__(self) -> None:
        if self.garbage_collect_data and self.point_to_attr is None:
            # try/except, not contextlib.suppress: this runs for every dropped pointer
            try:  # noqa: SIM105
                self.location.session.enqueue_from_finalizer(
                    self.location.id, (protocol.DELETE, self.id_at_location), self.route
                )
            except Exception:  # at interpreter exit the session may already be gone
                pass

    def __repr__(self) -> str:
        suffix = f"::{self.point_to_attr}" if self.point_to_attr else ""
        return f"[PointerTensor | me:{self.id} -> {self.location.id}:{self.id_at_location}]{suffix}"


def _pointer_meta(value: Any) -> Meta | None:
    return value.child.meta if type(value) is PointerTensor else None


def make_pointer(location: BaseWorker, id_at_location: int, meta: Meta, **options: Any) -> Any:
    """A new PointerTensor wrapper around a new :class:`Pointer`."""
    return PointerTensor._wrap(Pointer(location, id_at_location, meta, **options))


def _local_label(tensor: torch.Tensor) -> str:
    with torch._C.DisableTorchFunctionSubclass():
        return f"the local tensor {tensor!r}".replace("\n", " ")


class _Call:
    """One intercepted call, turned into wire form while finding where it must run."""

    __slots__ = ("has_local", "location", "name", "pointer", "route")

    def __init__(self, name: str) -> None:
        self.name = name
        self.location: BaseWorker | None = None
        self.pointer: Any = None
        self.has_local = False
        self.route: tuple[str, ...] | None = None

    def wire(self, value: Any) -> Any:
        kind = type(value)
        if kind is PointerTensor:
            pointer = value.child
            if self.location is None:
                self.location, self.pointer = pointer.location, value
            elif pointer.location is not self.location:
                raise TensorsNotCollocatedException(
                    self.name,
                    repr(self.pointer.child),
                    self.location.id,
                    repr(pointer),
                    pointer.location.id,
                )
            if pointer.route is not None:
                self.route = pointer.route
            return pointer.ref
        if kind is tuple:
            items = [self.wire(item) for item in value]
            # a user tuple (x[0, 1]) must arrive as a tuple: mark it (see codec.encode_marked)
            return tuple(items) if self.has_local else codec.tuple_ext(items)
        if kind is list:
            return [self.wire(item) for item in value]
        if kind is dict:
            return {key: self.wire(item) for key, item in value.items()}
        if isinstance(value, torch.Tensor):
            self.has_local = True
            return _LocalTensor(value)
        return value


class _LocalTensor:
    """A local tensor met among pointer arguments: an error once the location is known."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def _check_no_local(call: _Call, value: Any) -> None:
    for leaf in leaves(value):
        if type(leaf) is _LocalTensor:
            assert call.pointer is not None
            raise TensorsNotCollocatedException(
                call.name,
                repr(call.pointer.child),
                call.pointer.child.location.id,
                _local_label(leaf.tensor),
                "me",
            )


#: func -> (wire name, whether it is in place): computed once per callable
_FUNC_INFO: dict[Any, tuple[str, bool]] = {}


def _remote_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    info = _FUNC_INFO.get(func)
    if info is None:
        name = wire_name(func)
        info = _FUNC_INFO[func] = (name, is_inplace(name) and name != "Tensor.backward")
    if not kwargs:
        result = _fast_call(func, info, args)
        if result is not None:
            return result
    return _general_call(func, info[0], args, kwargs)


def _fast_call(func: Callable[..., Any], info: tuple[str, bool], args: tuple[Any, ...]) -> Any:
    """The hot path: pointers on one worker and plain numbers, a shape already inferred once.

    It builds the wire arguments and the shape-cache key in one pass and returns None
    whenever anything is unusual, leaving the case to :func:`_general_call`.
    """
    name, inplace = info
    if inplace:
        return None
    grad = torch.is_grad_enabled()
    key: list[Any] = [func, grad]
    wire: list[Any] = []
    location = None
    for arg in args:
        kind = type(arg)
        if kind is PointerTensor:
            pointer = arg.child
            if pointer.route is not None or (
                location is not None and pointer.location is not location
            ):
                return None
            location = pointer.location
            wire.append(pointer.ref)
        elif kind is int or kind is float or kind is bool:
            wire.append(arg)
        else:
            return None
        key.append(arg_key(arg, _pointer_meta))  # the one key builder (broker.meta)
    inferred = SHAPES.cached(tuple(key))
    if location is None or inferred is None or inferred.container is not None:
        return None
    outputs = inferred.outputs
    if len(outputs) != 1:
        return None
    result_id = new_id()
    location.session.enqueue(
        location.id, (protocol.OP, name, tuple(wire), _NO_KWARGS, (result_id,), grad, None)
    )
    return PointerTensor._wrap(Pointer(location, result_id, outputs[0]))


def _general_call(
    func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    call = _Call(name)
    wire_args = tuple([call.wire(arg) for arg in args])
    wire_kwargs = {key: call.wire(value) for key, value in kwargs.items()} if kwargs else _NO_KWARGS
    location = call.location
    assert location is not None, "__torch_function__ without a pointer argument"
    if call.has_local:
        _check_no_local(call, wire_args)
        _check_no_local(call, wire_kwargs)
    route = call.route
    if route is not None:  # the worker will forward this along the chain
        location.session.note_route(route)
    grad = torch.is_grad_enabled()
    if name == "Tensor.backward":
        location.backward_epoch += 1
        location._enqueue((protocol.OP, name, wire_args, wire_kwargs, (), grad, None))
        return None
    inferred = SHAPES.infer(func, args, kwargs, _pointer_meta, grad)
    if inferred is None:
        return _call_and_describe(location, name, wire_args, wire_kwargs)
    if inferred.is_value:  # computed from metadata alone (torch.is_complex, ...): no data needed
        return inferred.value
    outputs = inferred.outputs
    if not outputs or _is_inplace(name):
        location._enqueue((protocol.OP, name, wire_args, wire_kwargs, (), grad, None))
        target = args[0] if args else None
        if type(target) is PointerTensor and outputs:
            target._set_meta(outputs[0])
            return target
        return None
    if inferred.container is None:  # one result: the common case, kept short
        result_id = new_id()
        location._enqueue((protocol.OP, name, wire_args, wire_kwargs, (result_id,), grad, None))
        return PointerTensor._wrap(Pointer(location, result_id, outputs[0], route=route))
    result_ids = tuple([new_id() for _ in outputs])
    location._enqueue((protocol.OP, name, wire_args, wire_kwargs, result_ids, grad, None))
    return inferred.container(
        [
            make_pointer(location, result_id, meta, route=route)
            for result_id, meta in zip(result_ids, outputs, strict=True)
        ]
    )


_INPLACE: dict[str, bool] = {}


def _is_inplace(name: str) -> bool:
    """Whether an op mutates its first argument (memoised: it runs on every op)."""
    inplace = _INPLACE.get(name)
    if inplace is None:
        inplace = _INPLACE[name] = is_inplace(name)
    return inplace


def _call_and_describe(
    location: BaseWorker, name: str, wire_args: tuple[Any, ...], wire_kwargs: dict[str, Any]
) -> Any:
    """Run an op whose result the client cannot infer, and ask the worker what it made."""
    result_id = new_id()
    described = location._request(  # a chain forwards this; the reply comes from the last hop
        [protocol.OP, name, wire_args, wire_kwargs, (result_id,), torch.is_grad_enabled(), None],
        f"op {name}",
    )
    shape, dtype, requires_grad = described[0]
    return make_pointer(
        location, result_id, (tuple(shape), codec.dtype_from_name(dtype), bool(requires_grad))
    )


# ---------------------------------------------------------------- local answers


def _run_locally(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def _refuse_value(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    what = getattr(func, "__name__", "reading the value")
    raise GetRequiredError(f"{what}()", repr(args[0].child) if args else "the pointer")


_METADATA_METHODS = (
    "dim",
    "size",
    "numel",
    "nelement",
    "element_size",
    "is_floating_point",
    "is_complex",
    "ndimension",
    "is_contiguous",
    "stride",
    "get_device",
    "__len__",
    "is_signed",
    "has_names",
)
_VALUE_METHODS = (
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__array__",
    "data_ptr",
    "storage",
    "untyped_storage",
    "__reduce_ex__",
    "equal",
    "allclose",
    "is_nonzero",
    "__contains__",
)
#: every callable that reads a tensor's values: a pointer refuses them (call .get()), and a
#: plan refuses them while tracing (its control flow cannot depend on data)
VALUE_READS: frozenset[Any] = frozenset(
    [getattr(torch.Tensor, name) for name in _VALUE_METHODS if hasattr(torch.Tensor, name)]
    + [torch.equal, torch.allclose, torch.is_nonzero]
)
_METADATA_ATTRIBUTES = (
    "shape",
    "dtype",
    "device",
    "requires_grad",
    "is_leaf",
    "ndim",
    "layout",
    "is_cuda",
    "is_sparse",
    "is_quantized",
    "is_meta",
    "is_mkldnn",
    "is_nested",
    "names",
    "itemsize",
    "nbytes",
    "is_cpu",
    "is_xpu",
    "is_mps",
    "output_nr",
    "_version",
    "grad_fn",
    "_backward_hooks",
    "_base",
    "_post_accumulate_grad_hooks",
    "retains_grad",
)

_LOCAL_HANDLERS: dict[Any, Callable[..., Any]] = {}
for _method_name in _METADATA_METHODS:
    if hasattr(torch.Tensor, _method_name):
        _LOCAL_HANDLERS[getattr(torch.Tensor, _method_name)] = _run_locally
for _value_read in VALUE_READS:
    _LOCAL_HANDLERS[_value_read] = _refuse_value

_ATTRIBUTE_NAMES: dict[Any, str] = {}
for _cls in torch.Tensor.__mro__:
    for _attr_name, _descriptor in vars(_cls).items():
        if type(_descriptor).__name__ == "getset_descriptor":
            _ATTRIBUTE_NAMES.setdefault(_descriptor, _attr_name)


class PointerTensor(torch.Tensor):
    """A tensor whose data lives on a worker (PySyft's ``(Wrapper)>[PointerTensor ...]``)."""

    child: Pointer
    #: set on pointers ``worker.search`` returns: the object's tags and description (PySyft),
    #: and whether the worker's operator hosts it privately (then it may be computed on, but
    #: ``.get()``, ``.move()`` and ``.send()`` raise GetNotPermittedError)
    tags: set[str] | None = None
    description: str | None = None
    private: bool = False

    @staticmethod
    def _wrap(pointer: Pointer) -> Any:
        shape, dtype, requires_grad = pointer.meta
        wrapper = torch.Tensor._make_wrapper_subclass(
            PointerTensor,
            shape,
            dtype=dtype,
            device=torch.device("cpu"),
            requires_grad=requires_grad,
        )
        wrapper.child = pointer
        return wrapper

    # -- PySyft's conveniences -----------------------------------------------------------
    @property
    def location(self) -> BaseWorker:
        return self.child.location

    @property
    def id_at_location(self) -> int:
        return self.child.id_at_location

    @property
    def id(self) -> int:
        return self.child.id

    @property
    def owner(self) -> Any:
        return self.child.owner

    @property
    def gc(self) -> bool:
        return self.child.garbage_collect_data

    @gc.setter
    def gc(self, value: bool) -> None:
        self.child.garbage_collect_data = bool(value)

    garbage_collection = gc

    @property
    def disable_gc(self) -> Any:
        self.child.garbage_collect_data = False
        return self

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        return f"(Wrapper)>{self.child!r}"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        raise GetRequiredError("bool()", repr(self.child))

    def __float__(self) -> float:
        raise GetRequiredError("float()", repr(self.child))

    def __int__(self) -> int:
        raise GetRequiredError("int()", repr(self.child))

    def item(self) -> Any:
        raise GetRequiredError(".item()", repr(self.child))

    def tolist(self) -> Any:
        raise GetRequiredError(".tolist()", repr(self.child))

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise GetRequiredError(".numpy()", repr(self.child))

    def _set_meta(self, meta: Meta) -> None:
        """An in-place op changed what the remote tensor is (requires_grad_, for one)."""
        old = self.child.meta
        self.child.meta = meta
        if meta[2] != old[2]:
            _run_locally(torch.Tensor.requires_grad_, (self, meta[2]), {})

    # -- moving data -----------------------------------------------------------------------
    def send(self, *locations: Any, **options: Any) -> Any:
        """Send this *pointer* onward: the new worker keeps a pointer to the data (p2p)."""
        from client.remote import SEND_OPTIONS, send_pointer
        from client.unsupported import check_options

        check_options("ptr.send", options, SEND_OPTIONS)
        return send_pointer(self, locations)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        """Bring the object here; the worker forgets it (a pointer-to-pointer gives a pointer)."""
        from client.remote import GET_OPTIONS, get_pointer
        from client.unsupported import check_options

        if args:
            raise TypeError(f"ptr.get() takes no positional arguments, not {args!r}")
        check_options("ptr.get", kwargs, GET_OPTIONS)
        return get_pointer(self)

    def allowed_to_get(self) -> bool:
        """Whether its worker lets you ``.get()`` it (PySyft's ``allowed_to_get``).

        The worker answers from its ownership table (worker/access.py): your own objects,
        yes; data its operator hosts, no (``.get()`` raises GetNotPermittedError).
        """
        pointer = self.child
        return bool(
            pointer.location._request(
                [protocol.ALLOWED_TO_GET, pointer.id_at_location, None],
                f"ask whether {pointer!r} may be fetched",
            )
        )

    def get_(self) -> Any:
        """Bring the data back into this very object (it is a local tensor again); returns it."""
        from client.remote import get_in_place

        return get_in_place(self)

    def send_(self, *locations: Any) -> Any:
        """Send this pointer onward, in place: this object becomes the new pointer."""
        from client.remote import send_in_place

        return send_in_place(self, locations)

    def remote_send(self, destination: Any) -> Any:
        """The data goes from its worker to ``destination``; this becomes a pointer chain."""
        from client.remote import remote_send_pointer

        return remote_send_pointer(self, destination)

    def move(self, destination: Any) -> Any:
        """Send the data straight from its worker to ``destination`` (same id); returns self."""
        from client.remote import move_pointer

        return move_pointer(self, destination)

    def remote_get(self) -> Any:
        """On me -> alice -> bob: bob sends the data to alice, under the id alice had."""
        from client.remote import remote_get_pointer

        return remote_get_pointer(self)

    def copy(self) -> Any:
        """A remote copy (a new object on the same worker)."""
        return self.clone()

    # -- interception ------------------------------------------------------------------------
    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        handler = _LOCAL_HANDLERS.get(func)
        if handler is not None:
            return handler(func, args, kwargs)
        if type(func) is MethodWrapperType:
            return _attribute_access(func, args)
        return _remote_call(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        raise RuntimeError(
            f"{func} reached a PointerTensor below __torch_function__; this is a TensorFleet "
            "bug: please report it with the code that triggered it."
        )


def _attribute_access(func: MethodWrapperType, args: tuple[Any, ...]) -> Any:
    """``p.grad``, ``p.data`` and the metadata properties; ``p.grad = ...`` and friends."""
    name = _ATTRIBUTE_NAMES.get(func.__self__)
    target = args[0]
    if func.__name__ == "__get__":
        if name in ("grad", "data"):
            return _attribute_pointer(target, name)
        if name in _METADATA_ATTRIBUTES:
            if name == "grad_fn":
                return None  # the graph lives on the worker
            return _run_locally(func, args, {})
        if name in ("T", "mT", "H", "mH"):
            return target.t() if name in ("T", "H") else target.transpose(-2, -1)
        raise AttributeError(
            f"TensorFleet pointers do not support the attribute .{name} yet; call .get() first"
        )
    if func.__name__ == "__set__" and name in ("grad", "data", "requires_grad"):
        return _set_attribute(target, name, args[1])
    raise AttributeError(f"cannot set .{name} on a pointer")


def _attribute_pointer(target: Any, attr: str) -> Any:
    pointer: Pointer = target.child
    if pointer.point_to_attr is not None:
        raise AttributeError(
            f"{pointer!r}.{attr}: attributes of attributes are not supported; call .clone() first"
        )
    shape, dtype, requires_grad = pointer.meta
    grad_is_none = (
        not requires_grad or pointer.grad_cleared_epoch == pointer.location.backward_epoch
    )
    if attr == "grad" and grad_is_none:
        return None
    return PointerTensor._wrap(
        Pointer(
            pointer.location,
            pointer.id_at_location,
            (shape, dtype, False),
            obj_id=pointer.id,
            garbage_collect_data=False,
            point_to_attr=attr,
            owner=pointer.owner,
            route=pointer.route,
        )
    )


def _set_attribute(target: Any, attr: str, value: Any) -> None:
    pointer: Pointer = target.child
    if type(value) is PointerTensor:
        if value.child.location is not pointer.location:
            raise TensorsNotCollocatedException(
                f"setting .{attr}",
                repr(pointer),
                pointer.location.id,
                repr(value.child),
                value.child.location.id,
            )
        wire_value: Any = value.child.ref
    elif isinstance(value, torch.Tensor):
        raise TensorsNotCollocatedException(
            f"setting .{attr}", repr(pointer), pointer.location.id, _local_label(value), "me"
        )
    else:
        wire_value = value
    if pointer.route is not None:
        pointer.location.session.note_route(pointer.route)
    pointer.location._enqueue([protocol.SETATTR, pointer.ref, attr, wire_value])
    if attr == "grad":
        pointer.grad_cleared_epoch = pointer.location.backward_epoch if value is None else -1
    elif attr == "requires_grad":
        shape, dtype, _ = pointer.meta
        target._set_meta((shape, dtype, bool(value)))
