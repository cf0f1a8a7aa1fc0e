"""The caption of each figure in report.html: what it shows, how to read it (axes, colours,
markers, dashed lines) and what to look for. Chosen by the figure's file name; HTML."""

from __future__ import annotations

import html
import re
from pathlib import Path

from memgen.metrics.protocols import (BREAKDOWN_BINS, DEFAULT_PROTOCOL, EQUIDISTANT_RATIO,
                                      NEAR_COPY_RATIO, get_protocol)
from memgen.metrics.rules import DEFAULT_RULE, RULES
from memgen.report.census_figure import census_caption

LABEL_KEY = "memorized (red), spurious (orange) and generalized (blue)"


def rule_conditions(rule: str, delta_m: float | None, delta_s: float | None) -> tuple[str, str]:
    """The memorized and spurious conditions of a rule (paper eqs. 4–6) with its thresholds,
    in words: d1 ≤ d2 the nearest training distances, s1 the nearest synthetic one (the
    rule's ``RuleKind.conditions``; an unknown rule: the default rule's, with no defaults)."""
    kind = RULES.get(rule)
    default_m, default_s = (None, None) if kind is None else kind.defaults
    dm = default_m if delta_m is None else delta_m
    ds = default_s if delta_s is None else delta_s
    mem, spur = (kind or RULES[DEFAULT_RULE]).conditions
    return mem.format(dm), spur.format(ds)


def figure_caption(path: Path, config: dict, summary: dict | None = None,
                   timescale: dict | None = None) -> str:
    """The caption of one figure of a sweep, as HTML. config: the sweep's config as a dict;
    summary: one classify summary.json (for the rule and its thresholds)."""
    summary = summary or {}
    measure = config.get("measure", {})
    mem, spur = rule_conditions(summary.get("rule", measure.get("rule", DEFAULT_RULE)),
                                summary.get("delta_m", measure.get("delta_m")),
                                summary.get("delta_s", measure.get("delta_s")))
    name = path.name
    K = re.fullmatch(r"(?:neighbours|samples)-K(\d+)\.png", name)
    if name == "fractions.png":
        return _fractions(mem, spur, config)
    if name == "phase_map.png":
        return _phase_map(timescale)
    if name == "samples.png":
        return _samples_2d()
    if K and name.startswith("neighbours"):
        return _neighbours(K.group(1), mem, spur, measure.get("metric", "l2"))
    if K:
        return (f"<b>Samples, K = {K.group(1)}.</b> The first evaluated samples (up to 64, in "
                "generation order), each framed in its label's colour: " + LABEL_KEY + ". "
                "Look for near copies of a few training images (red frames) at small K and "
                "varied new images (blue) at large K.")
    grid = re.fullmatch(r"protocols-spurious-K(\d+)\.png", name)
    if name == "protocols.png" or grid:
        return _protocols(config, summary, grid and grid.group(1))
    analysis = config.get("analysis", {})
    if name == "learned_landscape.png":
        return _learned_landscape(analysis)
    if name == "critical.png":
        return _critical(analysis)
    if name == "curvature.png":
        return _curvature(analysis)
    if name == "census.png":
        return census_caption(analysis)
    return f"<b>{html.escape(name)}</b>."


def _fractions(mem: str, spur: str, config: dict) -> str:
    eps = config.get("measure", {}).get("epsilon", 0.1)
    return ("<b>Fractions against K.</b> Each evaluated sample is labelled memorized when "
            f"{mem}, else spurious when {spur}, else generalized (d1 ≤ d2: its nearest "
            "training distances, s1: its nearest synthetic one). Solid lines: the share of "
            f"{LABEL_KEY} samples at each training-set size K (log axis); shaded bands: "
            "their exact 95% (Clopper–Pearson) intervals. Dashed lines of the same colour: "
            "the null rate, the share of held-out real data (never trained on) that the same "
            "rule puts under that label at the same set sizes. Dotted vertical lines: the "
            f"capacities reached (MC: last K with memorized ≥ {1 - eps:g}, SC: the spurious "
            f"peak above its null rate, GC: first K with generalized ≥ {1 - eps:g}). How to "
            "read it: a fraction is a finding only where its band lies above its dashed "
            "line; expect red near 1 at small K and blue near 1 at large K.")


def _phase_map(timescale: dict | None) -> str:
    threshold = (timescale or {}).get("threshold", 0.5)
    return ("<b>Training time × K.</b> One panel per label; each cell's colour is that "
            "label's fraction (colour bar: 0 dark blue to 1 yellow) at training-set size K "
            "(rows) after the training steps of its column, measured on each K's one training "
            "run; grey cells were not measured. White dots: τ_mem(K), the first of these step "
            f"counts with memorized ≥ {threshold:g}. Look for memorization (yellow, left panel) "
            "arriving later, further right, as K grows, and generalization (right panel) "
            "taking over at large K.")


def _samples_2d() -> str:
    return ("<b>Samples in the plane.</b> One panel per K: the evaluated samples as dots "
            f"coloured by label, {LABEL_KEY}; the K training points as red stars; the unit "
            "circle that the data lie on, dashed. Memorized samples sit on a training "
            "point; generalized ones lie along the circle away from the training points; "
            "spurious ones have a generated neighbour much closer than any training point "
            "(on a curve this happens to real data too: compare with the null rates).")


def _neighbours(K: str, mem: str, spur: str, metric: str) -> str:
    return (f"<b>Nearest neighbours, K = {K}.</b> Up to two evaluated samples per label "
            "(left column, framed and titled in the label's colour, with their index). "
            "Beside each, the upper row holds its nearest training images and the lower row "
            "its nearest synthetic samples (S′, a larger set from the same model), nearest "
            f"first, each titled with its {html.escape(metric)} distance. Memorized: the "
            f"first training image is a near copy, much closer than the second ({mem}); "
            f"spurious: a synthetic sample is much closer than any training image ({spur}); "
            "generalized: neither.")


