"""Read an offline wandb run back for tests: the records of its run-*.wandb file (wandb's LevelDB-style log).

The file starts with a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a
7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last); a record is a protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32768


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + 7 + n > len(data):  # a chunk still being written (see complete_records)
            break
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


def complete_records(path: str | Path, timeout_s: float = 60.0) -> list:
    """The records of a finished run's log, once its ``exit`` record is on disk. wandb's service process writes
    the log behind a buffer and may still be flushing it when ``run.finish()`` has returned (seen once on a
    loaded 2-core box: the file held no run record yet), so a reader polls for the last record it needs."""
    deadline = time.monotonic() + timeout_s
    while True:
        recs = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def offline_run(run_dir: Path) -> dict:
    """The offline run under run_dir/wandb as plain data: run (id, group, tags, config), history rows,
    summary, artifacts (name, type, metadata, files)."""
    files = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    out = {"dir": files[0].parent, "run": None, "history": [], "summary": {}, "artifacts": []}
    for r in complete_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"id": r.run.run_id, "group": r.run.run_group, "tags": list(r.run.tags),
                          "config": {u.key: json.loads(u.value_json) for u in r.run.config.update}}
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for u in r.summary.update:
                out["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "artifact":
            a = r.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                     "files": [c.path for c in a.manifest.contents]})
    return out
