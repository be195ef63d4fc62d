"""Page furniture shared by every page: page setup, the run picker, "not available" notes, section guards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pandas as pd
import streamlit as st

import data

TITLE = "Sparse Allocation Workbench"


def setup(title: str) -> None:
    """Page config + title; every page calls this first."""
    st.set_page_config(page_title=f"{title} · {TITLE}", layout="wide")
    st.title(title)


def not_available(what: str, reason: str) -> None:
    """The one way a page says that something cannot be shown for this run."""
    st.info(f"{what}: not available for this run ({reason})")


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    """Run one part of a page; if its files hold something unexpected, say so and let the rest render."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - Streamlit's own control flow uses BaseException and passes through
        st.warning(f"{title}: unreadable ({type(e).__name__}: {e})")


def pick_run(kind: str, label: str = "Run", runs: pd.DataFrame | None = None, default: str | None = None) -> pd.Series | None:
    """A selectbox of the runs of one kind; the choice is kept in the URL (?run=NAME) so links and reloads keep it.

    Without ?run= the default is `default`, else the newest run; a ?run= naming no run of this kind is
    reported (not silently replaced by another run).
    """
    df = data.runs_of(kind) if runs is None else runs
    asked = st.query_params.get("run")
    if df.empty:
        st.info(f"No {kind} runs in {data.runs_root()} yet." + (f" (The link asked for run `{asked}`.)" if asked else ""))
        return None
    names = df["name"].tolist()
    want = asked
    if want not in names:
        want = default if default in names else df.sort_values("created", na_position="first")["name"].iloc[-1]
        if asked:
            st.warning(f"No {kind} run named `{asked}` in {data.runs_root()} (the link's ?run=); showing `{want}` instead. "
                       f"Pick another run below.")
    name = st.selectbox(label, names, index=names.index(want), key=f"pick_{kind}")
    if st.query_params.get("run") != name:
        st.query_params["run"] = name
    return df[df["name"] == name].iloc[0]


def unreadable(bad: list[dict]) -> None:
    """List run dirs that could not be read, each with why."""
    if bad:
        st.warning("\n".join(f"- `{b['name']}` — unreadable: {b['error']}" for b in bad))
