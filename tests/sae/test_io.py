"""Save/load in the SAELens layout: same outputs back, clear errors on mismatch."""

import json

import pytest
import torch

import sae as sae_pkg
from sae import io
from sae.config import ARCHS, SAEConfig
from sae.model import build_sae
from workbench.errors import RunError


def _trained_like(arch):
    s = build_sae(SAEConfig(arch=arch, k=4, d_sae=48).resolve(12))
    s.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(48, generator=g) * 0.1)
        s.b_dec.copy_(torch.randn(12, generator=g))
        s.threshold.copy_(torch.rand(48, generator=g))
    return s


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_the_same_outputs(arch, tmp_path):
    s = _trained_like(arch)
    folded = s.folded(0.5)  # trained on 0.5 * x; the saved SAE takes raw x
    io.save(folded, tmp_path, {"model_name": "toy-ioi", "hook_name": "blocks.1.hook_resid_post"})
    back = sae_pkg.load(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == io.SAELENS_ARCH[arch] and cfg["hook_name"] == "blocks.1.hook_resid_post"
    assert back.mode == ("threshold" if arch in ("feature-choice", "mutual-choice") else "batch")
    s.set_mode(back.mode)
    x = torch.randn(30, 12)
    with torch.no_grad():
        ref = s(0.5 * x).x_hat / 0.5  # the unfolded SAE on scaled inputs
        torch.testing.assert_close(back(x).x_hat, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.encode(x), s.encode(0.5 * x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.decode(back.encode(x)), back(x).x_hat, atol=1e-5, rtol=1e-5)
    assert back.features.shape == (48, 12)


def test_shape_mismatch_names_the_tensor(tmp_path):
    io.save(_trained_like("topk"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_in"] = cfg["workbench"]["sae"]["d_in"] = 16
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match=r"W_enc has shape \(12, 48\).*needs \(16, 48\)"):
        sae_pkg.load(tmp_path)


def test_missing_tensor_and_wrong_width_and_missing_files(tmp_path):
    from safetensors.torch import load_file, save_file

    io.save(_trained_like("mutual-choice"), tmp_path)
    with pytest.raises(RunError, match="width 7"):
        sae_pkg.load(tmp_path, d_in=7)
    state = load_file(str(tmp_path / io.WEIGHTS))
    del state["threshold"]
    state["W_gate"] = torch.zeros(2)
    save_file(state, str(tmp_path / io.WEIGHTS))
    with pytest.raises(RunError, match=r"missing tensors \['threshold'\], unexpected \['W_gate'\]"):
        sae_pkg.load(tmp_path)
    with pytest.raises(RunError, match="cfg.json does not exist"):
        sae_pkg.load(tmp_path / "nowhere")


def test_saelens_loads_our_files_and_encodes_the_same(tmp_path):
    """SAELens (benchmark extra) reads our TopK and Mutual Choice SAEs as TopKSAE / JumpReLUSAE."""
    sae_lens = pytest.importorskip("sae_lens")
    x = torch.randn(20, 12)
    for arch in ("topk", "mutual-choice"):
        s = _trained_like(arch)
        s.set_mode(s.modes[-1])
        io.save(s, tmp_path / arch, {"model_name": "toy-ioi", "hook_name": "blocks.1.hook_resid_post"})
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / arch), device="cpu")
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), s.encode(x), atol=1e-5, rtol=1e-5)
