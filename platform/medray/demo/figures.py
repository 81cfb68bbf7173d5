"""Small PNG figures for the demo report (and anyone else): slice montages, curves, bars, histograms,
timelines.

Each function draws one figure and writes it to ``path`` as a PNG of a stated pixel size, small
enough to sit next to an HTML page (tens of KB). Every text drawn into a figure (title, panel
titles, labels, legend) is also written into the PNG's text metadata, so that searching a file's
bytes for PHI searches its titles too. Callers hand over pseudonymous, de-identified material only:
pseudonyms, reason codes, counts and pixel data without burned-in text.

matplotlib is imported on first use, through its object-oriented API with the Agg canvas: no
global pyplot state is touched, so a notebook's own backend stays as it is.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medray.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["TITLE_LINE_PX", "slice_montage", "curves", "bars", "histogram", "Series", "Panel", "timeline"]

_DPI = 100
TITLE_LINE_PX = 14  # height of one line of a montage panel's title
_FONT = 8
_PALETTE = ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd")


def _figure(width_px: int, height_px: int, *, layout: str | None = None) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("medray.demo.figures needs matplotlib: pip install 'matplotlib>=3.8'") from None
    return Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout=layout)


def _save(fig: Figure, path: str | Path, texts: Sequence[str]) -> Path:
    """Render ``fig`` at its exact pixel size and write it as an optimised PNG with ``texts`` as metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    # A palette of 256 colours keeps charts and grey-scale slices visually lossless, in files up to
    # three times smaller than 32-bit RGBA.
    image = Image.fromarray(rgba).convert("RGB").quantize(colors=256)
    info = PngInfo()
    info.add_text("Software", "medray.demo.figures")
    info.add_text("Description", "\n".join(t for t in texts if t))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.save(buffer, format="png", optimize=True, pnginfo=info)
    path.write_bytes(buffer.getvalue())
    return path


