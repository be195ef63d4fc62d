"""Stream activations at a TransformerLens hook as an iterator of (batch, d) tensors.

The stream is checkpointable: ``state_dict()`` holds the corpus RNG, the torch generator and the
shuffle buffer, so a trainer that saves it resumes at exactly the same data position.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from workbench import toyworld
from workbench.config import CORPORA, ActsConfig
from workbench.models import capture, capture_many, check_hook, encode

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


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
    """Iterator of (batch_size, d) activation tensors at cfg.hook, shuffled through a buffer.

    With ``hooks`` it reads several hooks from one forward pass: :meth:`next_all` gives {hook: batch}
    with the same token rows at every hook (one shuffle order for all). ``keep`` (default: all hooks)
    names the hooks whose activations are buffered; ``gather`` (hook groups over processes) maps each
    forward pass's (n, d) activations to those of every process, so a rank training some of the hooks
    sees the tokens of all ranks.
    """

    MAX_EMPTY_CHUNKS = 8  # forward passes in a row that select no token before --positions is called wrong

    def __init__(self, model: "HookedTransformer", cfg: ActsConfig, hooks: list[str] | None = None,
                 keep: list[str] | None = None, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 buffer_device: str | torch.device = "cpu"):
        """buffer_device: where the shuffle buffer lives and batches come out; the model's GPU saves the
        copies to and from the host (and the host's slow shuffle) when the SAE trains on that GPU."""
        self.buffer_device = torch.device(buffer_device)
        self.hooks = list(hooks or [cfg.hook])
        for h in self.hooks:
            check_hook(model, h)
        check_positions(cfg.positions, model.cfg.n_ctx)
        self.keep = list(keep if keep is not None else self.hooks)
        self.model, self.cfg, self.gather = model, cfg, gather
        self.text = TextSource(cfg)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.buffers = {h: torch.empty(0, device=self.buffer_device) for h in self.keep}
        self.tokens_seen = 0
        self._empty = 0

    @torch.no_grad()
    def forward_chunks(self) -> dict[str, torch.Tensor]:
        """One model forward over seq_batch sequences: {hook: (n_selected_positions, d)} for the kept hooks.

        ConfigError if MAX_EMPTY_CHUNKS forwards in a row select no token (instead of looping forever)."""
        cfg, model = self.cfg, self.model
        texts = self.text.next(cfg.seq_batch)
        tokens = encode(model, texts)[:, : model.cfg.n_ctx]  # (batch, pos)
        if len(self.hooks) == 1:
            acts = {self.hooks[0]: capture(model, tokens.to(model.cfg.device), self.hooks[0], cfg.head)}
        else:
            acts = capture_many(model, tokens.to(model.cfg.device), self.hooks, cfg.head)  # {hook: (batch, pos, d)}
        mask = select_positions(tokens, model.tokenizer.pad_token_id, cfg.positions).to(next(iter(acts.values())).device)
        n = int(mask.sum())
        self.tokens_seen += n
        self._empty = 0 if n else self._empty + 1
        if self._empty >= self.MAX_EMPTY_CHUNKS:
            from workbench.errors import ConfigError

            raise ConfigError(f"positions: {cfg.positions!r} selected no token in {self._empty * cfg.seq_batch} sequences "
                              f"of at most {tokens.shape[1]} tokens (position 0, BOS, is never kept); "
                              f"pass --positions all, end, or indices inside the sequences")
        out = {}
        for h in self.hooks:  # the same order on every rank: gather is a collective
            a = acts[h][mask].float()
            a = self.gather(a) if self.gather is not None else a
            if h in self.keep:
                out[h] = a.to(self.buffer_device)
        return out

    def forward_chunk(self) -> torch.Tensor:
        """One model forward: (n_selected_positions, d) at the first hook."""
        return self.forward_chunks()[self.keep[0]]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_all()[self.keep[0]]

    def next_all(self) -> dict[str, torch.Tensor]:
        """{hook: (batch_size, d)}: the same tokens at every kept hook."""
        cfg = self.cfg
        want = max(cfg.batch_size, cfg.shuffle_buffer)
        parts = {h: [b] for h, b in self.buffers.items()}
        have = len(self.buffers[self.keep[0]])
        while have < want:
            chunk = self.forward_chunks()
            for h in self.keep:
                parts[h].append(chunk[h])
            have += len(chunk[self.keep[0]])
        perm = torch.randperm(have, generator=self.gen) if cfg.shuffle_buffer else None  # on the host: same order anywhere
        if perm is not None:
            perm = perm.to(self.buffer_device)
        out = {}
        for h in self.keep:
            buf = torch.cat(parts[h])
            if perm is not None:
                buf = buf[perm]
            out[h], self.buffers[h] = buf[: cfg.batch_size], buf[cfg.batch_size:]
        return out

    def state_dict(self) -> dict:
        return {"text": self.text.state_dict(), "gen": self.gen.get_state(),
                "buffers": {h: b.clone() for h, b in self.buffers.items()}, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, s: dict) -> None:
        self.text.load_state_dict(s["text"])
        self.gen.set_state(s["gen"])
        bufs = dict(s["buffers"]) if "buffers" in s else {self.keep[0]: s["buffer"]}  # older checkpoints
        self.buffers = {h: b.to(self.buffer_device) for h, b in bufs.items()}
        self.tokens_seen = s["tokens_seen"]


def check_positions(positions: str, n_ctx: int) -> None:
    """ConfigError unless some index in positions can fall inside a context of n_ctx tokens."""
    if positions in ("all", "end"):
        return
    idx = [int(p) for p in positions.split(",")]
    if not any(0 < p < n_ctx or -n_ctx < p < 0 for p in idx):
        from workbench.errors import ConfigError

        raise ConfigError(f"positions: {positions!r} selects no token: the model's context is {n_ctx} tokens and "
                          f"position 0 is BOS; pass indices in 1..{n_ctx - 1} or -{n_ctx - 1}..-1, all or end")


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


def cache_activations(cfg: ActsConfig, n_tokens: int, out, dtype: str = "float32", model=None, progress: bool = True):
    """Stream cfg.hook activations into a cache at out; returns (path, stats)."""
    import time

    from tqdm import tqdm

    from workbench.cache import CacheWriter
    from workbench.models import hook_dim, load_model

    if n_tokens <= 0:
        from workbench.errors import ConfigError

        raise ConfigError(f"tokens: must be positive, got {n_tokens}; pass --tokens > 0")
    model = model or load_model(cfg.model, cfg.device)
    d = hook_dim(model, cfg.hook, cfg.head)
    stream = ActivationStream(model, cfg)
    meta = {"model": cfg.model, "hook": cfg.hook, "head": cfg.head, "corpus": cfg.corpus,
            "positions": cfg.positions, "seed": cfg.seed}
    writer = CacheWriter(out, d, meta, dtype=dtype)
    t0 = time.time()
    with tqdm(total=n_tokens, desc=f"caching {cfg.hook}", unit="tok", disable=not progress) as bar:
        while writer.rows < n_tokens:
            acts = stream.forward_chunk()[: n_tokens - writer.rows]
            writer.write(acts)
            bar.update(len(acts))
    path = writer.close()
    secs = time.time() - t0
    return path, {"rows": writer.rows, "d": d, "seconds": secs, "tokens_per_s": writer.rows / secs}
