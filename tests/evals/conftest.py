"""Fixtures of the IOI harness's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def save_sae():
    """save_sae(path, d_in, hook, head, arch="topk", seed=0, **cfg): a randomly initialised SAE saved where the harness loads it."""
    def save(path, d_in, hook, head, arch="topk", seed=0, **kw):
        sae_io = pytest.importorskip("sae.io")
        from sae.config import SAEConfig
        from sae.model import build_sae

        cfg = SAEConfig(arch=arch, k=4, d_sae=4 * d_in, **kw).resolve(d_in)
        sae = build_sae(cfg)
        sae.init_weights(torch.Generator().manual_seed(seed))
        if sae.threshold_kind:
            sae.threshold.fill_(0.1)
        sae_io.save(sae, path, {"model_name": "tiny", "hook_name": hook, "hook_head_index": head})
        return path

    return save
