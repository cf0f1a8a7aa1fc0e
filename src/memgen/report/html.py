"""A self-contained HTML report of a sweep: figures embedded, tables, config, timings."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from memgen._version import __version__
from memgen.metrics.capacity import QUALITY_SHARE, Capacity, describe
from memgen.metrics.rules import LABEL_NAMES
from memgen.report.captions import figure_caption


def _figure(path: Path, caption: str) -> str:
    """One embedded PNG with its caption (HTML)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


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


QUALITY_GAP = 0.1  # generalized precision this far below the held-out baseline is flagged


def _quality_section(results) -> str:
    """Precision/recall/density/coverage per K vs held-out data (baseline in parentheses),
    precision per label, and one sentence per K whose generalized samples' precision
    falls more than QUALITY_GAP below the held-out baseline's. "" without quality."""
    rows, notes = [], []
    for r in sorted(results, key=lambda r: r.K):
        q = r.summary.get("quality")
        if not q:
            continue
        base = q.get("baseline") or {}
        cells = "".join(f"<td>{q[n]:.3f}" + (f" ({base[n]:.3f})" if n in base else "") + "</td>"
                        for n in ("precision", "recall", "density", "coverage"))
        by_label = q["precision_by_label"]
        cells += "".join("<td>–</td>" if by_label[n] is None else f"<td>{by_label[n]:.3f}</td>"
                         for n in LABEL_NAMES)
        rows.append(f"<tr><td>{r.K}</td>{cells}<td>{q['k']}</td><td>{q['n_real']}</td></tr>")
        gen = by_label.get("generalized")
        if gen is not None and "precision" in base and gen < base["precision"] - QUALITY_GAP:
            notes.append(f"<p>Generalized samples at K={r.K} are of lower quality than held-out "
                         f"data: precision {gen:.3f} vs {base['precision']:.3f}.</p>")
    if not rows:
        return ""
    head = "".join(f"<th>{n}</th>" for n in ("precision", "recall", "density", "coverage"))
    head += "".join(f"<th>precision {n}</th>" for n in LABEL_NAMES)
    return ("<h2>Sample quality</h2><p>Precision, recall, density and coverage (Kynkäänniemi "
            "et al. 2019; Naeem et al. 2020) of the evaluated samples against held-out real "
            "data, in the metric's feature space; in parentheses the same for held-out real "
            f"samples (the baseline). MC and GC count only the K whose memorized (MC) or "
            f"generalized (GC) samples have at least {QUALITY_SHARE:g} × the held-out "
            "precision: samples off the data do not make a capacity.</p>"
            f"<table><tr><th>K</th>{head}<th>k</th><th>n real</th>"
            f"</tr>{''.join(rows)}</table>{''.join(notes)}")


STAGE_HEADS = {"train": "train s", "eval": "S_eval s", "synth": "S′ s",
               "classify": "classify s", "analysis": "analysis s", "landscape": "landscape s",
               "compare": "compare s", "endpoints": "endpoints s", "census": "census s"}


def _timings_table(results) -> str:
    """Wall seconds per K and stage; a stage that ran at no K (no training for the exact
    denoiser, no analysis or landscape unless asked for) has no column, one that ran at
    some K only is "–" at the others."""
    results = sorted(results, key=lambda r: r.K)
    seconds = [r.seconds() for r in results]
    stages = [k for k in STAGE_HEADS if any(k in sec for sec in seconds)]
    rows = "".join(f"<tr><td>{r.K}</td>" + "".join(
        f"<td>{sec[k]:.1f}</td>" if k in sec else "<td>–</td>" for k in stages) + "</tr>"
        for r, sec in zip(results, seconds))
    head = "".join(f"<th>{STAGE_HEADS[k]}</th>" for k in stages)
    return (f"<p>Wall time of each stage, first run (a cached stage keeps its first timing)."
            f"</p><table><tr><th>K</th>{head}</tr>{rows}</table>")


def _headline(name: str, payload: dict) -> str:
    """The capacity's line from describe(), without its leading "MC: "."""
    return describe(Capacity.from_dict(name, payload)).split(": ", 1)[1]


def _null_paragraph(results) -> str:
    """Which fractions do not exceed their null rate (95% lower bound ≤ null), and why it
    matters: there, the rule flags held-out real data as often as the samples."""
    within = {n: [r.K for r in sorted(results, key=lambda r: r.K)
                  if n in r.summary.get("null", {}).get("fractions", {})
                  and r.summary["ci95"][n][0] <= r.summary["null"]["fractions"][n]]
              for n in ("memorized", "spurious")}
    if not any(within.values()):
        return ""
    parts = [f"the {n} fraction at K = {_and(list(map(str, Ks)))}"
             for n, Ks in within.items() if Ks]
    verb = "does" if len(parts) == 1 else "do"
    return (f"<p><b>Within the null rate:</b> {' and '.join(parts)} {verb} not exceed the "
            "rate at which the same rule flags held-out real data at the same set sizes "
            "(the 95% lower bound is at or below the null rate: the dashed lines of the first "
            "figure). There the label says nothing about the model, since real data that the "
            "model never saw is flagged as often; only a fraction whose interval lies above "
            "its null rate is a finding.</p>")


