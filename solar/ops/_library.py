"""The one autograd path of every kernel backend, generated from the op table (``table.OPS``).

Each op becomes two ``torch.library`` custom ops, ``solar::<op>_fwd`` and ``solar::<op>_bwd``,
with fake implementations (so ``torch.compile`` traces them) and the autograd glue between them:

    <op>_fwd(*inputs, backend) -> outputs
    <op>_bwd(grad, *inputs, *outputs, needs, backend) -> [gradient per differentiable input]

The forward saves its tensor inputs and all its outputs; the backward asks the backend only for
the gradients autograd needs.  Gradients leave the backward op in the dtype and layout of
``torch.empty_like`` of their input (what the fake promises), whatever the backend returned; a
gradient that is not needed, or whose input is None, crosses as an empty tensor and reaches
autograd as None.  Importing this module registers the ops (``ops/__init__.py`` does so on the
first kernel call).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .registry import get_impl
from .table import OPS, Op


def _like(ref: Tensor, computed: Tensor) -> Tensor:
    """``computed`` in the dtype and layout of ``torch.empty_like(ref)``, never a view."""
    if computed.dtype == ref.dtype and computed._base is None:
        if computed.stride() == ref.stride():
            return computed  # ref is dense with these strides, so empty_like(ref) has them too
        out = torch.empty_like(ref)
        if out.stride() == computed.stride():
            return computed
        return out.copy_(computed)
    return torch.empty_like(ref).copy_(computed)


def _grad_out(inp: Optional[Tensor], grad: Optional[Tensor], need: bool, ref: Tensor) -> Tensor:
    if inp is None or not need or grad is None:
        return ref.new_empty(0)
    return _like(inp, grad)


def _first_tensor(args) -> Tensor:
    return next(a for a in args if isinstance(a, Tensor))


def _schemas(op: Op) -> tuple[str, str]:
    params = ", ".join(f"{t} {n}" for n, t in op.inputs)
    outs = ", ".join("Tensor" for _ in op.outputs)
    saved = ", ".join(f"Tensor {n}" for n in op.outputs)
    return (f"({params}, str backend) -> ({outs})",
            f"(Tensor grad, {params}, {saved}, bool[] needs, str backend) -> Tensor[]")


def _define(op: Op):
    n_in, n_out = len(op.inputs), len(op.outputs)
    grad_idx = [op.input_names.index(g) for g in op.grads]
    tensor_idx = [i for i, (_, t) in enumerate(op.inputs) if t.startswith("Tensor")]
    fwd_schema, bwd_schema = _schemas(op)

    def forward(*args):
        *inputs, backend = args
        return tuple(get_impl(op.name, backend).forward(*inputs))

    def backward(grad, *args):
        inputs, outputs = args[:n_in], args[n_in:n_in + n_out]
        needs, backend = args[n_in + n_out], args[n_in + n_out + 1]
        got = get_impl(op.name, backend).backward(grad, *inputs, *outputs, tuple(needs))
        ref = _first_tensor(inputs)
        return [_grad_out(inputs[i], got[k], needs[k], ref) for k, i in enumerate(grad_idx)]

    def backward_fake(grad, *args):
        inputs, needs = args[:n_in], args[n_in + n_out]
        ref = _first_tensor(inputs)
        return [torch.empty_like(inputs[i]) if inputs[i] is not None and needs[k]
                else ref.new_empty(0) for k, i in enumerate(grad_idx)]

    fwd_op = torch.library.custom_op(f"solar::{op.name}_fwd", forward, mutates_args=(),
                                     schema=fwd_schema)
    fwd_op.register_fake(lambda *args: tuple(op.fake(*args[:-1])))
    bwd_op = torch.library.custom_op(f"solar::{op.name}_bwd", backward, mutates_args=(),
                                     schema=bwd_schema)
    bwd_op.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(inputs[i] for i in tensor_idx), *output)
        ctx.constants = {i: inputs[i] for i in range(n_in + 1) if i not in tensor_idx}

    def autograd_backward(ctx, grad, *_unused):
        saved = ctx.saved_tensors
        inputs = [None] * n_in
        for k, i in enumerate(tensor_idx):
            inputs[i] = saved[k]
        for i, v in ctx.constants.items():
            if i < n_in:
                inputs[i] = v
        backend = ctx.constants[n_in]
        needs = [bool(ctx.needs_input_grad[i]) and inputs[i] is not None for i in grad_idx]
        result = [None] * (n_in + 1)
        if not any(needs):
            return tuple(result)
        grads = bwd_op(grad.contiguous(), *inputs, *saved[len(tensor_idx):], needs, backend)
        for k, i in enumerate(grad_idx):
            if needs[k]:
                result[i] = grads[k]
        return tuple(result)

    fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
    return fwd_op, bwd_op


FORWARD: dict = {}
BACKWARD: dict = {}
for _name, _op in OPS.items():
    FORWARD[_name], BACKWARD[_name] = _define(_op)


def run(op: str, backend: str, *inputs):
    """outputs[0] of ``op``'s forward on ``backend`` (a kernel backend), differentiable."""
    return FORWARD[op](*inputs, backend)[0]
