"""Offline routing tasks: MovieLens-100k multi-task, synthetic multi-task regression, planted routing.

Each builder returns a :class:`TaskData`: feature/id tensors per split, targets per task and what the
model needs to know about the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Split:
    x: Tensor  # (N, d) dense features (MovieLens: categorical ids, embedded by the model)
    y: Tensor  # (N, T) targets per task
    y_mask: Tensor  # (N, T) bool: which targets count in the loss/metric
    ids: Tensor | None = None  # (N,) token ids for the hash gate
    cluster: Tensor | None = None  # (N,) planted cluster (planted task only)


@dataclass
class TaskData:
    name: str
    kind: str  # "classification" (BCE, ROC-AUC) or "regression" (MSE)
    tasks: list[str]
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)
