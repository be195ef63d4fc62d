"""Model access: the one module that touches TransformerLens' model classes.

``load_model("toy-ioi")`` loads the embedded toy model shipped with the package; any other
TransformerLens name (``gpt2``, ...) goes through ``HookedTransformer.from_pretrained``; a path to a
directory written by ``workbench model train`` loads that model. A later move to TransformerBridge
should only touch this file.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench import toyworld
from workbench.errors import ModelError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

TOY_NAME = "toy-ioi"
ASSETS = Path(__file__).parent / "assets"
TOY_DIR = ASSETS / TOY_NAME


def build_tokenizer(save_dir: str | Path, vocab: list[str] | None = None):
    """Build the toy world's word-level tokenizer, save it to save_dir and load it back.

    TransformerLens needs a tokenizer loaded with ``AutoTokenizer.from_pretrained`` (an in-memory
    ``PreTrainedTokenizerFast`` fails inside it), hence the save/load round trip.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or toyworld.vocabulary()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(save_dir))
    return load_tokenizer(save_dir)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def toy_config_dict(n_layers: int = 2, d_model: int = 128, n_heads: int = 4, d_mlp: int | None = None,
                    n_ctx: int = 64, d_vocab: int | None = None, seed: int = 0) -> dict:
    """HookedTransformerConfig fields of the toy model (pre-LN GPT-style, learned positions)."""
    return dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                d_mlp=d_mlp or 4 * d_model, n_ctx=n_ctx, d_vocab=d_vocab or len(toyworld.vocabulary()),
                act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
                model_name=TOY_NAME, seed=seed, default_prepend_bos=True)


def make_model(cfg_dict: dict, tokenizer_dir: str | Path, device: str | None = None) -> "HookedTransformer":
    """A freshly initialised HookedTransformer with the toy tokenizer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from workbench.devices import check_device

    device = check_device(device)

    cfg = HookedTransformerConfig(**cfg_dict, device=device or "cpu")
    return HookedTransformer(cfg, tokenizer=load_tokenizer(tokenizer_dir))


def save_model(model: "HookedTransformer", cfg_dict: dict, out_dir: str | Path, extra: dict | None = None) -> None:
    """Save weights (safetensors) + config.json + tokenizer into out_dir, atomically per file."""
    from safetensors.torch import save

    from workbench.runs import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save(state))
    atomic_write_json(out_dir / "config.json", {"hooked_transformer": cfg_dict, **(extra or {})})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out_dir / "tokenizer"))


def _load_dir(path: Path, device: str | None) -> "HookedTransformer":
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "config.json").read_bytes().decode("utf-8"))
        cfg_dict = meta["hooked_transformer"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{path / 'config.json'} is missing or corrupt ({e}); retrain with `workbench model train`") from e
    model = make_model(cfg_dict, path / "tokenizer", device)
    try:
        state = load_file(str(path / "model.safetensors"), device="cpu")
    except (OSError, SafetensorError) as e:
        raise ModelError(f"{path / 'model.safetensors'} is missing or corrupt ({e}); retrain with `workbench model train`") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
    if missing or unexpected:
        raise ModelError(f"{path / 'model.safetensors'} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device or "cpu", print_details=False)  # not TransformerLens' "Moving model to device" on every command
    model.eval()
    return model


def known_model_names() -> list[str]:
    from transformer_lens import loading_from_pretrained as loading

    names = list(loading.OFFICIAL_MODEL_NAMES)
    for aliases in loading.MODEL_ALIASES.values():
        names.extend(aliases)
    return [TOY_NAME] + names


def load_model(name: str = TOY_NAME, device: str | None = None) -> "HookedTransformer":
    """The embedded toy model, a directory saved by ``workbench model train``, or a TransformerLens name."""
    from workbench.devices import check_device

    device = check_device(device)  # a GPU asked for on a machine without one: one line, before anything loads
    path = Path(name)
    if name == TOY_NAME:
        if not (TOY_DIR / "model.safetensors").exists():
            raise ModelError(f"the embedded model is missing from {TOY_DIR}; rebuild it with `workbench model train --out {TOY_DIR}`")
        return _load_dir(TOY_DIR, device)
    if path.is_dir():
        return _load_dir(path, device)
    names = known_model_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f"did you mean {', '.join(close)}?" if close else f"use {TOY_NAME!r}, a TransformerLens name such as 'gpt2', or a model directory"
        raise ModelError(f"unknown model {name!r}; {hint}")
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(name, device=device or "cpu")


def gpt2_small_shaped(device: str | None = None, seed: int = 0) -> "HookedTransformer":
    """A randomly initialised HookedTransformer of GPT-2 small's shape (12 layers, d_model 768) with the toy
    tokenizer: realistic activation sizes for speed checks and GPU tests where GPT-2's weights cannot be loaded."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = load_model(TOY_NAME, device="cpu").tokenizer
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=128, d_vocab=len(tok),
                                  act_fn="gelu_new", normalization_type="LN", seed=seed, device=device)
    return HookedTransformer(cfg, tokenizer=tok)


