"""Save/load in the SAELens layout: same outputs back, clear errors on mismatch."""

import json

import pytest
import torch

import sae as sae_pkg
from sae import io
from sae.config import ARCHS, SAEConfig
from sae.normalize import OPTIONS as NORMALIZE
from sae.model import build_sae
from workbench.errors import RunError


def _trained_like(arch, normalize="auto"):
    s = build_sae(SAEConfig(arch=arch, k=4, d_sae=48, normalize=normalize).resolve(12))
    s.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(48, generator=g) * 0.1)
        s.b_dec.copy_(torch.randn(12, generator=g))
        s.threshold.copy_(torch.rand(48, generator=g))
    return s


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_gives_the_same_outputs(arch, normalize, tmp_path):
    s = _trained_like(arch, normalize)
    folded = s.folded(0.5)  # trained on 0.5 * x; the saved SAE takes raw x
    io.save(folded, tmp_path, {"model_name": "toy-ioi", "hook_name": "blocks.1.hook_resid_post"})
    back = sae_pkg.load(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == io.SAELENS_ARCH[arch] and cfg["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["normalize_activations"] == ("constant_norm_rescale" if normalize == "per_token" else "none")
    assert back.mode == ("threshold" if arch in ("feature-choice", "mutual-choice") else "batch")
    assert back.cfg.normalize == normalize
    s.set_mode(back.mode)
    x = torch.randn(30, 12) * torch.linspace(0.1, 10, 30)[:, None]  # norms over two decades
    with torch.no_grad():
        ref = s(0.5 * x).x_hat / 0.5  # the unfolded SAE on scaled inputs
        torch.testing.assert_close(back(x).x_hat, ref, atol=1e-5, rtol=1e-5)
        # codes in the input's scale: folding keeps a scalar-normalised SAE's codes; per token they scale with x
        torch.testing.assert_close(back.encode(x), s.encode(0.5 * x) / (0.5 if normalize == "per_token" else 1.0),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.decode(back.encode(x)), back(x).x_hat, atol=1e-5, rtol=1e-5)
    assert back.features.shape == (48, 12)


def test_per_token_codes_are_in_the_scale_of_the_input():
    """encode() of a per-token SAE: codes @ W_dec is each latent's share of the reconstruction of x itself."""
    s = _trained_like("topk", "per_token")
    x = torch.randn(20, 12) * 7
    with torch.no_grad():
        out = s(x)
        codes = s.encode(x)
        torch.testing.assert_close(codes @ s.W_dec + s.b_dec * x.norm(dim=1, keepdim=True) / 12 ** 0.5, out.x_hat)
        torch.testing.assert_close(s.encode(3 * x), 3 * codes)  # the normalised activations do not change


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


def test_saelens_loads_our_files_and_reproduces_codes_and_outputs(tmp_path):
    """SAELens (benchmark extra) reads our SAEs (TopK as TopKSAE, FC/MC as JumpReLUSAE, ReLU-L1 as
    StandardSAE) with each normalisation and gives the same activations and reconstructions."""
    sae_lens = pytest.importorskip("sae_lens")
    x = torch.randn(20, 12) * torch.linspace(0.1, 10, 20)[:, None]
    for arch in (a for a in ARCHS if a != "routed"):  # SAELens has no routed SAE (architecture workbench_routed)
        for normalize in NORMALIZE:
            s = _trained_like(arch, normalize).folded(0.5)
            s.set_mode(s.modes[-1])
            where = tmp_path / f"{arch}-{normalize}"
            io.save(s, where, {"model_name": "toy-ioi", "hook_name": "blocks.1.hook_resid_post"})
            theirs = sae_lens.SAE.load_from_disk(str(where), device="cpu")
            with torch.no_grad():
                ours = s(x)
                torch.testing.assert_close(theirs.encode(x), ours.codes(), atol=1e-5, rtol=1e-5,
                                           msg=lambda m: f"{arch} {normalize}: {m}")
                torch.testing.assert_close(theirs(x), ours.x_hat, atol=1e-4, rtol=1e-5,
                                           msg=lambda m: f"{arch} {normalize}: {m}")


def test_a_normalisation_saelens_cannot_express_is_an_error_at_export(tmp_path):
    from workbench.errors import ConfigError

    s = _trained_like("topk")
    s.cfg.normalize = "layer_norm"  # not one of ours: no faithful cfg.json exists for it
    with pytest.raises(ConfigError, match="normalize: SAELens has no normalize_activations that reproduces 'layer_norm'"):
        io.save(s, tmp_path / "x")
    assert not (tmp_path / "x").exists()
