"""The demo report: one self-contained HTML page (``medray-demo/report.html``) next to its PNGs.

It shows the node table by role, where each stage ran, every stage's summary (a list of dicts, e.g.
the diagnosis stage's ``findings``, as a table) and every figure the stages produced. A stage adds
figures by returning ``"figures": [{"path": …, "caption": …}]`` with paths relative to the demo's
output folder (:func:`figure_entry` builds one for a PNG that :mod:`medray.demo.figures` wrote under
``FIGURES_DIR``). Nothing in it may carry PHI: stages only hand over pseudonymous, de-identified
material.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["FIGURES_DIR", "figure_entry", "write_report"]

FIGURES_DIR = "figures"  # under the demo output folder

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1b1f24; }
h1 { margin-bottom: 0; } .sub { color: #57606a; margin-top: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; vertical-align: top; margin: .5rem 1rem 1rem 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: .85rem; color: #57606a; max-width: 40rem; }
code { background: #f6f8fa; padding: 0 .2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{_e(c)}</td>' if isinstance(c, (int, float)) else f"<td>{_e(c)}</td>"
            for c in row
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _node_section(out: Path) -> str:
    nodes_file = out / "nodes.json"
    if not nodes_file.is_file():
        return "<p>No node table was recorded.</p>"
    nodes = json.loads(nodes_file.read_text())
    rows = [
        [n["role"], n["node_type"], n["site"], n["storage"], n["accelerator"] or "-",
         n["resources"].get("CPU", 0), n["resources"].get("GPU", 0), n["gpu_health"]]
        for n in nodes
    ]
    return _table(["role", "node type", "site", "storage", "accelerator", "CPU", "GPU", "GPU health"], rows)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _stage_section(name: str, result: dict[str, Any]) -> str:
    facts = [[k, v] for k, v in result.items() if k not in ("figures", "where") and _scalar(v)]
    nested = {k: v for k, v in result.items() if k not in ("figures", "where") and not _scalar(v)}
    parts = [f"<h3>{_e(name)}</h3>", _table(["", "value"], facts) if facts else ""]
    if result.get("where"):
        parts.append("<p>Ran on: " + ", ".join(
            f"<code>{_e(work)}</code> → <b>{_e(node_type)}</b>"
            for work, node_type in result["where"].items()) + "</p>")
    for key, value in nested.items():
        if _records(value):
            headers = list(dict.fromkeys(k for record in value for k in record))
            parts.append(f"<h4>{_e(key)}</h4>" + _table(headers, [[r.get(h, "") for h in headers] for r in value]))
            continue
        parts.append(f"<details><summary>{_e(key)}</summary><pre>{_e(json.dumps(value, indent=2, default=str))}</pre></details>")
    for fig in result.get("figures", []):
        parts.append(f'<figure><img src="{_e(fig["path"])}" alt="{_e(fig.get("caption", ""))}">'
                     f"<figcaption>{_e(fig.get('caption', ''))}</figcaption></figure>")
    return "\n".join(parts)


def figure_entry(out: str | Path, path: str | Path, caption: str) -> dict[str, str]:
    """The ``"figures"`` item of a stage result for the image ``path`` under the demo folder ``out``."""
    return {"path": Path(path).resolve().relative_to(Path(out).resolve()).as_posix(), "caption": caption}


def write_report(out: str | Path, results: dict[str, dict[str, Any]]) -> Path:
    """Write ``out/report.html`` for the stage results of a demo run; returns its path."""
    out = Path(out)
    missing = [f["path"] for r in results.values() for f in r.get("figures", [])
               if not (out / f["path"]).is_file() or (out / f["path"]).stat().st_size == 0]
    if missing:
        raise FileNotFoundError(f"report figures missing or empty under {out}: {missing}")
    total = sum(float(r.get("seconds", 0)) for r in results.values())
    summary = _table(["stage", "seconds"], [[n, r.get("seconds", "")] for n, r in results.items()])
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medray demo report</title><style>{_CSS}</style></head>
<body>
<h1>medray demo report</h1>
<p class="sub">Generated {_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} · {len(results)} stages · {total:.0f} s of stage time ·
synthetic, de-identified data only</p>
<h2>Cluster: nodes by role</h2>
{_node_section(out)}
<h2>Stages</h2>
{summary}
{''.join(_stage_section(n, r) for n, r in results.items())}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
