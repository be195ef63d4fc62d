"""The one place the app runs a model: an SAE's activations on the user's own text (feature browser).

The model and the SAE are loaded once per run dir and kept (``st.cache_resource``); the activations
of each (run, text, mode) are cached (``st.cache_data``, keyed by the weights file's stamp so a retrained
SAE is re-read). torch is imported only when a text is submitted, so the pages stay fast to open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

import data


class TextError(Exception):
    """The text cannot be run (e.g. a word the model's tokenizer does not know): the message says why."""


def activations(run_dir: str | Path, text: str, mode: str) -> tuple[list[str], np.ndarray]:
    """(token strings after BOS, their activations (n_tokens, d_sae) as `sae analyze` stores them) for `text`."""
    from sae import io as sae_io

    stamp = data._stamp(Path(run_dir) / sae_io.WEIGHTS)
    if stamp is None:
        raise TextError(f"{run_dir} has no {sae_io.WEIGHTS} (training unfinished)")
    return _activations(str(run_dir), text.strip(), mode, stamp)


@st.cache_data(show_spinner=False, max_entries=200)
def _activations(run_dir: str, text: str, mode: str, stamp: tuple) -> tuple[list[str], np.ndarray]:
    from sae.analyze import text_activations
    from workbench.errors import WorkbenchError

    model, sae, acts = _loaded(run_dir, mode, stamp)
    try:
        return text_activations(sae, model, acts.hook, acts.head, text)
    except WorkbenchError as e:
        raise TextError(str(e)) from None


@st.cache_resource(show_spinner="Loading the model and the SAE (once per run)…", max_entries=4)
def _loaded(run_dir: str, mode: str, stamp: tuple):
    """(model, SAE in `mode`, the run's ActsConfig), on the CPU."""
    from sae import io as sae_io
    from sae.config import load_train_config
    from workbench.models import load_model
    from workbench.runs import Run

    acts = load_train_config(Run.open(run_dir).config).acts
    sae = sae_io.load(run_dir, device="cpu")
    if mode in sae.modes:
        sae.set_mode(mode)
    return load_model(acts.model, device="cpu"), sae.eval(), acts
