"""Plans: a function or a model traced once, sent once, then run with one command per call.

``@sy.func2plan(args_shape=[...])`` and ``class Net(sy.Plan)`` build a plan by
running the function (or ``forward``) on example tensors under a
:class:`torch.overrides.TorchFunctionMode` that records every torch call:
``torch.*``, ``torch.nn.functional.*``, tensor methods and operators. The
record is an op list in wire form (op wire names, arguments with
:class:`~broker.protocol.Slot` markers for tensors), and every tensor the
function uses that is not derived from its inputs (a model's parameters and
buffers, a constant) becomes a *state* tensor that travels with the plan.
Nothing travels as pickle or Python source; the format is described in
``broker/plan_format.py``; ``worker/plans.py`` checks every op against the
worker's allowlist when a plan arrives.

Python control flow runs once, at build time: a plan is the straight line of
ops that one call made. Reading a tensor's values while building (``bool(x)``,
``x.item()``) is refused; reading its shape makes the plan specific to the
shapes it was built with, and a call with other shapes is refused rather than
silently computing something else.

``plan.send(bob)`` returns a :class:`PointerPlan` (the same one while it lives);
calling it on pointers at bob queues one ``run_plan`` command and returns
pointers to the results at once, their shapes inferred by replaying the op list
on meta tensors (cached per input signature). When the last reference to a
``PointerPlan`` goes, bob deletes the plan.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MethodWrapperType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from broker import codec, protocol
from broker.errors import PlanNotBuiltError, TensorsNotCollocatedException
from broker.meta import Meta
from broker.ops import wire_name
from broker.plan_format import plan_data
from broker.protocol import Slot, bind_slots
from broker.tree import map_leaves
from client.pointer import VALUE_READS, PointerTensor, make_pointer, new_id

# ---------------------------------------------------------------------------- tracing

#: calls that read values: a plan cannot branch on data (its control flow is fixed at build)
#: calls that read sizes: the plan is then specific to the shapes it was built with
_SHAPE_READS = {
    getattr(torch.Tensor, name)
    for name in ("size", "numel", "nelement", "__len__", "stride")
    if hasattr(torch.Tensor, name)
}
#: attribute reads that mean "sizes"
_SHAPE_ATTRIBUTES = ("shape",)
_REFUSED_ATTRIBUTES = ("grad", "data", "_base", "H", "mH")

_ATTRIBUTE_NAMES: dict[Any, str] = {}
for _cls in torch.Tensor.__mro__:
    for _attr_name, _descriptor in vars(_cls).items():
        if type(_descriptor).__name__ == "getset_descriptor":
            _ATTRIBUTE_NAMES.setdefault(_descriptor, _attr_name)


class _Var:
    """A traced tensor in a recorded op, before slots are numbered."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


@dataclass
class _Recorded:
    func: Callable[..., Any]
    name: str
    args: Any
    kwargs: Any
    outs: list[_Var | None]


