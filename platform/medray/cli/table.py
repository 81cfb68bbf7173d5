"""The one text-table formatter: every table medray prints to a terminal (``medray status``, the
pipelines' and training runs' summaries, the benchmarks) goes through :func:`format_table`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["format_table"]


def format_table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[Any]],
    *,
    align: str | None = None,
    title: str | None = None,
    rule: bool = False,
    markdown: bool = False,
) -> str:
    """Fixed-width columns two spaces apart, trailing spaces stripped.

    ``headers``: the first line, or None for a table without one. ``rows``: cells, turned into text
    with ``str`` (format numbers before). ``align``: one ``<`` (left) or ``>`` (right) per column; all
    left by default. ``title``: a line above the table, underlined to its width. ``rule``: a line of
    dashes under the headers, as wide as each column. ``markdown``: a Markdown pipe table instead
    (headers required; cells unpadded, the alignment in its rule row).
    """
    table = ([list(map(str, headers))] if headers is not None else []) + [list(map(str, r)) for r in rows]
    if not table:
        return title or ""
    n = max(len(r) for r in table)
    if any(len(r) != n for r in table):
        raise ValueError("every row of a table needs the same number of cells")
    align = align or "<" * n
    if len(align) != n or set(align) - {"<", ">"}:
        raise ValueError(f"align needs one '<' or '>' per column ({n}), got {align!r}")
    if (rule or markdown) and headers is None:
        raise ValueError("a rule or a Markdown table needs headers")
    if markdown:
        lines = [f"| {' | '.join(r)} |" for r in table]
        lines.insert(1, "|" + "|".join("---:" if a == ">" else "---" for a in align) + "|")
    else:
        widths = [max(len(r[i]) for r in table) for i in range(n)]
        if rule:
            table.insert(1, ["-" * w for w in widths])
        lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip() for r in table]
    if title is not None:
        lines[:0] = [title, "-" * max(len(title), *(len(line) for line in lines))]
    return "\n".join(lines)
