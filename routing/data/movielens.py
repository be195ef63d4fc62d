"""MovieLens-100k as a two-task recommendation problem, read from the recbole==1.2.1 wheel.

Files: ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`` (tab-separated, typed headers
like ``user_id:token``), read via importlib.resources; install with
``pip install recbole==1.2.1 --no-deps``.

Construction (documented in docs/routing.md): every observed (user, item) rating is a positive example
of task "watch"; for each one a random item the user did not rate (seeded) is a negative. Task
"like" = rating >= 4, defined (and scored) on the observed pairs only. Features per example, all
categorical: user id, item id, age bucket, gender, occupation, release-decade bucket and the first
listed genre; the model embeds them. Examples are split 80/10/10 at random with a fixed data seed.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import torch

from routing.data import Split, TaskData
from workbench.errors import WorkbenchError

INSTALL_HINT = "install it with: pip install -c constraints.txt --no-deps recbole==1.2.1"


class DataMissingError(WorkbenchError, FileNotFoundError):
    """The MovieLens files are not installed."""


def ml100k_dir() -> Path:
    """Directory holding ml-100k.{inter,user,item} inside the recbole package; clear error if absent."""
    try:
        root = importlib.resources.files("recbole")
    except ModuleNotFoundError:
        raise DataMissingError(f"MovieLens-100k comes from the recbole wheel, which is not installed; {INSTALL_HINT}") from None
    path = Path(str(root / "dataset_example" / "ml-100k"))
    missing = [n for n in ("ml-100k.inter", "ml-100k.user", "ml-100k.item") if not (path / n).is_file()]
    if missing:
        raise DataMissingError(f"recbole is installed but {path} lacks {', '.join(missing)}; reinstall: {INSTALL_HINT}")
    return path


def read_atomic(path: Path) -> dict[str, list[str]]:
    """Read a recbole atomic file: header 'name:type' columns, tab-separated rows -> column lists."""
    lines = path.read_text(encoding="latin-1").splitlines()
    names = [h.split(":")[0] for h in lines[0].split("\t")]
    cols: dict[str, list[str]] = {n: [] for n in names}
    for line in lines[1:]:
        parts = line.split("\t")
        for n, v in zip(names, parts + [""] * (len(names) - len(parts))):
            cols[n].append(v)
    return cols


def _codes(values: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    vocab = {v: i for i, v in enumerate(sorted(set(values)))}
    return np.array([vocab[v] for v in values], dtype=np.int64), vocab


def load_movielens(data_seed: int = 0, max_examples: int | None = None) -> TaskData:
    d = ml100k_dir()
    inter, users, items = (read_atomic(d / f"ml-100k.{s}") for s in ("inter", "user", "item"))
    uid_of = {u: i for i, u in enumerate(users["user_id"])}
    iid_of = {it: i for i, it in enumerate(items["item_id"])}
    n_users, n_items = len(uid_of), len(iid_of)
    age = np.array([min(int(a) // 10, 7) for a in users["age"]])
    gender, _ = _codes(users["gender"])
    occ, occ_vocab = _codes(users["occupation"])
    years = [int(y) if y.strip().isdigit() else 1990 for y in items["release_year"]]
    decade = np.array([min(max((y - 1920) // 10, 0), 8) for y in years])
    genre, genre_vocab = _codes([(c.split(" ")[0] if c.strip() else "unknown") for c in items["class"]])

    u = np.array([uid_of[x] for x in inter["user_id"]])
    i = np.array([iid_of[x] for x in inter["item_id"]])
    rating = np.array([float(r) for r in inter["rating"]])
    rng = np.random.default_rng(data_seed)
    seen = set(zip(u.tolist(), i.tolist()))
    neg_i = rng.integers(0, n_items, size=len(u))
    for j in range(len(u)):  # resample the rare collisions with a rated item
        while (u[j], neg_i[j]) in seen:
            neg_i[j] = rng.integers(0, n_items)
    users_all = np.concatenate([u, u])
    items_all = np.concatenate([i, neg_i])
    watch = np.concatenate([np.ones(len(u)), np.zeros(len(u))])
    like = np.concatenate([(rating >= 4).astype(float), np.zeros(len(u))])
    like_mask = np.concatenate([np.ones(len(u), bool), np.zeros(len(u), bool)])
    feats = np.stack([users_all, items_all, age[users_all], gender[users_all], occ[users_all],
                      decade[items_all], genre[items_all]], 1)
    y = np.stack([watch, like], 1)
    y_mask = np.stack([np.ones(len(y), bool), like_mask], 1)
    order = rng.permutation(len(y))
    if max_examples is not None:
        order = order[:max_examples]
    n = len(order)
    cut = [0, int(0.8 * n), int(0.9 * n), n]

    def split(lo: int, hi: int) -> Split:
        idx = order[lo:hi]
        x = torch.from_numpy(feats[idx])
        return Split(x, torch.from_numpy(y[idx]).float(), torch.from_numpy(y_mask[idx]), ids=x[:, 0].clone())

    cards = [n_users, n_items, 8, len(set(users["gender"])), len(occ_vocab), 9, len(genre_vocab)]
    return TaskData("movielens", "classification", ["watch", "like"], split(cut[0], cut[1]), split(cut[1], cut[2]),
                    split(cut[2], cut[3]), {"cardinalities": cards, "n_ratings": len(u), "path": str(d)})