def _learned_landscape(a: dict) -> str:
    sigma = a.get("landscape_sigma", 0.387)
    return ("<b>Exact and learned energy landscapes.</b> One row per K. Left: the exact "
            f"energy −log p_σ of the K training points at σ = {sigma:g} (the energy of the "
            "optimal denoiser, a Dense Associative Memory); right: the trained model's "
            "energy at the same σ from its probability-flow ODE likelihood. Both are shifted "
            "to minimum 0 and clipped at the exact panel's 90th percentile, one colour scale "
            "per row (colour bar at the right; dark = low energy; white contours). Red stars: "
            "training points; yellow crosses: minima of the exact energy, circled when "
            "spurious (not at a training point). Discs: the learned attractors (modes of the "
            "model's samples), sized by the samples that end there, yellow at a training point "
            "(memorized), cyan elsewhere (new); their numbers are under the panel. Look for "
            "minima at the training points at small K and a ring along the circle at large K.")


def _boxes() -> str:
    return ("One group per K, one box per label (median and quartiles, whiskers to 1.5× "
            "the interquartile range, dots the single samples, coloured by label); the "
            "number above a box counts the samples drawn")


def _critical(a: dict) -> str:
    return ("<b>Basin size per label.</b> For up to "
            f"{a.get('per_label', 20)} evaluated samples per label and K, the critical noise "
            "level σ*: the largest σ at which the sample, noised to σ and denoised back, is "
            f"recovered (within δ = {a.get('delta', 0.1):g}) with probability ≥ "
            f"{a.get('p', 0.9):g} ({a.get('n_trials', 10)} trials); log axis. {_boxes()} "
            "(n/m: m analysed, the others not recovered even at the bracket's lowest σ, "
            f"{a.get('sigma_lo', 0.2):g}: σ* = 0, off the log axis). Look for memorized "
            "samples in wider basins (larger σ*) than generalized ones.")


def _curvature(a: dict) -> str:
    return ("<b>Curvature per label.</b> The smallest eigenvalue of the Hessian of the "
            f"model's energy E_σ at each analysed sample (σ = {a.get('curvature_sigma', 0.1):g}"
            "), times σ²: 1 is the curvature of an isolated stored pattern (a sharp minimum), "
            "values near 0 a flat direction (a valley, as along a ring of new samples), "
            f"negative values a saddle. {_boxes()}. Look for memorized samples near 1 and "
            "generalized ones near 0.")


def protocol_rules(config: dict, summary: dict) -> list[tuple[str, str, str]]:
    """(protocol, memorized condition, spurious condition) of measure.protocol (as the
    summary.json applied it) and of measure.compare (its rule, else the protocol's)."""
    compare = config.get("measure", {}).get("compare") or {}
    main = summary.get("config", {}).get("protocol", DEFAULT_PROTOCOL)
    out = [(main, *rule_conditions(summary.get("rule", DEFAULT_RULE), summary.get("delta_m"),
                                   summary.get("delta_s")))]
    if compare:
        other = get_protocol(compare["protocol"])
        out.append((other.name, *rule_conditions(compare.get("rule") or other.rule
                                                 or DEFAULT_RULE, compare.get("delta_m"),
                                                 compare.get("delta_s"))))
    return out


def _protocol_words(rules: list[tuple[str, str, str]]) -> str:
    return "; ".join(f"<b>{html.escape(name)}</b> ({html.escape(get_protocol(name).help)}): "
                     f"memorized when {mem}, else spurious when {spur}"
                     for name, mem, spur in rules)


def _protocols(config: dict, summary: dict, K: str | None) -> str:
    rules = protocol_rules(config, summary)
    words = _protocol_words(rules)
    if K is None:
        return ("<b>Both protocols on the same samples.</b> One panel per protocol, left to "
                f"right: {words}; else generalized (d1 ≤ d2: the nearest training distances; "
                "s1: the nearest synthetic one, for a protocol whose S′ is the evaluated set "
                "its nearest other evaluated sample). Solid lines: the fractions of "
                f"{LABEL_KEY} samples at each K (log axis), shaded: exact 95% intervals; "
                "dashed: the null rate, held-out real data labelled by the same protocol at "
                "the same set sizes. Both panels label the same S_eval (nothing regenerated), "
                "so a difference between them is the protocols'. A spurious fraction is a "
                "finding only where its band lies above its dashed line. protocols.csv holds "
                "the numbers and the d1/d2 breakdown of each protocol's spurious samples.")
    own = [rule for rule in rules if get_protocol(rule[0]).own_synthetic][:1]
    near, between, far = BREAKDOWN_BINS
    return (f"<b>The {html.escape(own[0][0])} protocol's spurious samples, K = {K}.</b> "
            f"{_protocol_words(own)}. "
            "Its spurious samples split by d1/d2 (d1, d2: distances to the nearest and "
            "second-nearest training image), up to 12 per bin, each (orange frame) above its "
            f"nearest training image: {near}, d1/d2 ≤ {NEAR_COPY_RATIO:.3g} — a near-copy of "
            "one training image that recurs within the set (eqs. 4–6 at δ_m = 1/3 call it "
            "memorized); "
            f"{between}, ≤ {EQUIDISTANT_RATIO:.3g}; {far}, above — about as near a second "
            "training image as the first (a mixture candidate) or far from both. The counts "
            "of each bin are in protocols.csv.")
