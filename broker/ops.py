"""The op vocabulary: the wire names of the torch callables a command may name.

A command names its callable as ``torch.<fn>``, ``torch.linalg.<fn>``,
``torch.nn.functional.<fn>`` or ``Tensor.<method>``, or ``secure.<fn>`` for the
two worker-side ops of secure aggregation (broker/secure_ops.py). The lists below are the
fleet's default allowlist: workers resolve names through :func:`resolve_allowed`
and refuse everything else; the client uses :func:`wire_name` to name what
``__torch_function__`` hands it. No name from the wire is ever looked up with
``getattr`` on anything but these lists.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

from broker.secure_ops import SECURE_OPS

TENSOR_METHODS: tuple[str, ...] = (
    # arithmetic and comparison operators (a + b reaches __torch_function__ as Tensor.add)
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "__div__",
    "__rdiv__",
    "__floordiv__",
    "__rfloordiv__",
    "__mod__",
    "__rmod__",
    "__pow__",
    "__rpow__",
    "__ipow__",
    "__matmul__",
    "__rmatmul__",
    "__neg__",
    "__abs__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__and__",
    "__or__",
    "__xor__",
    "__invert__",
    "__getitem__",
    "__setitem__",
    # math
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "true_divide",
    "floor_divide",
    "remainder",
    "pow",
    "pow_",
    "neg",
    "neg_",
    "abs",
    "abs_",
    "exp",
    "exp_",
    "log",
    "log_",
    "log1p",
    "sqrt",
    "sqrt_",
    "rsqrt",
    "square",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "relu",
    "relu_",
    "sign",
    "round",
    "floor",
    "ceil",
    "trunc",
    "frac",
    "reciprocal",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "lerp",
    "lerp_",
    "addcmul",
    "addcmul_",
    "addcdiv",
    "addcdiv_",
    "mm",
    "matmul",
    "bmm",
    "mv",
    "dot",
    "addmm",
    "outer",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "logical_and",
    "logical_or",
    "logical_not",
    "where",
    "masked_fill",
    "masked_fill_",
    "softmax",
    "log_softmax",
    # reductions
    "sum",
    "mean",
    "std",
    "var",
    "prod",
    "max",
    "min",
    "argmax",
    "argmin",
    "norm",
    "cumsum",
    "topk",
    "sort",
    "argsort",
    "all",
    "any",
    "amax",
    "amin",
    # shape and copies
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "squeeze",
    "unsqueeze",
    "transpose",
    "t",
    "permute",
    "contiguous",
    "expand",
    "expand_as",
    "repeat",
    "split",
    "chunk",
    "narrow",
    "index_select",
    "gather",
    "scatter",
    "clone",
    "detach",
    "detach_",
    "copy_",
    "zero_",
    "fill_",
    "float",
    "double",
    "half",
    "long",
    "int",
    "bool",
    "type_as",
    "to",
    "new_zeros",
    "new_ones",
    "new_full",
    "normal_",
    "uniform_",
    "bernoulli",
    "requires_grad_",
    "retain_grad",
    "unbind",
    "diag",
    "tril",
    "triu",
    "flip",
    "roll",
    # autograd
    "backward",
)

TORCH_FUNCTIONS: tuple[str, ...] = (
    "add",
    "sub",
    "mul",
    "div",
    "true_divide",
    "pow",
    "neg",
    "abs",
    "exp",
    "log",
    "log1p",
    "sqrt",
    "rsqrt",
    "square",
    "sigmoid",
    "tanh",
    "relu",
    "sign",
    "round",
    "floor",
    "ceil",
    "clamp",
    "clip",
    "lerp",
    "addcmul",
    "addcdiv",
    "mm",
    "matmul",
    "bmm",
    "mv",
    "dot",
    "addmm",
    "outer",
    "einsum",
    "tensordot",
    "maximum",
    "minimum",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "where",
    "masked_fill",
    "softmax",
    "log_softmax",
    "sum",
    "mean",
    "std",
    "var",
    "prod",
    "max",
    "min",
    "argmax",
    "argmin",
    "norm",
    "dist",
    "cumsum",
    "topk",
    "sort",
    "argsort",
    "all",
    "any",
    "stack",
    "cat",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "transpose",
    "t",
    "permute",
    "split",
    "chunk",
    "narrow",
    "index_select",
    "gather",
    "clone",
    "detach",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "empty_like",
    "diag",
    "tril",
    "triu",
    "flip",
    "roll",
    "unbind",
    "conv1d",
    "conv2d",
    "dropout",
    "cosine_similarity",
    "cdist",
    "logsumexp",
    "trace",
    "celu",
    "selu",
    # the recurrent layers' kernels (nn.LSTM, nn.GRU, nn.RNN call them through torch._VF)
    "lstm",
    "gru",
    "rnn_tanh",
    "rnn_relu",
)

#: tensor factories a client may run on a worker (``bob.remote.torch.zeros(2, 3)``); their
#: size is inferred on the meta device (:func:`broker.meta.is_factory`) before they run
FACTORIES: tuple[str, ...] = (
    "zeros",
    "ones",
    "full",
    "eye",
    "arange",
    "linspace",
    "rand",
    "randn",
    "randint",
)

#: ``torch.linalg`` functions: only those whose work the per-op limits bound well (no
#: factorizations, whose cost is far above the elements they read and write)
#: ``torch.autograd`` functions: ``grad`` returns gradients as results (a training-step plan
#: records it as an op instead of reading ``.grad``, see client/federated/train_step.py)
AUTOGRAD: tuple[str, ...] = ("grad",)

LINALG: tuple[str, ...] = (
    "vector_norm",
    "vecdot",
    "matmul",
)

FUNCTIONAL: tuple[str, ...] = (
    "linear",
    "bilinear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "glu",
    "hardtanh",
    "hardsigmoid",
    "hardswish",
    "mish",
    "softsign",
    "logsigmoid",
    "tanhshrink",
    "softmin",
    "silu",
    "sigmoid",
    "tanh",
    "softplus",
    "softmax",
    "log_softmax",
    "dropout",
    "nll_loss",
    "cross_entropy",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
    "conv1d",
    "conv2d",
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "layer_norm",
    "batch_norm",
    "embedding",
    "pad",
    "normalize",
    "one_hot",
    "cosine_similarity",
)


def _named_callables() -> dict[str, Callable[..., Any]]:
    table: dict[str, Callable[..., Any]] = {}
    for name in TENSOR_METHODS:
        method = getattr(torch.Tensor, name, None)
        if method is not None:
            table[f"Tensor.{name}"] = method
    for name in TORCH_FUNCTIONS:
        function = getattr(torch, name, None)
        if function is not None:
            table[f"torch.{name}"] = function
    for name in FACTORIES:
        table[f"torch.{name}"] = getattr(torch, name)
    for name in AUTOGRAD:
        table[f"torch.autograd.{name}"] = getattr(torch.autograd, name)
    for name in LINALG:
        function = getattr(torch.linalg, name, None)
        if function is not None:
            table[f"torch.linalg.{name}"] = function
    for name in FUNCTIONAL:
        function = getattr(F, name, None)
        if function is not None:
            table[f"torch.nn.functional.{name}"] = function
    return table


#: wire name -> callable, for every name on the default allowlist (torch's callables and the
#: worker-side ops of secure aggregation, broker/secure_ops.py)
ALLOWED: dict[str, Callable[..., Any]] = {**_named_callables(), **SECURE_OPS}

_NAMES_BY_CALLABLE: dict[int, str] = {}
for _name, _callable in ALLOWED.items():
    _NAMES_BY_CALLABLE.setdefault(id(_callable), _name)


@cache
def _fallback_name(func: Callable[..., Any]) -> str:
    objclass = getattr(func, "__objclass__", None)
    if objclass is not None:  # a tensor method descriptor
        return f"Tensor.{func.__name__}"
    module = getattr(func, "__module__", None) or "torch"
    name = getattr(func, "__name__", repr(func))
    if module == "torch._C._linalg" and name.startswith("linalg_"):
        return f"torch.linalg.{name.removeprefix('linalg_')}"  # its public name
    return f"{module}.{name}"


def wire_name(func: Callable[..., Any]) -> str:
    """The wire name of a callable handed to ``__torch_function__``.

    Callables outside the default vocabulary still get a descriptive name so the
    worker can refuse them by name with a clear error.
    """
    name = _NAMES_BY_CALLABLE.get(id(func))
    return name if name is not None else _fallback_name(func)


def is_inplace(name: str) -> bool:
    """Whether the named op mutates its first argument and returns it."""
    short = name.rpartition(".")[2]
    if short.startswith("__i") and short.endswith("__") and short not in ("__invert__",):
        return True
    return short.endswith("_") and not short.endswith("__")
