"""Routing data: MovieLens-100k from the recbole wheel, synthetic multi-task, planted clusters."""

import importlib.resources

import pytest
import torch

from routing.data.movielens import DataMissingError, load_movielens, ml100k_dir
from routing.data.planted import make_planted
from routing.data.synthetic import make_synthetic


def _have_recbole() -> bool:
    try:
        ml100k_dir()
    except DataMissingError:
        return False
    return True


@pytest.mark.skipif(not _have_recbole(), reason="recbole==1.2.1 (the wheel carrying ml-100k) is not installed; "
                                                 "pip install --no-deps recbole==1.2.1")
def test_movielens_two_task_construction():
    data = load_movielens(data_seed=0)
    assert data.info["n_ratings"] == 100_000
    n = sum(len(s.y) for s in (data.train, data.val, data.test))
    assert n == 200_000 and len(data.train.y) == 160_000
    assert data.tasks == ["watch", "like"] and data.kind == "classification"
    y, mask = data.train.y, data.train.y_mask
    assert abs(float(y[:, 0].mean()) - 0.5) < 0.01  # one sampled negative per rating
    assert mask[:, 0].all() and torch.equal(mask[:, 1], y[:, 0].bool())  # "like" only on watched pairs
    assert data.info["cardinalities"][:2] == [943, 1682]
    assert int(data.train.x.max(0).values[0]) < 943 and torch.equal(data.train.ids, data.train.x[:, 0])


def test_movielens_missing_is_a_clear_error(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(DataMissingError, match="recbole==1.2.1"):
        ml100k_dir()


def test_synthetic_tasks_have_the_requested_correlation():
    for rho in (0.0, 0.9):
        data = make_synthetic(n_train=4000, d=16, correlation=rho, seed=1)
        x, y = data.train.x, data.train.y
        w = torch.linalg.lstsq(x, y).solution  # linear parts of both tasks, (d, 2)
        cos = float(torch.nn.functional.cosine_similarity(w[:, 0], w[:, 1], dim=0))
        assert abs(cos - rho) < 0.15
        assert abs(float(y.mean())) < 0.05


def test_planted_clusters_are_separable_and_balanced():
    data = make_planted(n_train=4000, d=16, clusters=4, seed=0)
    c, x = data.train.cluster, data.train.x
    counts = torch.bincount(c, minlength=4)
    assert counts.min() > 800
    centres = torch.stack([x[c == j].mean(0) for j in range(4)])
    nearest = torch.cdist(x, centres).argmin(1)
    assert float((nearest == c).float().mean()) > 0.95