class _Tracer(TorchFunctionMode):
    """Records the torch calls a function makes on its inputs (and on tensors it meets)."""

    def __init__(self, plan_name: str) -> None:
        super().__init__()
        self.plan_name = plan_name
        self._var_of: dict[int, _Var] = {}
        self._alive: list[torch.Tensor] = []  # keeps ids unique while tracing
        self.inputs: list[_Var] = []
        self.state: list[torch.Tensor] = []
        self.state_vars: list[_Var] = []
        self.op_vars: list[_Var] = []
        self.ops: list[_Recorded] = []
        self.reads_shapes = False
        self._count = 0

    def _new(self, tensor: torch.Tensor) -> _Var:
        var = _Var(self._count)
        self._count += 1
        self._var_of[id(tensor)] = var
        self._alive.append(tensor)
        return var

    def add_input(self, tensor: torch.Tensor) -> None:
        self.inputs.append(self._new(tensor))

    def var(self, tensor: torch.Tensor) -> _Var:
        """The variable of ``tensor``; a tensor met for the first time becomes state."""
        var = self._var_of.get(id(tensor))
        if var is None:
            if type(tensor) is PointerTensor:
                raise ValueError(
                    f"The plan {self.plan_name} uses the pointer {tensor!r}: plans are built on "
                    "local tensors and models (build before sending the model, or .get() it)."
                )
            var = self._new(tensor)
            self.state.append(tensor)
            self.state_vars.append(var)
        return var

    def _wire(self, value: Any) -> tuple[Any, bool]:
        if isinstance(value, torch.Tensor):
            return self.var(value), True
        if isinstance(value, list | tuple):
            items = [self._wire(item) for item in value]
            found = any(has for _, has in items)
            if not found:
                return value, False
            converted = [item for item, _ in items]
            return (converted if isinstance(value, list) else tuple(converted)), True
        if isinstance(value, dict):
            pairs = {key: self._wire(item) for key, item in value.items()}
            if not any(has for _, has in pairs.values()):
                return value, False
            return {key: item for key, (item, _) in pairs.items()}, True
        return value, False

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if type(func) is MethodWrapperType:
            return self._attribute(func, args, kwargs)
        if func in VALUE_READS:
            raise ValueError(
                f"The plan {self.plan_name} read a tensor's value ({func.__name__}) while "
                "being built. A plan is the straight line of torch operations one call makes: "
                "it cannot branch on data. Compute with tensor ops instead (torch.where, "
                "clamp, masks)."
            )
        if func in _SHAPE_READS:
            self.reads_shapes = True
            return func(*args, **kwargs)
        if func is torch.Tensor.__iter__:  # for row in x: rows are x.unbind(0)
            return iter(self._record(torch.Tensor.unbind, (args[0],), {}))
        return self._record(func, args, kwargs)

    def _attribute(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = _ATTRIBUTE_NAMES.get(func.__self__, "?")
        if func.__name__ != "__get__":
            raise ValueError(
                f"The plan {self.plan_name} sets .{name} on a tensor; plans "
                "record torch operations only"
            )
        if name in _REFUSED_ATTRIBUTES:
            raise ValueError(
                f"The plan {self.plan_name} reads .{name}; plans record torch "
                "operations only (use .detach(), .clone() or an op instead)"
            )
        if name == "T":
            tensor = args[0]
            if tensor.dim() > 2:
                return self._record(
                    torch.Tensor.permute, (tensor, *range(tensor.dim() - 1, -1, -1)), {}
                )
            return self._record(torch.Tensor.t, (tensor,), {})
        if name == "mT":
            return self._record(torch.Tensor.transpose, (args[0], -2, -1), {})
        if name in _SHAPE_ATTRIBUTES:
            self.reads_shapes = True
        return func(*args, **kwargs)

    def _record(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = func(*args, **kwargs)
        if result is None:
            returned: list[torch.Tensor] = []
        elif isinstance(result, torch.Tensor):
            returned = [result]
        elif isinstance(result, list | tuple) and all(
            isinstance(item, torch.Tensor) for item in result
        ):
            returned = list(result)
        else:
            return result  # metadata (dim, is_floating_point, ...): not an op of the plan
        wire_args, has_args = self._wire(list(args))
        wire_kwargs, has_kwargs = self._wire(kwargs)
        if not (has_args or has_kwargs):
            return result  # a factory (torch.zeros, torch.tensor): its result is a constant
        outs = [self._out(tensor) for tensor in returned]  # after the args: in-place is known
        self.ops.append(_Recorded(func, wire_name(func), wire_args, wire_kwargs, outs))
        return result

    def _out(self, tensor: torch.Tensor) -> _Var | None:
        if id(tensor) in self._var_of:  # an in-place op returns its input
            return None
        var = self._new(tensor)
        self.op_vars.append(var)
        return var


# ---------------------------------------------------------------------------- the trace


def _to_slots(value: Any, slot_of: dict[int, int]) -> Any:
    return map_leaves(
        value, lambda leaf: Slot(slot_of[leaf.number]) if type(leaf) is _Var else leaf
    )


def _meta_of(tensor: torch.Tensor) -> Meta:
    return (tuple(tensor.shape), tensor.dtype, tensor.requires_grad)


def _meta_tensor(meta: Meta) -> torch.Tensor:
    shape, dtype, requires_grad = meta
    tensor = torch.empty(shape, dtype=dtype, device="meta")
    return tensor.requires_grad_(True) if requires_grad else tensor


@dataclass
class Trace:
    """A built plan: the op list in wire form, its state and what a call returns."""

    name: str
    inputs: int
    input_metas: tuple[Meta, ...]
    state: list[torch.Tensor]
    ops: list[list[Any]]
    funcs: list[Callable[..., Any]]
    outputs: list[int]
    #: None: one tensor; otherwise the container type (tuple or list) of the results
    container: type | None
    reads_shapes: bool
    _metas: dict[Any, tuple[Meta, ...] | None] = field(default_factory=dict)

    def wire(self, tags: Any = (), description: str | None = None) -> dict[str, Any]:
        """The plan data (:mod:`broker.plan_format`), its state encoded now."""
        return plan_data(
            self.name,
            self.inputs,
            [codec.tensor_ext(_without_grad(t)) for t in self.state],
            self.ops,
            self.outputs,
            list(tags),
            description,
        )

    def output_metas(self, input_metas: tuple[Meta, ...], grad: bool) -> tuple[Meta, ...] | None:
        """The results' metadata for inputs like these, from a meta-tensor replay (cached)."""
        key = (input_metas, grad)
        try:
            return self._metas[key]
        except KeyError:
            pass
        if self.reads_shapes and tuple(m[0] for m in input_metas) != tuple(
            m[0] for m in self.input_metas
        ):
            shapes = ", ".join(str(m[0]) for m in self.input_metas)
            given = ", ".join(str(m[0]) for m in input_metas)
            raise ValueError(
                f"The plan {self.name} read a tensor's shape while being built, so it is "
                f"specific to the shapes it was built with ({shapes}); it was called with "
                f"({given}). Build it with tensors of these shapes (plan.build(...)), or avoid "
                "reading .shape/.size() in the function (view(-1, n), flatten(1))."
            )
        metas = self._replay(input_metas, grad)
        if len(self._metas) > 1000:
            self._metas.clear()
        self._metas[key] = metas
        return metas

    def _replay(self, input_metas: tuple[Meta, ...], grad: bool) -> tuple[Meta, ...] | None:
        inputs = [_meta_tensor(m) for m in input_metas]
        state = [_meta_tensor(_meta_of(t)) for t in self.state]
        try:
            with torch.set_grad_enabled(grad):
                outputs = self.run(inputs, state)
        except Exception:  # no meta kernel: the worker will describe the results
            return None
        return tuple(_meta_of(tensor) for tensor in outputs)

    def run(self, inputs: list[Any], state: list[Any] | None = None) -> list[Any]:
        """Replay the op list on ``inputs`` (and ``state``, default the plan's own)."""
        if len(inputs) != self.inputs:
            raise TypeError(
                f"the plan {self.name} takes {self.inputs} tensor(s), {len(inputs)} were given"
            )
        slots: list[Any] = [*inputs, *(self.state if state is None else state)]
        for func, (_, args, kwargs, outs) in zip(self.funcs, self.ops, strict=True):
            result = func(*bind_slots(args, slots), **bind_slots(kwargs, slots))
            results = (result,) if isinstance(result, torch.Tensor) else result or ()
            slots += [value for out, value in zip(outs, results, strict=True) if out is not None]
        return [slots[index] for index in self.outputs]

    def readable(self) -> list[str]:
        """One line of pseudo-code per op (PySyft's ``readable_plan``)."""
        return [line.strip() for line in self.code().splitlines()[1 + bool(self.state) : -1]]

    def pack(self, results: list[Any]) -> Any:
        return results[0] if self.container is None else self.container(results)

    def code(self) -> str:
        """The plan as pseudo-code, one op per line (PySyft's readable plan)."""
        lines = [f"def {self.name}({', '.join(f'_{i}' for i in range(self.inputs))}):"]
        if self.state:
            first = self.inputs
            lines.append(f"    # state: _{first}.._{first + len(self.state) - 1}")
        for name, args, kwargs, outs in self.ops:
            shown = [_show(arg) for arg in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()]
            targets = ", ".join(f"_{out}" if out is not None else "_" for out in outs)
            prefix = f"{targets} = " if targets else ""
            lines.append(f"    {prefix}{name}({', '.join(shown)})")
        lines.append(f"    return {', '.join(f'_{out}' for out in self.outputs)}")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if type(value) is Slot:
        return f"_{value.index}"
    if type(value) is list:
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if type(value) is tuple:
        return "(" + ", ".join(_show(item) for item in value) + ")"
    return repr(value)


def _without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """State travels without its local .grad."""
    if not tensor.is_leaf or tensor.grad is None:
        return tensor
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(tensor.detach(), requires_grad=tensor.requires_grad)
    return tensor.detach().requires_grad_(tensor.requires_grad)


def trace(
    function: Callable[..., Any],
    examples: Sequence[Any],
    name: str,
    state: Sequence[torch.Tensor] = (),
) -> Trace:
    """Run ``function`` on copies of ``examples`` and record it as a :class:`Trace`.

    ``state``: tensors declared as the plan's state (``func2plan(state=...)``); they
    are its first state slots, in order, whether the function reads them or not.
    """
    inputs: list[torch.Tensor] = []
    for position, example in enumerate(examples):
        if type(example) is PointerTensor:  # build from its metadata: the data stays remote
            shape, dtype, requires_grad = example.child.meta
            copy = torch.ones(shape, dtype=dtype).requires_grad_(requires_grad)
        elif isinstance(example, torch.Tensor):
            copy = example.detach().clone().requires_grad_(example.requires_grad)
        else:
            raise TypeError(
                f"The plan {name} takes tensors; argument {position} is a {type(example).__name__}"
            )
        inputs.append(copy)
    if not inputs:
        raise TypeError(f"The plan {name} needs at least one tensor argument to build on")
    tracer = _Tracer(name)
    for tensor in inputs:
        tracer.add_input(tensor)
    for tensor in state:
        tracer.var(tensor)
    with tracer:
        result = function(*inputs)
    if isinstance(result, torch.Tensor):
        container: type | None = None
        returned = [result]
    elif (
        isinstance(result, list | tuple)
        and result
        and all(isinstance(item, torch.Tensor) for item in result)
    ):
        container = list if isinstance(result, list) else tuple
        returned = list(result)
    else:
        raise TypeError(
            f"The plan {name} must return a tensor or a tuple/list of tensors, "
            f"not {type(result).__name__}"
        )
    output_vars = [tracer.var(tensor) for tensor in returned]  # a constant output is state
    ordered = [*tracer.inputs, *tracer.state_vars, *tracer.op_vars]
    slot_of = {var.number: index for index, var in enumerate(ordered)}
    ops = [
        [
            op.name,
            _to_slots(op.args, slot_of),
            _to_slots(op.kwargs, slot_of),
            [None if out is None else slot_of[out.number] for out in op.outs],
        ]
        for op in tracer.ops
    ]
    built = Trace(
        name,
        len(inputs),
        tuple(_meta_of(t) for t in inputs),
        list(tracer.state),
        ops,
        [op.func for op in tracer.ops],
        [slot_of[var.number] for var in output_vars],
        container,
        tracer.reads_shapes,
    )
    try:
        codec.encode(ops)
    except TypeError as error:
        raise TypeError(f"The plan {name} passes an argument that cannot travel: {error}") from None
    built._metas[(built.input_metas, torch.is_grad_enabled())] = tuple(
        _meta_of(t) for t in returned
    )
    return built


# ---------------------------------------------------------------------------- plans


def _worker_key(worker: Any) -> tuple[int, str]:
    return (id(worker.session), worker.id)


class State:
    """A plan's state tensors (PySyft's ``plan.state``); ``read()`` returns them in order.

    A function made a plan with ``func2plan(state=(t, ...))`` gets its State as its last
    argument and reads it: ``(bias,) = state.read()``. The tensors travel with the plan
    when it is sent, and are what a call on the worker uses.
    """

    def __init__(self, tensors: Any) -> None:
        self._tensors: list[torch.Tensor] = list(tensors)

    def read(self) -> list[torch.Tensor]:
        """The state tensors, in order (the same objects the plan uses)."""
        return list(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"<State of {len(self._tensors)} tensor(s)>"


class Plan(nn.Module):
    """A function or model that can be built into an op list and sent to workers.

    Subclass it like ``nn.Module`` (layers in ``__init__``, a ``forward``), or
    make one from a function with :func:`func2plan`.
    """

    def __init__(
        self,
        function: Callable[..., Any] | None = None,
        name: str | None = None,
        state: Sequence[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self._function = function
        #: tensors declared with func2plan(state=...): the function's last argument
        self._state_tensors = None if state is None else list(state)
        #: plan.tag(...) / plan.describe(...): they travel with the plan (fetch_plan("#tag"))
        self.tags: set[str] = set()
        self.description: str | None = None
        self.plan_name = name or getattr(function, "__name__", None) or type(self).__name__
        self.id = new_id()
        self._trace: Trace | None = None
        self._pointers: weakref.WeakValueDictionary[tuple[int, str], PointerPlan] = (
            weakref.WeakValueDictionary()
        )
        #: plans sent implicitly, by calling the plan on pointers: they live as long as the plan
        self._implicit: dict[tuple[int, str], PointerPlan] = {}

    def forward(self, *args: Any) -> Any:
        if self._function is None:
            if self._trace is not None and type(self) is Plan:  # fetched: replay its ops
                return self._trace.pack(self._trace.run(list(args)))
            raise NotImplementedError(f"{type(self).__name__} needs a forward() method")
        if self._state_tensors is not None:
            return self._function(*args, State(self._state_tensors))
        return self._function(*args)

    @property
    def state(self) -> State:
        """The plan's state: what it uses besides its inputs (declared state, parameters)."""
        if self._trace is not None:
            return State(self._trace.state)
        if self._state_tensors is not None:
            return State(self._state_tensors)
        return State(self.parameters())

    @property
    def readable_plan(self) -> list[str]:
        """The traced ops, one line of pseudo-code each (``_2 = torch.add(_0, _1)``)."""
        return self.trace.readable()

    #: PySyft 0.2.4's other name for the traced ops
    actions = readable_plan

    def tag(self, *tags: str) -> Plan:
        """``plan.tag("#net")``: tags sent with the plan; returns the plan."""
        for item in tags:
            if not isinstance(item, str) or not item or len(item.split()) != 1 or len(item) > 256:
                raise TypeError(
                    "a tag is a non-empty string without spaces (at most 256 characters) such "
                    f"as '#net', not {item!r:.40}"
                )
        self.tags |= set(tags)
        return self

    def describe(self, description: str) -> Plan:
        """``plan.describe("a two-layer net")``: sent with the plan; returns the plan."""
        if not isinstance(description, str):
            raise TypeError(f"a description is a string, not {type(description).__name__}")
        self.description = description
        return self

    @classmethod
    def from_trace(cls, built: Trace) -> Plan:
        """A plan made of a trace alone (a fetched plan): calling it replays the ops."""
        plan = cls(None, built.name)
        plan._trace = built
        return plan

    @property
    def is_built(self) -> bool:
        return self._trace is not None

    @property
    def trace(self) -> Trace:
        """The built op list; PlanNotBuiltError before ``build``."""
        if self._trace is None:
            raise PlanNotBuiltError(self.plan_name)
        return self._trace

    @property
    def code(self) -> str:
        """The built plan as pseudo-code."""
        return self.trace.code()

    def build(self, *args: Any) -> Plan:
        """Trace ``forward`` on example tensors (or pointers: their shapes); returns the plan."""
        self._trace = trace(self.forward, args, self.plan_name, self._state_tensors or ())
        self._pointers = weakref.WeakValueDictionary()  # sent copies stay with their pointers
        self._implicit = {}
        return self

    def send(self, *locations: Any) -> PointerPlan:
        """Send the plan (ops and state) to each worker; returns the plan pointer.

        Sending again to a worker whose pointer is alive returns that pointer.
        """
        if not locations:
            raise TypeError("send() needs at least one worker: plan.send(bob)")
        if self._trace is None:
            raise PlanNotBuiltError(self.plan_name)
        parts = [self._send_one(location) for location in locations]
        return parts[0] if len(parts) == 1 else PointerPlan.merge(parts)

    def _send_one(self, location: Any) -> PointerPlan:
        from client.remote import _check_worker

        location = _check_worker(location)
        key = _worker_key(location)
        pointer = self._pointers.get(key)
        if pointer is not None:
            return pointer
        built = self.trace
        plan_id = new_id()
        location._request(
            [protocol.PLAN, plan_id, built.wire(self.tags, self.description), None],
            f"send plan {self.plan_name}",
        )
        pointer = PointerPlan(built, {location.id: _RemotePlan(location, plan_id)})
        self._pointers[key] = pointer
        return pointer

    def copy(self) -> Plan:
        """A deep copy (own parameters, same build), not sent anywhere yet."""
        sent = self._pointers, self._implicit
        self._pointers, self._implicit = weakref.WeakValueDictionary(), {}
        try:
            return copy.deepcopy(self)
        finally:
            self._pointers, self._implicit = sent

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run locally on local tensors; on pointers, run where they are (one command)."""
        if args and type(args[0]) is PointerTensor:
            if self._trace is None:
                raise PlanNotBuiltError(self.plan_name)
            location = args[0].child.location
            key = _worker_key(location)
            pointer = self._pointers.get(key) or self._implicit.get(key)
            if pointer is None:
                pointer = self._implicit[key] = self.send(location)
            return pointer(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def extra_repr(self) -> str:
        state = f"{len(self.trace.ops)} ops" if self.is_built else "not built"
        return f"name={self.plan_name}, {state}"


class _RemotePlan:
    """A plan's copy on one worker; when the last PointerPlan using it goes, it is deleted."""

    __slots__ = ("__weakref__", "garbage_collect_data", "id_at_location", "location")

    def __init__(self, location: Any, id_at_location: int) -> None:
        self.location = location
        self.id_at_location = id_at_location
        self.garbage_collect_data = True

    def __del__(self) -> None:
        if self.garbage_collect_data:
            # at interpreter exit the session may already be gone
            with contextlib.suppress(Exception):
                self.location._finalize_delete(self.id_at_location)


class PointerPlan:
    """A plan on one or more workers; call it on pointers there to run it (one command)."""

    def __init__(self, built: Trace, remotes: dict[str, _RemotePlan]) -> None:
        self._trace = built
        self._remotes = remotes
        self.id = new_id()

    @classmethod
    def merge(cls, parts: Sequence[PointerPlan]) -> PointerPlan:
        remotes: dict[str, _RemotePlan] = {}
        for part in parts:
            remotes.update(part._remotes)
        return cls(parts[0]._trace, remotes)

    @property
    def locations(self) -> list[Any]:
        return [remote.location for remote in self._remotes.values()]

    @property
    def location(self) -> Any:
        return next(iter(self._remotes.values())).location

    @property
    def id_at_location(self) -> int:
        return next(iter(self._remotes.values())).id_at_location

    def get(self) -> Plan:
        """The plan, fetched from its (first) worker, which keeps its copy (PySyft 0.2.4)."""
        from client.plan_fetch import fetch_plan

        return fetch_plan(self.location, self.id_at_location)

    def __repr__(self) -> str:
        targets = ", ".join(
            f"{worker_id}:{remote.id_at_location}" for worker_id, remote in self._remotes.items()
        )
        return f"[PointerPlan {self._trace.name} | me:{self.id} -> {targets}]"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        built = self._trace
        if kwargs:
            raise TypeError(f"the plan {built.name} takes its tensors as positional arguments")
        if len(args) != built.inputs:
            raise TypeError(
                f"the plan {built.name} takes {built.inputs} tensor(s), {len(args)} were given"
            )
        first = args[0]
        if type(first) is not PointerTensor:
            raise TypeError(
                f"a sent plan runs on pointers to its worker(s) "
                f"({', '.join(self._remotes)}); argument 0 is not one: "
                "call the local plan on local tensors, or .send() them"
            )
        location = first.child.location
        remote = self._remotes.get(location.id)
        if remote is None or remote.location is not location:
            raise RuntimeError(
                f"Requested to run the plan {built.name} on {location.id}, where argument 0 "
                f"is, but the plan was sent to {', '.join(self._remotes)}: plan.send("
                f"{location.id}) first, or .move() the data to the plan."
            )
        refs, metas = [], []
        for position, arg in enumerate(args):
            if type(arg) is not PointerTensor:
                label = f"the local tensor {arg!r}" if isinstance(arg, torch.Tensor) else repr(arg)
                raise TensorsNotCollocatedException(
                    f"plan {built.name}",
                    repr(first.child),
                    location.id,
                    f"argument {position}, {label}",
                    "me",
                )
            pointer = arg.child
            if pointer.location is not location:
                raise TensorsNotCollocatedException(
                    f"plan {built.name}",
                    repr(first.child),
                    location.id,
                    repr(pointer),
                    pointer.location.id,
                )
            if pointer.route is not None:
                raise ValueError(
                    f"{pointer!r} is a pointer to a pointer; a plan runs where "
                    "its inputs' data is: .remote_get() or .move() it first"
                )
            refs.append(pointer.ref)
            metas.append(pointer.meta)
        grad = torch.is_grad_enabled()
        outputs = built.output_metas(tuple(metas), grad)
        result_ids = [new_id() for _ in built.outputs]
        command = [protocol.RUN_PLAN, remote.id_at_location, refs, result_ids, grad, None]
        if outputs is None:  # the client cannot infer the shapes: the worker describes them
            described = location._request(command, f"run plan {built.name}")
            outputs = tuple(
                (tuple(shape), codec.dtype_from_name(dtype), bool(requires_grad))
                for shape, dtype, requires_grad in described
            )
        else:
            location._enqueue(command)
        return built.pack(
            [
                make_pointer(location, result_id, meta)
                for result_id, meta in zip(result_ids, outputs, strict=True)
            ]
        )


# ---------------------------------------------------------------------------- func2plan


def _check_args_shape(args_shape: Any, name: str) -> list[tuple[int, ...]]:
    if isinstance(args_shape, str | bytes) or not isinstance(args_shape, Sequence):
        raise ValueError(
            f"Invalid args_shape {args_shape!r} for the plan {name}: give one "
            "shape per argument, such as args_shape=[(-1, 2), (3,)]"
        )
    if not args_shape:
        raise ValueError(
            f"Invalid args_shape for the plan {name}: it is empty; a plan takes at least one tensor"
        )
    shapes = []
    for position, shape in enumerate(args_shape):
        if not isinstance(shape, tuple | list) or not all(
            type(dim) is int and dim >= -1 for dim in shape
        ):
            raise ValueError(
                f"Invalid shape {shape!r} for argument {position} of the plan {name}: a shape "
                "is a tuple of sizes >= 0, with -1 for a size that may vary, such as (-1, 2)"
            )
        shapes.append(tuple(shape))
    return shapes


def _check_state(state: Any) -> list[torch.Tensor] | None:
    if state is None:
        return None
    if not isinstance(state, list | tuple) or not all(
        isinstance(t, torch.Tensor) and type(t) is not PointerTensor for t in state
    ):
        raise TypeError(
            f"state must be a tuple of local tensors, such as state=(torch.zeros(2),), "
            f"not {state!r:.80}"
        )
    return list(state)


def func2plan(args_shape: Any = None, state: Any = None) -> Any:
    """Decorate a function into a :class:`Plan`; with ``args_shape`` it is built at once.

    ``@sy.func2plan(args_shape=[(-1,), (-1,)])`` builds on tensors of ones of those shapes
    (-1: any size; such a dim is 1 while building). Without it, or with an empty
    ``args_shape=()``, build it later: ``plan.build(*examples)``. ``state=(t, ...)``
    declares state tensors: the function takes a :class:`State` as its last argument
    and reads them with ``state.read()``; they travel with the plan.
    """
    if callable(args_shape) and not isinstance(args_shape, Sequence):  # bare @sy.func2plan
        return Plan(args_shape)
    state_tensors = _check_state(state)

    def decorate(function: Callable[..., Any]) -> Plan:
        name = getattr(function, "__name__", "plan")
        # PySyft builds only when args_shape is given and not empty: () means "build later"
        empty = isinstance(args_shape, tuple | list) and len(args_shape) == 0
        shapes = None if args_shape is None or empty else _check_args_shape(args_shape, name)
        plan = Plan(function, name, state_tensors)
        if shapes is not None:
            examples = [torch.ones([1 if dim == -1 else dim for dim in shape]) for shape in shapes]
            try:
                plan.build(*examples)
            except Exception as error:
                raise ValueError(
                    f"Automatic build using @func2plan failed! The plan {name} could not be "
                    f"built on tensors of shapes {shapes}: {type(error).__name__}: {error}. "
                    "Check args_shape, or build it with plan.build(*example_tensors)."
                ) from error
        return plan

    return decorate