def _and(items: list[str]) -> str:
    """"2", "2 and 9", "2, 9 and 64"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _null_size_paragraph(results) -> str:
    """Where held-out data ran short, the null run used smaller sets than the measured ones."""
    short = []
    for r in sorted(results, key=lambda r: r.K):
        null = r.summary.get("null") or {}
        if null and (null["n_eval"] < r.summary["n_eval"]
                     or null["n_synth"] < r.summary.get("n_synth", 0)):
            short.append(f"K = {r.K}: {null['n_eval']} / {null['n_synth']} held-out samples "
                         f"for {r.summary['n_eval']} / {r.summary['n_synth']}")
    if not short:
        return ""
    return ("<p><b>Null run smaller than the measured sets</b> (evaluated / synthetic; "
            f"too little held-out data): {'; '.join(short)}. A smaller S′ gives a lower "
            "spurious null rate, so there the null rate understates the rule's false "
            "detections.</p>")


def _time_axis_section(timescale: dict | None) -> str:
    """τ_mem per K and the power-law fit (the phase map is among the figures)."""
    if not timescale:
        return ""
    censored = set(timescale["tau_mem_censored"])
    cells = "".join(f"<tr><td>{K}</td><td>{'not reached' if t is None else t}"
                    f"{' (at the first snapshot: ≤)' if int(K) in censored else ''}"
                    f"</td></tr>" for K, t in timescale["tau_mem"].items())
    fit = timescale.get("fit")
    line = (f"log τ_mem = log A + b log K: b = {fit['exponent']:.2f} (95% CI "
            f"{fit['ci95'][0]:.2f}–{fit['ci95'][1]:.2f}, R² = {fit['r2']:.2f}, "
            f"{fit['n_points']} K; Bonnaire et al. 2025 report b = 1)" if fit else
            f"no fit: {timescale.get('fit_note', '')}")
    return (f"<h2>Training time</h2><p>Fractions were measured after {timescale['steps']} "
            f"steps of each K's one training run (phase map above). τ_mem = the first of "
            f"these step counts with memorized ≥ {timescale['threshold']}. "
            f"{html.escape(line)}.</p><table><tr><th>K</th><th>τ_mem</th></tr>{cells}</table>")


def _provenance_section(provenance: dict | None) -> str:
    """The command line, versions, git commit and every input's content hash and shape
    (``memgen.provenance.gather``'s record, as in provenance.json). "" without one."""
    if not provenance:
        return ""
    rows = [("command", provenance.get("command")), ("memgen", provenance.get("memgen")),
            ("git commit", (provenance.get("git_commit") or "not a git checkout")
             + (" (with local changes)" if provenance.get("git_dirty") else "")),
            *((name, provenance.get(name)) for name in ("python", "torch", "numpy"))]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(str(v))}</code></td>"
                    "</tr>" for k, v in rows)
    inputs = "".join(_input_row(name, r) for name, r in provenance.get("inputs", {}).items())
    return (f"<h2>Provenance</h2><table>{cells}</table><p>Inputs (sha256 of a file's bytes; "
            "for the data pool, the content fingerprint of the cache keys):</p><table><tr>"
            f"<th>input</th><th>path</th><th>hash</th><th>shape</th></tr>{inputs}</table>")


def _input_row(name: str, record: dict) -> str:
    where = record.get("path") or record.get("name")
    digest = record.get("sha256") or record.get("fingerprint")
    if record.get("files"):
        digest = f"{len(record['files'])} files, each hashed in the provenance record"
    shape = " × ".join(map(str, record.get("shape") or [])) or "–"
    return "<tr>" + "".join(f"<td><code>{html.escape(str(v))}</code></td>"
                            for v in (name, where, digest, shape)) + "</tr>"


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 6px}td code{overflow-wrap:anywhere}
figure{margin:1.5em 0}img{max-width:100%;height:auto;display:block}
figcaption{font-size:14px;color:#333;max-width:52em;margin-top:0.4em}
pre{background:#f6f6f6;padding:1em;font-size:12px;white-space:pre-wrap;
overflow-wrap:anywhere}summary{cursor:pointer;font-weight:bold}"""


def write_report(path: Path, title: str, config: dict, capacities: dict, results,
                 figures: list[Path], timescale: dict | None = None,
                 provenance: dict | None = None) -> None:
    """report.html with everything inline (no external files): each figure with its
    caption (``memgen.report.captions``), the tables, the config (collapsed) and the
    provenance. capacities: the capacities.json payload; each headline is
    :func:`memgen.metrics.capacity.describe`; timescale: the timescale.json payload of a
    sweep with snapshots; provenance: the provenance.json payload."""
    caps = "".join(f"<li><b>{name}</b>: {html.escape(_headline(name, c))}</li>"
                   for name, c in capacities.items() if name in ("MC", "SC", "GC"))
    summary = min(results, key=lambda r: r.K).summary if results else None
    shown = "".join(_figure(f, figure_caption(f, config, summary, timescale))
                    for f in figures)
    body = f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
{f"<p><i>{html.escape(config['notes'])}</i></p>" if config.get("notes") else ""}
<p>memgen {__version__}. Fractions of memorized, spurious and generalized evaluated samples
against the training-set size K (paper eqs. 4–6), with exact 95% (Clopper–Pearson) intervals and the
null rate of each label (the same rule applied to held-out real data at the same set
sizes). Capacities (eqs. 1–3, ε = {capacities.get('epsilon')}):</p><ul>{caps}</ul>
{shown}
<h2>Fractions</h2>{_fractions_table(results)}
{_null_paragraph(results)}
{_null_size_paragraph(results)}
{_quality_section(results)}
{_time_axis_section(timescale)}
<h2>Timings</h2>{_timings_table(results)}
<h2>Config</h2><details><summary>The sweep's settings, as run (config.json)</summary>
<pre>{html.escape(json.dumps(config, indent=2))}</pre></details>
{_provenance_section(provenance)}
</body></html>"""
    path.write_text(body)
