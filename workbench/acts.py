"""Stream activations at a TransformerLens hook as an iterator of (batch, d) tensors.

The stream is checkpointable: ``state_dict()`` holds the corpus RNG, the torch generator and the
shuffle buffer, so a trainer that saves it resumes at exactly the same data position.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from workbench import toyworld
from workbench.config import one_of, positive, require
from workbench.models import check_hook, encode

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

CORPORA = ("toy", "ioi")


@dataclass
class ActsConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    hook: str = field(default="blocks.1.hook_resid_post", metadata={"help": "TransformerLens hook name"})
    head: int | None = field(default=None, metadata={"help": "head index for per-head hooks (attn.hook_q/k/v/z); default: all heads concatenated"})
    corpus: str = field(default="toy", metadata={"help": "toy (general text + IOI), ioi (IOI prompts), or a datasets name / local text file"})
    text_column: str = field(default="text", metadata={"help": "text column of a datasets corpus"})
    positions: str = field(default="all", metadata={"help": "all (every real token but BOS), end (last token), or comma-separated indices"})
    batch_size: int = field(default=4096, metadata={"help": "activations per yielded batch"})
    seq_batch: int = field(default=128, metadata={"help": "sequences per model forward pass"})
    shuffle_buffer: int = field(default=16384, metadata={"help": "activations held for shuffling (0: no shuffle)"})
    seed: int = field(default=0, metadata={"help": "seed for corpus sampling and shuffling"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "batch_size", "seq_batch")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}", "pass 0 to disable shuffling")
        require(self.positions in ("all", "end") or re.fullmatch(r"-?\d+(,-?\d+)*", self.positions) is not None,
                "positions", f"cannot parse {self.positions!r}", "use all, end, or indices like 3,5,-1")
        require(self.head is None or self.head >= 0, "head", f"must be >= 0, got {self.head}", "pass a head index")


def stop_layer(hook: str) -> int | None:
    """Layer after which the forward pass can stop for this hook (None: run the whole model)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1)) + 1
    if hook in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


class TextSource:
    """Sequences of text from the toy world, IOI prompts, or a `datasets` corpus; checkpointable."""

    def __init__(self, cfg: ActsConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.ds = None
        self.row = 0
        if cfg.corpus not in CORPORA:
            self.ds = load_text_dataset(cfg.corpus, cfg.text_column)

    def next(self, n: int) -> list[str]:
        if self.ds is not None:
            out = []
            for _ in range(n):
                out.append(self.ds[self.row % len(self.ds)][self.cfg.text_column])
                self.row += 1
            return out
        if self.cfg.corpus == "ioi":
            return [toyworld.make_ioi_prompt(self.rng, toyworld.IOI_NAMES).text for _ in range(n)]  # training frames
        return [toyworld.training_text(self.rng) for _ in range(n)]

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "row": self.row}

    def load_state_dict(self, s: dict) -> None:
        self.rng.setstate(s["rng"])
        self.row = s["row"]


def load_text_dataset(spec: str, column: str):
    """A `datasets` corpus: a local .txt/.json(l) file, a saved dataset dir, or a hub name (when reachable)."""
    from pathlib import Path

    import datasets

    from workbench.errors import ModelError

    p = Path(spec)
    if p.is_file():
        kind = {".txt": "text", ".json": "json", ".jsonl": "json"}.get(p.suffix, "text")
        ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    elif p.is_dir():
        ds = datasets.load_from_disk(str(p))
    else:
        try:
            ds = datasets.load_dataset(spec, split="train", streaming=False)
        except Exception as e:  # noqa: BLE001 - hub unreachable or unknown name
            raise ModelError(f"corpus {spec!r} is not a file, a saved dataset or a reachable dataset ({e}); use --corpus toy, ioi or a local file") from e
    if column not in ds.column_names:
        raise ModelError(f"corpus {spec!r} has no column {column!r}; columns are {ds.column_names} (pass --text-column)")
    return ds


class ActivationStream:
    """Iterator of (batch_size, d) activation tensors at cfg.hook, shuffled through a buffer."""

    def __init__(self, model: "HookedTransformer", cfg: ActsConfig):
        check_hook(model, cfg.hook)
        self.model, self.cfg = model, cfg
        self.text = TextSource(cfg)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.buffer = torch.empty(0)
        self.tokens_seen = 0

    @torch.no_grad()
    def forward_chunk(self) -> torch.Tensor:
        """One model forward over seq_batch sequences: (n_selected_positions, d)."""
        cfg, model = self.cfg, self.model
        texts = self.text.next(cfg.seq_batch)
        tokens = encode(model, texts)[:, : model.cfg.n_ctx]
        store = {}

        def grab(act, hook):
            store["act"] = act
            return act

        model.run_with_hooks(tokens, fwd_hooks=[(cfg.hook, grab)], stop_at_layer=stop_layer(cfg.hook))
        act = store["act"]  # (batch, pos, d) or (batch, pos, head, d_head)
        if act.ndim == 4:
            act = act[:, :, cfg.head] if cfg.head is not None else act.flatten(2)
        mask = select_positions(tokens, model.tokenizer.pad_token_id, cfg.positions)
        self.tokens_seen += int(mask.sum())
        return act[mask].float().cpu()

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        cfg = self.cfg
        want = max(cfg.batch_size, cfg.shuffle_buffer)
        parts = [self.buffer]
        have = len(self.buffer)
        while have < want:
            chunk = self.forward_chunk()
            parts.append(chunk)
            have += len(chunk)
        buf = torch.cat(parts)
        if cfg.shuffle_buffer:
            buf = buf[torch.randperm(len(buf), generator=self.gen)]
        out, self.buffer = buf[: cfg.batch_size], buf[cfg.batch_size:]
        return out

    def state_dict(self) -> dict:
        return {"text": self.text.state_dict(), "gen": self.gen.get_state(), "buffer": self.buffer.clone(),
                "tokens_seen": self.tokens_seen}

    def load_state_dict(self, s: dict) -> None:
        self.text.load_state_dict(s["text"])
        self.gen.set_state(s["gen"])
        self.buffer = s["buffer"]
        self.tokens_seen = s["tokens_seen"]


def select_positions(tokens: torch.Tensor, pad_id: int | None, positions: str) -> torch.Tensor:
    """(batch, pos) bool mask of positions to keep: never BOS (position 0) or padding."""
    real = torch.ones_like(tokens, dtype=torch.bool) if pad_id is None else tokens != pad_id
    real[:, 0] = False
    if positions == "all":
        return real
    lengths = (tokens != pad_id).sum(1) if pad_id is not None else torch.full((len(tokens),), tokens.shape[1])
    mask = torch.zeros_like(real)
    rows = torch.arange(len(tokens))
    if positions == "end":
        mask[rows, lengths - 1] = True
        return mask
    for p in map(int, positions.split(",")):
        idx = lengths + p if p < 0 else torch.full_like(lengths, p)
        ok = (idx > 0) & (idx < lengths)
        mask[rows[ok], idx[ok]] = True
    return mask
