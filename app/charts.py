"""Altair chart builders shared by the pages (Streamlit draws them with st.altair_chart)."""

from __future__ import annotations

import altair as alt
import pandas as pd


def lines(df: pd.DataFrame, x: str, y: str, color: str | None = None, title: str = "", log_y: bool = False,
          dash: str | None = None) -> alt.Chart:
    """One line per value of `color` (and stroke dash per value of `dash`)."""
    enc = {"x": alt.X(f"{x}:Q", title=x), "y": alt.Y(f"{y}:Q", title=y, scale=alt.Scale(type="log") if log_y else alt.Undefined),
           "tooltip": [c for c in (color, dash, x, y) if c]}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    if dash:  # a legend of line strokes, so solid and dashed can be told apart
        enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash,
                                           legend=alt.Legend(symbolType="stroke", symbolStrokeWidth=2, symbolSize=400))
    return alt.Chart(df, title=title).mark_line(point=len(df) < 60).encode(**enc).interactive()


# where a colour scheme is dark (cell numbers are drawn in white there)
DARK = {"viridis": "low", "blueorange": "ends", "redblue": "ends", "greens": "high", "oranges": "high"}


DIVERGING = {"blueorange", "redblue", "redyellowblue", "purpleorange"}


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, title: str = "", scheme: str = "viridis",
            domain: tuple[float, float] | None = None, x_type: str = "O", y_type: str = "O", text: bool = False,
            x_values: list | None = None, mid: float = 0.0) -> alt.Chart:
    """A rect per (x, y) cell coloured by `value` (clamped to `domain`); optional numbers written in the cells.

    Diverging schemes are centred on `mid` (0 by default: a cell scoring 0 is drawn in the neutral
    middle colour); without a `domain` theirs is symmetric around `mid`. Values outside `domain` are
    drawn in the end colour: say so with :func:`clamp_note`. Row labels are never truncated.
    x_values fixes the x categories (so columns without any cell, e.g. unused experts, still show).
    """
    diverging = scheme in DIVERGING
    if diverging and domain is None and not df.empty:
        half = float((df[value].astype(float) - mid).abs().max()) or 1.0
        domain = (mid - half, mid + half)
    if domain:
        scale = alt.Scale(scheme=scheme, domain=list(domain), clamp=True, **({"domainMid": mid} if diverging else {}))
    else:
        scale = alt.Scale(scheme=scheme)
    if text and not df.empty:  # white numbers on dark cells, black on light ones
        v = df[value].astype(float)
        lo, hi = domain if domain else (v.min(), v.max())
        if diverging:  # distance from the middle colour, each side scaled to its own half of the domain
            t = 0.5 + 0.5 * ((v - mid) / ((hi - mid) or 1.0)).where(v >= mid, (v - mid) / ((mid - lo) or 1.0)).clip(-1, 1)
        else:
            t = ((v - lo) / ((hi - lo) or 1.0)).clip(0, 1)
        dark = {"low": t < 0.45, "high": t > 0.6, "ends": (t - 0.5).abs() > 0.3}[DARK.get(scheme, "low")]
        df = df.assign(_ink=dark.map({True: "white", False: "black"}))
    xs = alt.Scale(domain=list(x_values)) if x_values is not None else alt.Undefined
    base = alt.Chart(df, title=title).encode(x=alt.X(f"{x}:{x_type}", title=x, scale=xs),
                                             y=alt.Y(f"{y}:{y_type}", title=y, axis=alt.Axis(labelLimit=0)))
    chart = base.mark_rect().encode(color=alt.Color(f"{value}:Q", title=value, scale=scale),
                                    tooltip=[x, y, alt.Tooltip(f"{value}:Q", format=".3f")])
    if "_ink" not in df:
        return chart
    ink = alt.condition(alt.datum._ink == "white", alt.value("white"), alt.value("black"))  # no second colour scale
    return chart + base.mark_text(fontSize=11).encode(text=alt.Text(f"{value}:Q", format=".2f"), color=ink)


