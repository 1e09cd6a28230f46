"""The op table: one entry per fused op, the single description every layer is generated from.

For each op it gives the canonical kernel signature that every kernel backend implements,

    forward(*inputs) -> outputs
        ``outputs[0]`` is the op's result; the others are statistics saved for backward.
    backward(grad, *inputs, *outputs, needs) -> one gradient per name in ``grads``
        ``grad`` is the (contiguous) gradient of outputs[0]; ``needs[k]`` says whether
        ``grads[k]`` is wanted (a backend may return None, or skip work, when it is not).

the shapes of the outputs for ``torch.compile`` (``fake``) and the pure-PyTorch reference twin
(backend ``torch``).  ``_library`` turns each entry into a forward and a backward
``torch.library`` custom op plus their autograd; the facade (``solar/ops/__init__.py``) maps the
public arguments onto ``inputs``.

Conventions of ``inputs``: embeddings and token features in the caller's dtype (float32, bfloat16,
float16; kernel backends may refuse float64 in ``supports``); scalars (scale, bias) 0-dim tensors
in the accumulation dtype (``_checks.acc_dtype``: float32, float64 for float64 inputs), and so are
every loss and statistic.  A backend may return gradients in float32 or any layout: ``_library``
casts each to the dtype and layout of ``torch.empty_like`` of its input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ._checks import acc_dtype
from .reference import (contrastive_loss_reference, gcl_loss_reference, masked_pool_reference,
                        multi_positive_infonce_reference)


@dataclass(frozen=True)
class Op:
    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, torch schema type) in the kernels' order
    outputs: tuple[str, ...]
    grads: tuple[str, ...]               # the differentiable inputs, in backward's return order
    fake: Callable                       # fake(*inputs) -> outputs (shapes, dtypes, devices)
    reference: Callable                  # the torch twin, in the public argument order

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.inputs)


def _vec(ref, n, dtype):
    return ref.new_empty((n,), dtype=dtype)


def _pool_fake(x, w, normalize, eps):
    B, _, D = x.shape
    return x.new_empty(B, D), x.new_empty(B, 2, dtype=acc_dtype(x.dtype))


def _contrastive_fake(a, b, scale, bias, neg, symmetric):
    acc, B = acc_dtype(a.dtype), a.shape[0]
    return a.new_empty((), dtype=acc), _vec(a, B, acc), _vec(a, B if symmetric else 0, acc)


def _gcl_fake(ei, et, ef, scale):
    acc = acc_dtype(ei.dtype)
    return ei.new_empty((), dtype=acc), _vec(ei, 3 * ei.shape[0], acc)


def _mpi_fake(anchors, cand, pos, valid, scale):
    acc, B = acc_dtype(anchors.dtype), anchors.shape[0]
    return anchors.new_empty((), dtype=acc), _vec(anchors, B, acc), _vec(anchors, B, acc)


OPS: dict[str, Op] = {op.name: op for op in (
    # y = normalize?(sum_l w_l x_l / sum_l w_l) (0 for an all-zero row); stats[:, 0] = sum_l w_l,
    # stats[:, 1] = ||mean|| before normalizing (0 when not normalizing).
    Op("masked_pool",
       inputs=(("x", "Tensor"), ("w", "Tensor"), ("normalize", "bool"), ("eps", "float")),
       outputs=("y", "stats"), grads=("x", "w"), fake=_pool_fake,
       reference=masked_pool_reference),
    # lse_row: log-sum-exp of row i of a -> [b; neg]; lse_col: of row i of b -> a (empty if not
    # symmetric).
    Op("contrastive_loss",
       inputs=(("a", "Tensor"), ("b", "Tensor"), ("scale", "Tensor"), ("bias", "Tensor?"),
               ("neg", "Tensor?"), ("symmetric", "bool")),
       outputs=("loss", "lse_row", "lse_col"), grads=("a", "b", "scale", "bias", "neg"),
       fake=_contrastive_fake, reference=contrastive_loss_reference),
    # lse: log-sum-exp of each row of the 3B x 3B logits without the self term.
    Op("gcl_loss",
       inputs=(("ei", "Tensor"), ("et", "Tensor"), ("ef", "Tensor"), ("scale", "Tensor")),
       outputs=("loss", "lse"), grads=("ei", "et", "ef", "scale"), fake=_gcl_fake,
       reference=gcl_loss_reference),
    # pos, valid: (B, N) bool; scale = 1 / temperature; lse over the valid / positive columns.
    Op("multi_positive_infonce",
       inputs=(("anchors", "Tensor"), ("cand", "Tensor"), ("pos", "Tensor"), ("valid", "Tensor"),
               ("scale", "Tensor")),
       outputs=("loss", "lse_all", "lse_pos"), grads=("anchors", "cand", "scale"),
       fake=_mpi_fake, reference=multi_positive_infonce_reference),
)}
