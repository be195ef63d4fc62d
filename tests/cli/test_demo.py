"""The demo's verdict on each SAE it trains: the bar in the saved (inference) mode, and why when one falls short."""

import json

import pytest

from cli.demo import SAE_BAR, SAE_BEST, WHY, sae_verdict


def _run(tmp_path, arch, ce, dead):
    run = tmp_path / f"demo-sae-{arch}"
    run.mkdir()
    ev = {"arch": arch, "mode": "batch" if arch == "topk" else "threshold", "normalize": "per_token",
          "ce_recovered": ce, "dead_fraction": dead}
    (run / "eval.json").write_text(json.dumps(ev))
    return run


@pytest.mark.parametrize("arch", list(SAE_BEST))
def test_an_sae_above_the_bar_is_said_to_meet_it(arch, tmp_path):
    msg = sae_verdict(_run(tmp_path, arch, SAE_BAR["ce_recovered"] + 0.01, SAE_BAR["dead_fraction"] - 0.01))
    assert "meets the demo's bar" in msg and WHY[arch] not in msg


@pytest.mark.parametrize("arch", list(SAE_BEST))
def test_an_sae_below_the_bar_says_which_number_and_why(arch, tmp_path):
    msg = sae_verdict(_run(tmp_path, arch, 0.5, 0.6))
    assert "below the demo's bar" in msg
    assert "CE recovered 0.500 < 0.95" in msg and "60.0% dead > 25%" in msg
    assert WHY[arch] and WHY[arch] in msg and "docs/sae.md" in msg
