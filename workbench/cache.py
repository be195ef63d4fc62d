"""Activation cache on disk: Arrow shards (memory-mapped through `datasets`) plus a manifest.

Layout of a cache directory::

    manifest.json             model, hook, d, dtype, n_tokens, shards [{file, rows, bytes}]
    shard-00000.arrow         Arrow IPC stream, one column "acts" of fixed-size lists (d floats)

Shards are written to a temp name and renamed; the manifest is written last, so a cache without a
manifest is incomplete. Reading checks every shard against the manifest and names the bad file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from workbench.errors import CacheError
from workbench.runs import atomic_write_json

MANIFEST = "manifest.json"


class CacheWriter:
    """Append (n, d) float tensors; shards roll over every `shard_rows` rows."""

    def __init__(self, path: str | Path, d: int, meta: dict, dtype: str = "float32", shard_rows: int = 262_144):
        import pyarrow as pa

        self.pa = pa
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST).unlink(missing_ok=True)  # incomplete until closed
        self.d, self.meta, self.dtype, self.shard_rows = d, meta, dtype, shard_rows
        self.np_dtype = np.dtype(dtype)
        self.schema = pa.schema([("acts", pa.list_(pa.from_numpy_dtype(self.np_dtype), d))])
        self.shards: list[dict] = []
        self.rows = 0
        self._writer = None
        self._tmp: Path | None = None
        self._shard_rows = 0

    def _open_shard(self) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        self._tmp = self.path / f".{name}.tmp"
        self._final = self.path / name
        self._sink = self.pa.OSFile(str(self._tmp), "wb")
        self._writer = self.pa.ipc.new_stream(self._sink, self.schema)
        self._shard_rows = 0

    def _close_shard(self) -> None:
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self._final)
        self.shards.append({"file": self._final.name, "rows": self._shard_rows, "bytes": self._final.stat().st_size})
        self._writer = None

    def write(self, acts: torch.Tensor) -> None:
        """acts: (n, d)."""
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise CacheError(f"expected activations of shape (n, {self.d}), got {tuple(acts.shape)}")
        arr = acts.detach().to("cpu").numpy().astype(self.np_dtype, copy=False)
        start = 0
        while start < len(arr):
            if self._writer is None:
                self._open_shard()
            take = min(len(arr) - start, self.shard_rows - self._shard_rows)
            flat = self.pa.array(np.ascontiguousarray(arr[start:start + take]).reshape(-1))
            col = self.pa.FixedSizeListArray.from_arrays(flat, self.d)
            self._writer.write_batch(self.pa.record_batch([col], schema=self.schema))
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


class ActivationCache:
    """A finished cache, memory-mapped: ``len(cache)``, ``cache[i:j]`` -> (j-i, d) tensor, batches."""

    def __init__(self, path: str | Path):
        import datasets

        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise CacheError(f"{self.path} has no {MANIFEST}: the cache is missing or was never finished; "
                             f"re-run `workbench acts cache --out {self.path}`")
        try:
            self.manifest = json.loads(mf.read_text())
            shards = self.manifest["shards"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CacheError(f"{mf} is corrupt ({e}); re-run `workbench acts cache`") from e
        self.d = int(self.manifest["d"])
        parts = []
        for s in shards:
            f = self.path / s["file"]
            if not f.is_file():
                raise CacheError(f"cache shard {f} is missing; re-run `workbench acts cache`")
            if f.stat().st_size != s["bytes"]:
                raise CacheError(f"cache shard {f} is truncated or modified ({f.stat().st_size} bytes, manifest says {s['bytes']})")
            try:
                ds = datasets.Dataset.from_file(str(f), in_memory=False)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
                raise CacheError(f"cache shard {f} is corrupt ({e})") from e
            if len(ds) != s["rows"]:
                raise CacheError(f"cache shard {f} has {len(ds)} rows, manifest says {s['rows']}")
            parts.append(ds)
        self.ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        self.table = self.ds.data  # memory-mapped Arrow table

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
