"""Input normalisation of SAEs, and how each option is written for SAELens.

Three options (``SAEConfig.normalize``), each matching one of SAELens 6.54's ``normalize_activations``:

- ``none``: the SAE sees raw activations.
- ``expected_norm``: one scalar s = sqrt(d_in) / E|x| measured on the first training batch (SAELens's
  ``expected_average_only_in``, the same formula). Training sees s * x; the saved weights take raw x
  (s folded into W_enc, W_dec, b_dec, as SAELens's own trainer does when it finishes), so cfg.json says
  ``"none"``.
- ``per_token``: each token is scaled to norm sqrt(d_in) before encoding, x' = x * sqrt(d_in) / |x|,
  and the reconstruction (b_dec included) is scaled back by |x| / sqrt(d_in) (SAELens's
  ``constant_norm_rescale``, the same formula). It depends on the token, so it cannot be folded:
  cfg.json says ``"constant_norm_rescale"`` and SAELens applies it at run time. One difference: for a
  token with |x| = 0 we use |x| = 1e-12 (SAELens divides by zero); activations are never exactly 0.
  Training computes its loss in the normalised space, where every token weighs the same.

Why per-token exists here: a few tokens with very large norms take a global allocation's whole budget
(Mutual Choice, uniform Feature Choice); per token, every token competes at the same scale. On the
first toy-ioi (v1) 10% of the tokens at blocks.1 sat at ~6x the median norm, in one direction; on v2
blocks.1 is healthy but blocks.3 still has 7.6% of its tokens above 3x the median (docs/toy-model.md).
docs/sae.md, "Choosing the defaults", has the measurements.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workbench.errors import ConfigError

from sae.config import NORMALIZE as OPTIONS
# what cfg.json's "normalize_activations" says for a saved SAE of each option (expected_norm is folded in)
SAELENS = {"none": "none", "expected_norm": "none", "per_token": "constant_norm_rescale"}
# the option SAELens trains with for each of ours (for documentation and the peer benchmark)
SAELENS_TRAINING = {"none": "none", "expected_norm": "expected_average_only_in", "per_token": "constant_norm_rescale"}
EPS = 1e-12


def expected_norm_scale(x: Tensor) -> float:
    """s = sqrt(d_in) / E|x| over a (N, d_in) batch (SAELens's expected_average_only_in)."""
    return math.sqrt(x.shape[1]) / x.double().norm(dim=1).mean().clamp_min(EPS).item()


def per_token_factor(x: Tensor) -> Tensor:
    """(N, 1) factors sqrt(d_in) / |x_n| that put every token at norm sqrt(d_in) (constant_norm_rescale)."""
    return math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def saelens_name(option: str) -> str:
    """cfg.json's ``normalize_activations`` for a saved SAE; an option SAELens cannot express is an error."""
    if option not in SAELENS:
        raise ConfigError(f"normalize: SAELens has no normalize_activations that reproduces {option!r}, so an SAE "
                          f"trained with it cannot be exported faithfully; train with --normalize one of "
                          f"{', '.join(SAELENS)}")
    return SAELENS[option]
