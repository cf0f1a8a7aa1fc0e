"""A self-contained HTML report of a sweep: figures embedded, tables, config, timings."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from memgen import __version__
from memgen.metrics.classify import LABEL_NAMES


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _fractions_table(results) -> str:
    head = "".join(f"<th>{n}</th><th>null</th>" for n in LABEL_NAMES)
    rows = []
    for r in sorted(results, key=lambda r: r.K):
        s, null = r.summary, r.summary.get("null", {}).get("fractions", {})
        cells = "".join(
            f"<td>{s['fractions'][n]:.3f} [{s['ci95'][n][0]:.3f}, {s['ci95'][n][1]:.3f}]</td>"
            f"<td>{null.get(n, float('nan')):.3f}</td>" for n in LABEL_NAMES)
        rows.append(f"<tr><td>{r.K}</td>{cells}<td>{s['n_eval']}</td></tr>")
    return (f"<table><tr><th>K</th>{head}<th>n</th></tr>{''.join(rows)}</table>")


def _timings_table(results) -> str:
    rows = []
    for r in sorted(results, key=lambda r: r.K):
        sec = r.seconds()
        cells = "".join(f"<td>{sec.get(k, 0.0):.1f}</td>"
                        for k in ("train", "eval", "synth", "classify", "analysis",
                                  "landscape"))
        rows.append(f"<tr><td>{r.K}</td>{cells}</tr>")
    return ("<table><tr><th>K</th><th>train s</th><th>S_eval s</th><th>S′ s</th>"
            f"<th>classify s</th><th>analysis s</th><th>landscape s</th></tr>"
            f"{''.join(rows)}</table>")


def write_report(path: Path, title: str, config: dict, capacities: dict, results,
                 figures: list[Path]) -> None:
    """report.html with everything inline (no external files)."""
    caps = "".join(
        f"<li><b>{name}</b>: {'not reached' if c['value'] is None else 'K = ' + str(c['value'])}"
        + ("" if c["ci95"][0] is None else f" (95% CI {c['ci95'][0]}–{c['ci95'][1]})")
        + "</li>" for name, c in capacities.items() if name in ("MC", "SC", "GC"))
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em;font-size:12px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>memgen {__version__}. Fractions of memorized, spurious and generalized evaluated samples
against the training-set size K (paper eqs. 4–6), with 95% bootstrap intervals and the
null rate of each label (the same rule applied to held-out real data at the same set
sizes). Capacities (eqs. 1–3, ε = {capacities.get('epsilon')}):</p><ul>{caps}</ul>
{''.join(_img(f) for f in figures)}
<h2>Fractions</h2>{_fractions_table(results)}
<h2>Timings</h2>{_timings_table(results)}
<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre>
</body></html>"""
    path.write_text(body)
