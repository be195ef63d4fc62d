"""Tiny training configs on the tiny random toy-world model (d_model 32) from tests/conftest.py."""

import pytest


@pytest.fixture
def tiny_cfg(tiny_model_dir, tmp_path):
    """make(**overrides) -> TrainConfig: 12 steps of 128 tokens, d_sae 64, k 4, checkpoint every 4."""
    from workbench.acts import ActsConfig

    from sae.config import SAEConfig, TrainConfig

    def make(arch="topk", aux="aux_k", name="run", cache=None, **kw):
        acts = ActsConfig(model=str(tiny_model_dir), hook="blocks.1.hook_resid_post", batch_size=128, seq_batch=16,
                          shuffle_buffer=256, seed=0)
        sae = SAEConfig(arch=arch, k=4, expansion=2)
        base = dict(tokens=128 * 12, log_every=2, checkpoint_every=4, eval_tokens=256, warmup_steps=2,
                    dead_window=512, runs_dir=str(tmp_path / "runs"), name=name, cache=cache)
        base.update(kw)
        return TrainConfig(acts=acts, sae=sae, aux=aux, **base)

    return make
