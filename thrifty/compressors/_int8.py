"""The encoder's linear layers in int8: weights per output channel, activations per token.

Each ``nn.Linear`` of the encoder (not the classifier head) becomes an :class:`Int8Linear`.
Its weight is rounded once to int8 with one scale per output channel; each call rounds its
input to int8 with one scale per token (the row's largest magnitude maps to 127), multiplies
the two in integers (``torch._int_mm``: oneDNN's VNNI or AMX kernels where the CPU has them)
and scales the int32 result back to float32 before the bias is added.

A scale per token, not one for the whole batch, is what keeps the decisions: the classifier's
few tokens of outsized activations ([CLS], [SEP], some punctuation) no longer set the
resolution of every other token. On thrifty's weights this agrees with the float32 model on
99.3% of keep decisions; the same layers quantised with one scale per batch
(``torch.ao``'s dynamic quantisation) agree on 93.8-94.5% (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Int8Linear", "int8_supported", "quantise"]


class _Shared:
    """The input rounded by the first of ``readers`` linear layers that read the same tensor (query, key,
    value), until the others have read it too."""

    __slots__ = ("last", "readers")

    def __init__(self, readers: int) -> None:
        self.readers = readers
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None  # input, rows, scales, unread


class Int8Linear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` and each row of ``x`` rounded to int8 (see the module docstring).

    Layers given one ``shared`` round a tensor they all read once: the rounded input is kept, as one
    tuple with the input it came from, until each of them has read it; a layer that finds another
    input there (another thread's) rounds its own, so threads running one model never mix inputs.
    """

    def __init__(self, linear: torch.nn.Linear, shared: _Shared | None = None) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).to(torch.int8).t().contiguous())
        self.register_buffer("scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros_like(scale)
        self.register_buffer("bias", bias)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        shared = self._shared
        last = shared.last if shared is not None else None
        if last is not None and last[0] is x:
            q, step = last[1], last[2]
            shared.last = (x, q, step, last[3] - 1) if last[3] > 1 else None
        else:
            rows = x.reshape(-1, shape[-1])
            # abs().amax() is several times faster here than aminmax() or an inf-norm over rows
            step = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
            q = torch.div(rows, step).round_().to(torch.int8)
            if shared is not None:
                shared.last = (x, q, step, shared.readers - 1)
        y = torch._int_mm(q, self.weight_t).float().mul_(step).mul_(self.scale).add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)


def quantise(model: Any) -> Any:
    """``model`` with every linear layer of its encoder replaced by an :class:`Int8Linear`, in place.

    The query, key and value layers of each attention block read the same tensor and round it once.
    """
    together = ("query", "key", "value")
    for module in list(model.base_model.modules()):
        children = dict(module.named_children())
        shared = _Shared(len(together)) if set(together) <= children.keys() else None
        for name, child in children.items():
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child, shared if name in together else None))
    return model


def int8_supported() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (``torch._int_mm``)."""
    try:
        a = torch.ones((2, 8), dtype=torch.int8)
        return int(torch._int_mm(a, a.t().contiguous())[0, 0]) == 8
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
