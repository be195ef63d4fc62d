"""cfg.json in SAELens 6's format: a metadata block with sae_lens_version >= 6, read by SAELens as written."""

import json

import pytest
import torch

from sae import io
from sae.config import SAEConfig
from sae.model import build_sae

META = {"model_name": "toy-ioi", "hook_name": "blocks.1.hook_resid_post", "hook_head_index": None, "context_size": 24}


def _sae(arch, d_in=12, d_sae=48):
    s = build_sae(SAEConfig(arch=arch, k=4, d_sae=d_sae).resolve(d_in))
    s.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        s.threshold.copy_(torch.rand(d_sae, generator=g))
    s.set_mode(s.modes[-1])
    return s


def test_cfg_json_has_a_saelens_6_metadata_block(tmp_path):
    io.save(_sae("topk"), tmp_path, META)
    cfg = json.loads((tmp_path / io.CFG).read_text())
    major = int(cfg["metadata"]["sae_lens_version"].split(".")[0])
    assert major >= 6 and "sae_lens_version" not in cfg  # where SAELens 6 writes it
    assert {k: cfg["metadata"][k] for k in META} == META and cfg["metadata"]["prepend_bos"] is True
    assert cfg["hook_name"] == META["hook_name"]  # still at the top level for older readers (evals reads it there)
    assert cfg["reshape_activations"] == "none"


@pytest.mark.parametrize("hook,head,want", [("blocks.0.attn.hook_z", None, "hook_z"), ("blocks.0.attn.hook_q", None, "hook_z"),
                                            ("blocks.0.attn.hook_z", 1, "none"), ("blocks.0.mlp.hook_post", None, "none")])
def test_reshape_for_per_head_hooks(tmp_path, hook, head, want):
    io.save(_sae("topk"), tmp_path, {**META, "hook_name": hook, "hook_head_index": head})
    assert json.loads((tmp_path / io.CFG).read_text())["reshape_activations"] == want


@pytest.mark.parametrize("arch,cls", [("topk", "TopKSAE"), ("feature-choice", "JumpReLUSAE"), ("relu-l1", "StandardSAE")])
def test_saelens_reads_the_metadata_and_encodes_the_same(tmp_path, arch, cls):
    sae_lens = pytest.importorskip("sae_lens")
    s = _sae(arch)
    io.save(s, tmp_path, META)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert type(theirs).__name__ == cls
    md = theirs.cfg.metadata
    assert (md.hook_name, md.model_name, md.context_size, md.sae_lens_version) == (META["hook_name"], "toy-ioi", 24, io.SAELENS_FORMAT)
    x = torch.randn(20, 12)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), s.encode(x), atol=1e-5, rtol=1e-5)


def test_saelens_flattens_heads_like_we_do(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    s = _sae("topk", d_in=8)  # 2 heads x d_head 4, all heads concatenated
    io.save(s, tmp_path, {**META, "hook_name": "blocks.0.attn.hook_z"})
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    z = torch.randn(3, 5, 2, 4)  # (batch, pos, head, d_head) as the hook sees it
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(z).reshape(15, -1), s.encode(z.flatten(2).reshape(15, 8)), atol=1e-5, rtol=1e-5)