def _image(volume: np.ndarray, view: str) -> np.ndarray:
    array = np.asarray(volume, dtype=np.float32)
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"expected a 2-D slice or a (z, y, x) volume, got shape {array.shape}")
    return array[array.shape[0] // 2] if view == "mid" else array.max(axis=0)


def slice_montage(
    volumes: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    *,
    view: Literal["mid", "max"] = "mid",
    columns: int = 4,
    panel_px: int = 160,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Grey-scale panels of ``volumes`` under their ``titles`` (``\\n`` for more lines); returns ``path``.

    A 2-D array is shown as it is; a ``(z, y, x)`` volume by its middle axial slice (``view="mid"``)
    or its axial maximum-intensity projection (``view="max"``), which shows a bright finding
    wherever it lies along z. ``value_range`` maps to black..white (the default suits windowed
    volumes in [0, 1]). The PNG is ``min(n, columns) * panel_px`` wide and ``rows * (panel_px +
    TITLE_LINE_PX * title lines)`` high, where title lines is the most any title has.
    """
    if not volumes or len(volumes) != len(titles):
        raise ValueError(f"need one title per volume and at least one volume, got {len(volumes)} volumes "
                         f"and {len(titles)} titles")
    if view not in ("mid", "max"):
        raise ValueError(f"view must be 'mid' or 'max', got {view!r}")
    images = [_image(v, view) for v in volumes]
    cols = min(len(images), max(1, columns))
    rows = math.ceil(len(images) / cols)
    lines = max(t.count("\n") + 1 for t in titles)
    cell_h = panel_px + TITLE_LINE_PX * lines
    width, height = cols * panel_px, rows * cell_h
    fig = _figure(width, height)
    for i, (image, title) in enumerate(zip(images, titles)):
        row, col = divmod(i, cols)
        # Placed by pixel arithmetic, not by a layout engine: every image gets exactly panel_px
        # square and its title the band above it, so the sizes in the docstring hold.
        ax = fig.add_axes((col * panel_px / width, 1 - (row * cell_h + cell_h) / height,
                           panel_px / width, panel_px / height))
        ax.imshow(image, cmap="gray", vmin=value_range[0], vmax=value_range[1], aspect="auto",
                  interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=_FONT, pad=2, linespacing=1.1)
    return _save(fig, path, titles)


def _suptitle(fig: Figure, title: str) -> None:
    if title:
        fig.suptitle(title, fontsize=_FONT + 1)


def curves(
    x: Sequence[float],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str = "epoch",
    limits: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
    size_px: tuple[int, int] = (720, 280),
) -> Path:
    """Line charts side by side, one per panel (its y label), one line per named series; returns ``path``.

    Every series has one value per ``x`` (NaN where it has none); ``limits`` fixes a panel's y range
    (e.g. ``{"held-out AUC": (0, 1)}``). The PNG is ``size_px`` (width, height) pixels.
    """
    if not panels:
        raise ValueError("need at least one panel")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(*size_px, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    texts = [title, xlabel]
    for ax, (ylabel, series) in zip(axes, panels.items()):
        for name, values in series.items():
            if len(values) != len(x):
                raise ValueError(f"series {name!r} of panel {ylabel!r} has {len(values)} values for {len(x)} x values")
            ax.plot(x, values, marker="o", markersize=3, label=name)
        ax.set_xlabel(xlabel, fontsize=_FONT)
        ax.set_ylabel(ylabel, fontsize=_FONT)
        ax.tick_params(labelsize=_FONT - 1)
        ax.grid(alpha=0.3)
        if all(float(v).is_integer() for v in x):  # epochs: no ticks at 1.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if limits and ylabel in limits:
            ax.set_ylim(*limits[ylabel])
        if len(series) > 1:
            ax.legend(fontsize=_FONT - 1)
        texts += [ylabel, *series]
    _suptitle(fig, title)
    return _save(fig, path, texts)


def bars(
    labels: Sequence[str],
    segments: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    xlabel: str,
    title: str = "",
    value_format: str = "{:g}",
    size_px: tuple[int, int] = (640, 280),
) -> Path:
    """Horizontal bars, one per label, stacked from ``segments`` (name -> one value per label).

    Each bar's total is printed at its end; with more than one segment a legend names them.
    The first label is the top bar. The PNG is ``size_px`` (width, height) pixels; returns ``path``.
    """
    if not labels or not segments:
        raise ValueError("need at least one label and one segment")
    for name, values in segments.items():
        if len(values) != len(labels):
            raise ValueError(f"segment {name!r} has {len(values)} values for {len(labels)} labels")
    fig = _figure(*size_px, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for name, values in segments.items():
        ax.barh(y, values, left=left, label=name, height=0.7)
        left += np.asarray(values, dtype=float)
    for yi, total in zip(y, left):
        ax.annotate(value_format.format(total), (total, yi), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=_FONT - 1)
    ax.set_yticks(y, labels, fontsize=_FONT)
    ax.set_xlabel(xlabel, fontsize=_FONT)
    ax.tick_params(axis="x", labelsize=_FONT - 1)
    ax.set_xlim(0, max(float(left.max()), 1e-9) * 1.15)  # room for the printed totals
    if len(segments) > 1:
        # Below the chart, where it hides no bar.
        fig.legend(loc="outside lower center", ncols=min(3, len(segments)), fontsize=_FONT - 1, frameon=False)
    _suptitle(fig, title)
    return _save(fig, path, [title, xlabel, *labels, *segments])


def histogram(
    values: np.ndarray,
    path: str | Path,
    *,
    xlabel: str,
    bins: int = 60,
    value_range: tuple[float, float] | None = None,
    log: bool = False,
    title: str = "",
    size_px: tuple[int, int] = (640, 280),
) -> Path:
    """A histogram of ``values`` (any shape, flattened; NaNs left out), counts on a log axis if ``log``.

    The PNG is ``size_px`` (width, height) pixels; returns ``path``.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise ValueError("no finite values to draw a histogram of")
    fig = _figure(*size_px, layout="constrained")
    ax = fig.subplots()
    ax.hist(flat, bins=bins, range=value_range, log=log, color="#4c72b0")
    ax.set_xlabel(xlabel, fontsize=_FONT)
    ax.set_ylabel("count", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    ax.grid(alpha=0.3)
    _suptitle(fig, title)
    return _save(fig, path, [title, xlabel])


@dataclass(frozen=True)
class Series:
    """One named series of a timeline panel: ``values`` at times ``t``, drawn as ``style``.

    ``stack``: filled, stacked on the panel's other ``stack`` series (which share ``t``); ``step``:
    a dashed step line; ``points`` and ``crosses``: markers. Without a ``colour``, each name gets
    one, the same in every column.
    """

    name: str
    t: Sequence[float]
    values: Sequence[float]
    style: Literal["stack", "step", "points", "crosses"] = "points"
    colour: str | None = None


@dataclass(frozen=True)
class Panel:
    """One panel of a timeline column: its series, vertical marks ``(t, label, colour)`` and y axis."""

    ylabel: str
    series: Sequence[Series] = ()
    marks: Sequence[tuple[float, str, str]] = ()
    log: bool = False
    ylim: tuple[float, float] | None = None
    integer: bool = False


def _draw_panel(ax: Any, panel: Panel, colours: Mapping[str, str]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    stacks = [s for s in panel.series if s.style == "stack" and len(s.t)]
    if stacks:
        ax.stackplot(stacks[0].t, [s.values for s in stacks], labels=[s.name for s in stacks],
                     colors=[s.colour or colours[s.name] for s in stacks], step="post")
    for s in panel.series:
        colour = s.colour or colours[s.name]
        if s.style == "step":
            ax.step(s.t, s.values, where="post", color=colour, linestyle="--", label=s.name)
        elif s.style == "points":
            ax.scatter(s.t, s.values, s=4, color=colour, label=s.name)
        elif s.style == "crosses":
            ax.scatter(s.t, s.values, s=14, marker="x", color=colour, label=s.name)
    for t, label, colour in panel.marks:
        ax.axvline(t, color=colour, linewidth=1)
        ax.annotate(label, (t, 0), xycoords=("data", "axes fraction"), fontsize=_FONT - 1, xytext=(2, 2),
                    textcoords="offset points")
    if panel.log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if panel.ylim:
        ax.set_ylim(*panel.ylim)
    if panel.integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel, fontsize=_FONT)
    ax.tick_params(labelsize=_FONT - 1)
    if len(panel.series) > 1:
        ax.legend(fontsize=_FONT - 1, loc="upper right")


def timeline(
    columns: Mapping[str, Sequence[Panel]],
    path: str | Path,
    *,
    xlabel: str = "seconds",
    span: tuple[float, float] | None = None,
    title: str = "",
    size_px: tuple[int, int] | None = None,
) -> Path:
    """Panels over time: one column per entry of ``columns`` (its title), the same number of panels in
    each, the panels of a column sharing its x axis; returns ``path``.

    ``span`` (start, end) is shaded in every panel (e.g. a burst). A panel with more than one series
    has a legend. The PNG is ``size_px`` (width, height) pixels, by default 520 per column by 720.
    """
    rows = {len(panels) for panels in columns.values()}
    if len(rows) != 1 or 0 in rows:
        raise ValueError(f"need at least one column, each with the same number of panels (at least one), "
                         f"got {[len(p) for p in columns.values()]}")
    for panels in columns.values():
        for panel in panels:
            for s in panel.series:
                if len(s.t) != len(s.values):
                    raise ValueError(f"series {s.name!r} of panel {panel.ylabel!r} has {len(s.values)} "
                                     f"values for {len(s.t)} times")
    named = [s.name for panels in columns.values() for p in panels for s in p.series if s.colour is None]
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(dict.fromkeys(named))}
    fig = _figure(*(size_px or (520 * len(columns), 720)), layout="constrained")
    axes = fig.subplots(rows.pop(), len(columns), squeeze=False, sharex="col")
    texts = [title, xlabel]
    for col, (heading, panels) in enumerate(columns.items()):
        for row, panel in enumerate(panels):
            ax = axes[row][col]
            _draw_panel(ax, panel, colours)
            if span is not None:
                ax.axvspan(*span, color="#f2c45a", alpha=0.25, linewidth=0, zorder=0)
            texts += [panel.ylabel, *(s.name for s in panel.series), *(label for _, label, _ in panel.marks)]
        axes[0][col].set_title(heading, fontsize=_FONT + 1)
        axes[-1][col].set_xlabel(xlabel, fontsize=_FONT)
        texts.append(heading)
    _suptitle(fig, title)
    return _save(fig, path, texts)
