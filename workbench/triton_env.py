"""Where the project's Triton kernels can run: Triton imports, and the tensor is on a CUDA device, or on
the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, read when Triton is imported), which is how the
tests check the kernels without a GPU. Shared by :mod:`workbench.topk_small` and :mod:`sae.triton_ops`."""

from __future__ import annotations

import os

from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU installs usually lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def on_kernel_device(t: Tensor) -> bool:
    """Whether a Triton kernel can run on t's device (and Triton is there at all)."""
    return triton is not None and (t.is_cuda or (INTERPRET and t.device.type == "cpu"))
