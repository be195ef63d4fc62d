"""Save and load SAEs in the layout SAELens reads: ``cfg.json`` + ``sae_weights.safetensors``.

Tensors: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in)``, and
for Feature/Mutual Choice a ``threshold (d_sae)``: their inference rule ``pre > threshold`` is a
JumpReLU, so they are saved as SAELens ``"architecture": "jumprelu"``; TopK as ``"topk"`` (with
``k``), ReLU+L1 as ``"standard"``. cfg.json follows SAELens 6's format: a ``metadata`` block that SAELens
reads into ``sae.cfg.metadata`` (``sae_lens_version`` >= 6.0 — without it SAELens converts the file
as a pre-6.0 config —, ``model_name``, ``hook_name``, ``hook_head_index``, ``context_size``, ``prepend_bos``);
the same keys stay at the top level for older readers, and our own fields live under ``"workbench"``.
Saved weights take raw activations: a scalar input normalisation (``expected_norm``) is folded in
(``SAE.folded``) and cfg.json says ``"normalize_activations": "none"``; per-token normalisation is
applied at run time and cfg.json says ``"constant_norm_rescale"`` (see :mod:`sae.normalize`), so
SAELens's ``SAE.load_from_disk`` reproduces our activations and reconstructions for every option.

``sae_stats.safetensors`` (ours; SAELens does not read it) keeps the training statistics batch mode
needs: each latent's running density and usage (Zipf capacities rank latents by it) and the tokens
since it last fired.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from workbench.errors import RunError
from workbench.runs import atomic_write_bytes, atomic_write_json

from sae.config import SAEConfig
from sae.model import SAE, build_sae
from sae.normalize import saelens_name

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
STATS = "sae_stats.safetensors"
SAELENS_ARCH = {"topk": "topk", "feature-choice": "jumprelu", "mutual-choice": "jumprelu", "relu-l1": "standard",
                "routed": "workbench_routed"}  # SAELens has no routed SAE: it will not load one
SAELENS_FORMAT = "6.0.0"  # the SAELens cfg.json format written here (checked against sae_lens 6.54)
_HEAD_AXIS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_result")


def _reshape(meta: dict) -> str:
    """SAELens' reshape_activations: "hook_z" (flatten heads x d_head) for an all-heads SAE on a per-head hook."""
    hook = meta.get("hook_name") or ""
    return "hook_z" if hook.endswith(_HEAD_AXIS) and meta.get("hook_head_index") is None else "none"


def tensors_of(sae: SAE) -> dict[str, torch.Tensor]:
    t = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold_kind:
        t["threshold"] = sae.threshold
    gate = getattr(sae, "gate", None)
    if gate is not None:  # routed SAEs: the router's parameters and buffers, and the router's input scale
        t["gate_scale"] = sae.gate_scale
        t.update({f"gate.{k}": v for k, v in gate.state_dict().items() if v.is_floating_point()})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in t.items()}


def save(sae: SAE, path: str | Path, meta: dict | None = None) -> Path:
    """Write cfg.json and sae_weights.safetensors into directory `path` (each file atomically).

    meta: model_name, hook_name, hook_head_index, context_size, ... (top-level SAELens metadata).
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    c = sae.cfg
    norm = saelens_name(c.normalize)  # an option SAELens cannot express stops the export here
    path.mkdir(parents=True, exist_ok=True)
    meta = {"prepend_bos": True, **(meta or {})}
    cfg = {"architecture": SAELENS_ARCH[c.arch], "d_in": c.d_in, "d_sae": c.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": norm,
           "reshape_activations": _reshape(meta), **({"k": c.k} if c.arch == "topk" else {}), **meta,
           "metadata": {"sae_lens_version": SAELENS_FORMAT, **meta},
           "workbench": {"sae": asdict(c), "threshold_kind": sae.threshold_kind}}
    atomic_write_bytes(path / WEIGHTS, st_save(tensors_of(sae)))
    atomic_write_bytes(path / STATS, st_save({k: v.detach().cpu().contiguous() for k, v in sae.named_buffers()
                                              if k not in tensors_of(sae)}))
    atomic_write_json(path / CFG, cfg)
    return path


def load(path: str | Path, device: str | torch.device = "cpu", d_in: int | None = None) -> SAE:
    """Load an SAE saved by :func:`save` (path: its directory or a run directory holding it).

    FC/MC SAEs come back in threshold (inference) mode. Raises RunError naming any missing file,
    missing/unexpected tensor or shape mismatch; with `d_in`, also checks the input width.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, w_path = path / CFG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise RunError(f"{p} does not exist; pass a directory written by `workbench sae train` (it holds {CFG} and {WEIGHTS})")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{cfg_path} is corrupt ({e})") from e
    ours = raw.get("workbench", {}).get("sae")
    if ours is None:
        arch = {"topk": "topk", "standard": "relu-l1"}.get(raw.get("architecture"))
        if arch is None or "d_in" not in raw or "d_sae" not in raw:
            raise RunError(f"{cfg_path} is not a workbench SAE (architecture {raw.get('architecture')!r}, no 'workbench' block)")
        ours = {"arch": arch, "k": int(raw.get("k", 1)), "d_in": raw["d_in"], "d_sae": raw["d_sae"]}
    if "normalize" not in ours:  # written before normalize was an SAE field, or by SAELens: read SAELens's key
        saelens_norm = raw.get("normalize_activations", "none")
        norm = {"none": "none", "constant_norm_rescale": "per_token"}.get(saelens_norm)
        if norm is None:
            raise RunError(f"{cfg_path}: normalize_activations {saelens_norm!r} is not one we can run "
                           "(we read none and constant_norm_rescale; fold other normalisations into the weights first)")
        ours = {**ours, "normalize": norm}
    cfg = SAEConfig(**{k: v for k, v in ours.items() if k in SAEConfig.__dataclass_fields__})
    if d_in is not None and cfg.d_in != d_in:
        raise RunError(f"{path}: the SAE takes d_in={cfg.d_in} but the activations have width {d_in}")
    try:
        state = load_file(str(w_path), device="cpu")
    except (OSError, SafetensorError) as e:
        raise RunError(f"{w_path} is missing or corrupt ({e})") from e
    sae = build_sae(cfg)
    want = tensors_of(sae)
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise RunError(f"{w_path} does not match its {CFG} ({cfg.arch}): missing tensors {missing}, unexpected {unexpected}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise RunError(f"{w_path}: {k} has shape {tuple(state[k].shape)} but {CFG} (d_in={cfg.d_in}, d_sae={cfg.d_sae}) "
                           f"needs {tuple(v.shape)}")
    with torch.no_grad():
        own = sae.state_dict(keep_vars=True)
        for k, v in state.items():
            own[k].copy_(v)
        stats = _load_stats(path / STATS)
        for k, v in sae.named_buffers():
            if k in stats and stats[k].shape == v.shape:
                v.copy_(stats[k])
    sae.set_mode("threshold" if sae.threshold_kind else "batch")
    return sae.to(device)


def _load_stats(p: Path) -> dict[str, torch.Tensor]:
    """The training statistics saved next to the weights ({} if absent or unreadable: batch mode then
    ranks latents by index, as a fresh SAE does)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu") if p.is_file() else {}
    except (OSError, SafetensorError):
        return {}