def clamp_note(df: pd.DataFrame, value: str, domain: tuple[float, float], label: str | None = None) -> str:
    """A sentence naming the cells a heatmap clamps to `domain` ("" if none), e.g. for a caption."""
    v = df[value].astype(float)
    out = df[(v < domain[0]) | (v > domain[1])]
    if out.empty:
        return ""
    vals = ", ".join(f"{x:.2f}" for x in out[value].astype(float).head(6)) + (" …" if len(out) > 6 else "")
    return (f"{len(out)} {label or value} value(s) outside [{domain[0]:g}, {domain[1]:g}] are drawn in the end colour "
            f"(clamped): {vals}; the numbers in the cells are not clamped.")


def bars(df: pd.DataFrame, x: str, y: str, title: str = "", x_type: str = "O", color: str | None = None,
         highlight: str | None = None) -> alt.Chart:
    """Vertical bars (side by side per value of `color`); `highlight` names a boolean column drawn in red."""
    enc = {"x": alt.X(f"{x}:{x_type}", title=x, sort=None), "y": alt.Y(f"{y}:Q", title=y),
           "tooltip": [c for c in (color, x, y) if c]}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
        enc["xOffset"] = alt.XOffset(f"{color}:N")
    elif highlight:
        enc["color"] = alt.condition(f"datum.{highlight}", alt.value("#e45756"), alt.value("#4c78a8"))
    return alt.Chart(df, title=title).mark_bar().encode(**enc)


def histogram(edges, counts, x_title: str, y_title: str, title: str = "", height: int = 260) -> alt.Chart:
    """Counts per bin [edges[i], edges[i+1]) as touching bars on a numeric x axis, both axes titled."""
    df = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": counts})
    return alt.Chart(df, title=title, height=height).mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("lo:Q", title=x_title, scale=alt.Scale(zero=True, nice=False), axis=alt.Axis(format=".2~f")), x2="hi:Q",
        y=alt.Y("count:Q", title=y_title, axis=alt.Axis(tickMinStep=1)), y2=alt.datum(0),  # bars from 0 up (x is ranged)
        tooltip=[alt.Tooltip("lo:Q", title="from", format=".3f"), alt.Tooltip("hi:Q", title="to", format=".3f"),
                 alt.Tooltip("count:Q", title=y_title)])


def frontier(df: pd.DataFrame, title: str = "CE loss recovered against L0 (upper left is better)") -> alt.Chart:
    """SAE runs as points at (L0, CE loss recovered), coloured by architecture, joined per architecture in L0 order."""
    base = alt.Chart(df, title=title).encode(
        x=alt.X("l0:Q", title="L0 (active latents per token)", scale=alt.Scale(zero=False)),
        y=alt.Y("ce_recovered:Q", title="CE loss recovered", scale=alt.Scale(zero=False)),
        color=alt.Color("arch:N", title="architecture"))
    tips = ["name", "arch", "k", "hook", *(["mode"] if "mode" in df else []), alt.Tooltip("l0:Q", format=".2f"),
            alt.Tooltip("ce_recovered:Q", format=".4f"), *([alt.Tooltip("fvu:Q", format=".4f")] if "fvu" in df else [])]
    pts = base.mark_point(filled=True, size=90).encode(tooltip=tips)
    return (base.mark_line(opacity=0.5).encode(order="l0:Q") + pts).interactive()


def error_bars(df: pd.DataFrame, cat: str, mean: str, std: str, title: str = "") -> alt.Chart:
    """Mean ± std per category (a point with a bar), categories top to bottom in the frame's order."""
    d = df.assign(lo=df[mean] - df[std], hi=df[mean] + df[std])
    base = alt.Chart(d, title=title).encode(y=alt.Y(f"{cat}:N", title=cat, sort=list(d[cat])))  # in the frame's order
    return (base.mark_rule().encode(x=alt.X("lo:Q", title=f"{mean} ± std", scale=alt.Scale(zero=False)), x2="hi:Q")
            + base.mark_point(filled=True, size=70).encode(x=f"{mean}:Q", tooltip=[cat, mean, std, "n"] if "n" in d else [cat, mean, std]))
