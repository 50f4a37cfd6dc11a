"""The encoder's float32 linear layers through oneDNN instead of torch's default matrix product.

torch multiplies float32 matrices with its BLAS (MKL on x86 builds); its oneDNN kernels, which it
already uses for bfloat16, are also there for float32, through ``torch.ops.mkldnn._linear_pointwise``.
Which is faster depends on the CPU: on a 2-core Zen 4 EPYC, oneDNN ran the model's linear layers at
179-193 GFLOP/s against torch's 139-159, and the whole float32 forward pass 6-20% faster, with logits
within 3e-6 of torch's (docs/benchmarks.md). :func:`thrifty.compressors.model.load_model` measures the
two once per machine and keeps the faster, so the exact mode's decisions stay the float32 model's.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DnnLinear", "onednn_supported", "use_onednn"]


class DnnLinear(torch.nn.Module):
    """``y = x W^T + b`` in float32 by oneDNN."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().float().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_onednn(model: Any) -> Any:
    """``model`` with every linear layer of its encoder replaced by a :class:`DnnLinear`, in place."""
    for module in list(model.base_model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, DnnLinear(child))
    return model


def onednn_supported() -> bool:
    """Whether this torch runs float32 linear layers through oneDNN, and gets them right."""
    try:
        x, w, b = torch.randn(3, 8), torch.randn(4, 8), torch.randn(4)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.backends.mkldnn.is_available()) and torch.allclose(
            y, torch.nn.functional.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