def hook_names(model: "HookedTransformer") -> list[str]:
    return list(model.hook_dict)


def check_hook(model: "HookedTransformer", hook_name: str) -> None:
    """Raise ModelError for a hook the model does not have, listing close matches."""
    names = hook_names(model)
    if hook_name not in names:
        close = difflib.get_close_matches(hook_name, names, n=5, cutoff=0.5)
        raise ModelError(f"unknown hook name {hook_name!r}; close matches: {', '.join(close) or 'none'} "
                         f"(the model has {len(names)} hooks, e.g. blocks.0.hook_resid_post)")


def stop_layer(hook: str) -> int | None:
    """Layer after which the forward pass can stop for this hook (None: run the whole model)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1)) + 1
    if hook in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


def head_view(act: torch.Tensor, head: int | None) -> torch.Tensor:
    """(batch, pos, d) from an activation as a hook saw it: a per-head hook's (batch, pos, n_heads, d_head)
    gives one head (d = d_head) or, with head None, all heads concatenated (d = n_heads * d_head)."""
    if act.ndim == 4:
        if head is None:
            return act.flatten(2)
        if not 0 <= head < act.shape[2]:
            raise ModelError(f"head: {head} is out of range, the hook has {act.shape[2]} heads; pass --head 0..{act.shape[2] - 1}")
        return act[:, :, head]
    if head is not None:
        raise ModelError(f"head: --head {head} applies only to per-head hooks (attn.hook_q/k/v/z, attn.hook_result); "
                         f"drop --head for this hook")
    return act


def _run_capture(model: "HookedTransformer", tokens: torch.Tensor, hook: str, stop_at_layer: int | None):
    check_hook(model, hook)
    store = {}

    def grab(act, hook):
        store["act"] = act
        return act

    out = model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)], stop_at_layer=stop_at_layer)
    return out, store["act"]


def capture(model: "HookedTransformer", tokens: torch.Tensor, hook: str, head: int | None = None) -> torch.Tensor:
    """The activation at `hook` for tokens (batch, pos), as (batch, pos, d) (see :func:`head_view`).

    The one place that reads a hook: activation streaming, SAE metrics and the feature-browser analysis
    call it. The forward pass stops after the hook's layer.
    """
    return head_view(_run_capture(model, tokens, hook, stop_layer(hook))[1], head)


def capture_many(model: "HookedTransformer", tokens: torch.Tensor, hooks: list[str],
                 head: int | None = None) -> dict[str, torch.Tensor]:
    """The activations at several hooks from one forward pass: {hook: (batch, pos, d)}.

    The pass stops after the last layer any of the hooks needs (many SAEs, one model forward).
    """
    for h in hooks:
        check_hook(model, h)
    stops = [stop_layer(h) for h in hooks]
    store: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        store[hook.name] = act
        return act

    model.run_with_hooks(tokens, fwd_hooks=[(h, grab) for h in hooks],
                         stop_at_layer=None if None in stops else max(stops))
    return {h: head_view(store[h], head) for h in hooks}


def capture_with_logits(model: "HookedTransformer", tokens: torch.Tensor, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One full forward pass: (logits (batch, pos, d_vocab), the activation at `hook` as the hook saw it,
    e.g. (batch, pos, n_heads, d_head) for a per-head hook; :func:`head_view` selects from it)."""
    return _run_capture(model, tokens, hook, None)


def hook_dim(model: "HookedTransformer", hook_name: str, head: int | None = None) -> int:
    """Width of the activation at hook_name (per head if the hook has a head axis and head is given)."""
    toks = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    return capture(model, toks, hook_name, head).shape[-1]


def encode(model: "HookedTransformer", texts: list[str], prepend_bos: bool = True) -> torch.Tensor:
    """Tokenise texts (right-padded), refusing words the tokenizer does not know."""
    tok = model.tokenizer
    if tok is None:
        raise ModelError("the model has no tokenizer; pass tokens instead of text")
    tokens = model.to_tokens(texts, prepend_bos=prepend_bos, padding_side="right")
    unk = tok.unk_token_id
    if unk is not None and unk not in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) and (tokens == unk).any():
        bad = sorted({w for t in texts for w in t.split() if tok.encode(w, add_special_tokens=False) == [unk]})
        vocab = [w for w in tok.get_vocab() if not w.startswith("<")]
        hints = []
        for w in bad[:10]:
            close = difflib.get_close_matches(w, vocab, n=3, cutoff=0.6)
            hints.append(f"{w!r} (closest: {', '.join(close)})" if close else repr(w))
        raise ModelError(f"out-of-vocabulary words: {'; '.join(hints)}; the toy world's words are listed in "
                         "workbench.toyworld.vocabulary()")
    return tokens
