"""Sparse autoencoders as sparse allocation: TopK, Feature Choice, Mutual Choice and ReLU+L1.

``sae.load(path)`` loads a trained SAE (cfg.json + sae_weights.safetensors); the heavy modules
(torch, the trainer) are imported only when used, so ``workbench sae --help`` stays fast.
"""

from __future__ import annotations


def load(path, device="cpu", d_in=None):
    """Load an SAE saved by ``workbench sae train`` (see :func:`sae.io.load`)."""
    from sae.io import load as _load

    return _load(path, device=device, d_in=d_in)


__all__ = ["load"]
