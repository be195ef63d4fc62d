"""Activation cache on disk: Arrow shards (memory-mapped through `datasets`) plus a manifest.

Layout of a cache directory::

    manifest.json             model, hook, d, dtype, n_tokens, shards [{file, rows, bytes, sha256, max_abs}]
    shard-00000.arrow         Arrow IPC stream, one column "acts" of fixed-size lists (d floats)

Shards are written to a temp name and renamed; the manifest is written last, so a cache without a
manifest is incomplete. The writer refuses non-finite activations. Opening a cache checks the manifest
and every shard's size, rows and width; ``verify()`` (``workbench acts info``, the SAE trainer) also
checks each shard's sha256 and that every value is finite and not huge, and names the bad file.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from workbench.errors import CacheError
from workbench.runs import atomic_write_json, make_dir, read_json_file, writing

MANIFEST = "manifest.json"
HUGE = 1e18  # |x| above this: squares summed over a row overflow float32, so FVU and losses become inf


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class CacheWriter:
    """Append (n, d) float tensors; shards roll over every `shard_rows` rows."""

    def __init__(self, path: str | Path, d: int, meta: dict, dtype: str = "float32", shard_rows: int = 262_144):
        import pyarrow as pa

        self.pa = pa
        self.path = make_dir(path)
        with writing(self.path / MANIFEST):
            (self.path / MANIFEST).unlink(missing_ok=True)  # incomplete until closed
            for old in self.path.glob(".shard-*.tmp"):  # left by a killed writer
                old.unlink(missing_ok=True)
        self.d, self.meta, self.dtype, self.shard_rows = d, meta, dtype, shard_rows
        self.np_dtype = np.dtype(dtype)
        self.schema = pa.schema([("acts", pa.list_(pa.from_numpy_dtype(self.np_dtype), d))])
        self.shards: list[dict] = []
        self.rows = 0
        self._writer = None
        self._tmp: Path | None = None
        self._shard_rows = 0
        self._max_abs = 0.0

    def _open_shard(self) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        self._tmp = self.path / f".{name}.tmp"
        self._final = self.path / name
        with writing(self._tmp):
            self._sink = self.pa.OSFile(str(self._tmp), "wb")
            self._writer = self.pa.ipc.new_stream(self._sink, self.schema)
        self._shard_rows = 0
        self._max_abs = 0.0

    def _close_shard(self) -> None:
        with writing(self._final):
            self._writer.close()
            self._sink.close()
            os.replace(self._tmp, self._final)
        self.shards.append({"file": self._final.name, "rows": self._shard_rows, "bytes": self._final.stat().st_size,
                            "sha256": sha256_file(self._final), "max_abs": self._max_abs})
        self._writer = None

    def write(self, acts: torch.Tensor) -> None:
        """acts: (n, d)."""
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise CacheError(f"expected activations of shape (n, {self.d}), got {tuple(acts.shape)}")
        arr = acts.detach().to("cpu").numpy().astype(self.np_dtype, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            raise CacheError(f"{int((~finite).sum())} non-finite activation values (NaN or inf) to write to {self.path}; "
                             f"the model's activations at this hook are not finite, nothing was cached")
        start = 0
        while start < len(arr):
            if self._writer is None:
                self._open_shard()
            take = min(len(arr) - start, self.shard_rows - self._shard_rows)
            flat = self.pa.array(np.ascontiguousarray(arr[start:start + take]).reshape(-1))
            col = self.pa.FixedSizeListArray.from_arrays(flat, self.d)
            with writing(self._tmp):
                self._writer.write_batch(self.pa.record_batch([col], schema=self.schema))
            if take:
                self._max_abs = max(self._max_abs, float(np.abs(arr[start:start + take]).max()))
            self._shard_rows += take
            self.rows += take
            start += take
            if self._shard_rows >= self.shard_rows:
                self._close_shard()

    def close(self) -> Path:
        if self._writer is not None:
            self._close_shard()
        atomic_write_json(self.path / MANIFEST, {**self.meta, "d": self.d, "dtype": self.dtype,
                                                  "n_tokens": self.rows, "shards": self.shards,
                                                  "created": time.time()})
        return self.path


def _read_manifest(mf: Path) -> tuple[dict, int, list[dict]]:
    """(manifest, d, shards) after checking every field the reader uses; CacheError naming the field."""
    redo = "re-run `workbench acts cache`"
    try:
        m = read_json_file(mf)
    except (OSError, ValueError) as e:  # not JSON, not UTF-8
        raise CacheError(f"{mf} is corrupt ({e}); {redo}") from e
    if not isinstance(m, dict):
        raise CacheError(f"{mf} is corrupt (a JSON {type(m).__name__}, not an object); {redo}")
    d, shards = m.get("d"), m.get("shards")
    if "d" not in m:
        raise CacheError(f"{mf} has no 'd' (the activation width); {redo}")
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise CacheError(f"{mf}: 'd' must be a positive integer, got {d!r}; {redo}")
    if not isinstance(shards, list):
        raise CacheError(f"{mf}: 'shards' must be a list of shard entries, got {type(shards).__name__}; {redo}")
    for i, s in enumerate(shards):
        ok = (isinstance(s, dict) and isinstance(s.get("file"), str) and "/" not in s["file"]
              and all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for k in ("rows", "bytes")))
        if not ok:
            raise CacheError(f"{mf}: shard entry {i} must be {{file, rows, bytes}} (a file name and two integers), got {s!r}; {redo}")
    return m, d, shards


class ActivationCache:
    """A finished cache, memory-mapped: ``len(cache)``, ``cache[i:j]`` -> (j-i, d) tensor, batches."""

    def __init__(self, path: str | Path):
        import datasets

        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise CacheError(f"{self.path} has no {MANIFEST}: the cache is missing or was never finished; "
                             f"re-run `workbench acts cache --out {self.path}`")
        self.manifest, self.d, shards = _read_manifest(mf)
        parts = []
        for s in shards:
            f = self.path / s["file"]
            if not f.is_file():
                raise CacheError(f"cache shard {f} is missing; re-run `workbench acts cache`")
            if f.stat().st_size != s["bytes"]:
                raise CacheError(f"cache shard {f} is truncated or modified ({f.stat().st_size} bytes, manifest says {s['bytes']})")
            try:
                ds = datasets.Dataset.from_file(str(f), in_memory=False)
                width = ds.data.schema.field("acts").type.list_size
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                raise CacheError(f"cache shard {f} is corrupt ({e})") from e
            if len(ds) != s["rows"]:
                raise CacheError(f"cache shard {f} has {len(ds)} rows, manifest says {s['rows']}")
            if width != self.d:
                raise CacheError(f"cache shard {f} holds rows of width {width}, but {mf} says d={self.d}; "
                                 f"the manifest does not belong to these shards: re-run `workbench acts cache`")
            parts.append(ds)
        self._parts = parts  # one Dataset per shard, for verify()
        if not parts or sum(len(p) for p in parts) == 0:
            raise CacheError(f"the cache {self.path} holds no activations (0 rows); "
                             f"re-run `workbench acts cache` with --tokens > 0")
        self.ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        self.table = self.ds.data  # memory-mapped Arrow table

    @property
    def has_checksums(self) -> bool:
        return all("sha256" in s for s in self.manifest["shards"])

    def verify(self) -> None:
        """Check every shard's sha256 (caches written before checksums: skipped) and that every value is
        finite and below HUGE; CacheError naming the shard otherwise. Reads the whole cache once."""
        for s, part in zip(self.manifest["shards"], self._parts):
            f = self.path / s["file"]
            if "sha256" in s and sha256_file(f) != s["sha256"]:
                raise CacheError(f"cache shard {f} was modified after it was written (its sha256 differs from "
                                 f"{self.path / MANIFEST}); re-run `workbench acts cache`")
            for batch in part.data.to_batches():
                vals = batch.column(0).flatten().to_numpy(zero_copy_only=False)  # (rows * d,), mapped, not copied
                bad = int(vals.size - np.isfinite(vals).sum())
                if bad:
                    raise CacheError(f"cache shard {f} holds {bad} non-finite values (NaN or inf); "
                                     f"training on it would diverge: re-run `workbench acts cache`")
                top = float(np.abs(vals).max()) if vals.size else 0.0
                if top > HUGE:
                    raise CacheError(f"cache shard {f} holds values up to {top:.3g} (above {HUGE:.0e}): their squares "
                                     f"overflow float32, so FVU and the loss would be inf; re-run `workbench acts cache`")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, sl: slice) -> torch.Tensor:
        """Contiguous rows as a (n, d) float tensor; only those rows are read from the mapped file."""
        start, stop, _ = sl.indices(len(self))
        chunk = self.table.slice(start, stop - start).column("acts").combine_chunks()
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(flat.reshape(-1, self.d).copy()).float()

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, block: int = 8192,
                start_batch: int = 0, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
        """Endless (batch_size, d) batches; shuffles block order each epoch and rows within a window.

        Deterministic given seed, so ``start_batch`` resumes exactly where a run stopped. With
        ``world`` > 1 (data parallel) batch_size is the global batch and this rank reads only its
        disjoint shard of it, rows [rank * b, (rank + 1) * b) with b = batch_size // world: the ranks'
        shards, concatenated in rank order, are the one-process batch.
        """
        if batch_size % world:
            raise CacheError(f"a global batch of {batch_size} does not split over {world} processes; pass a --batch-size that is a multiple of {world}")
        local = batch_size // world
        n = len(self)
        if n < batch_size:
            raise CacheError(f"cache {self.path} has {n} rows, fewer than one batch of {batch_size}")
        per_epoch = n // batch_size
        epoch = start_batch // per_epoch
        skip = start_batch % per_epoch
        while True:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = self._epoch_order(n, block, shuffle, g)
            for b in range(skip, per_epoch):
                lo = b * batch_size + rank * local
                yield self._gather(order[lo:lo + local])
            skip = 0
            epoch += 1

    @staticmethod
    def _epoch_order(n: int, block: int, shuffle: bool, g: torch.Generator) -> torch.Tensor:
        if not shuffle:
            return torch.arange(n)
        blocks = torch.randperm(-(-n // block), generator=g)
        order = torch.cat([torch.arange(b * block, min((b + 1) * block, n)) for b in blocks.tolist()])
        # shuffle within windows of 4 blocks: good mixing, reads stay local
        w = 4 * block
        return torch.cat([order[i:i + w][torch.randperm(len(order[i:i + w]), generator=g)] for i in range(0, n, w)])

    def _gather(self, idx: torch.Tensor, gap: int = 4096) -> torch.Tensor:
        """Rows idx (any order) -> (len(idx), d), reading one contiguous window per cluster of rows.

        A shuffled batch draws from a few blocks anywhere in the file; reading min(idx)..max(idx) in one
        window would read up to the whole cache per batch (4.4 s a batch on a 2M-token cache here).
        """
        order = torch.argsort(idx)
        s = idx[order]
        cuts = (torch.nonzero(s[1:] - s[:-1] > gap).squeeze(1) + 1).tolist()
        out = torch.empty(len(idx), self.d)
        for a, b in zip([0, *cuts], [*cuts, len(s)]):
            lo, hi = int(s[a]), int(s[b - 1]) + 1
            out[order[a:b]] = self[lo:hi][s[a:b] - lo]
        return out
