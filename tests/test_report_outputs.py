"""Outputs that explain themselves: a caption for every figure of report.html, the config
collapsed, the timings without stages that never ran, and CSV numbers rounded to six
significant digits without changing what is read back (counts, intervals, capacities)."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import Result, summary, write_every_figure_report

from memgen.experiments.sweep import csv_number, write_fractions
from memgen.metrics.capacity import capacities, read_fraction_table
from memgen.metrics.stats import clopper_pearson_bounds
from memgen.report.captions import figure_caption
from memgen.report.html import _null_paragraph, _timings_table


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_every_figure_report(tmp_path_factory.mktemp("every")).read_text()


def test_every_figure_has_a_caption_that_says_how_to_read_it(report):
    figures = re.findall(r"<figure>(.*?)</figure>", report, re.S)
    assert len(figures) == 8
    for figure in figures:
        caption = re.search(r"<figcaption>(.+)</figcaption>", figure, re.S)
        assert caption and len(caption.group(1)) > 150, figure[-300:]
    fractions = figures[0]
    for phrase in ("d1/d2 ≤ 0.333", "s1/(d1 + s1) ≤ 0.3", "shaded", "Dashed lines",
                   "null rate", "Dotted vertical lines", "memorized ≥ 0.9"):
        assert phrase in fractions, phrase
    assert "colour bar" in figures[4] and "White dots" in figures[4]  # the phase map
    assert "colour bar" in figures[5] and "circled" in figures[5]  # the learned landscape


def test_captions_follow_the_rule_and_name_each_figure():
    config = {"measure": {"rule": "absolute", "metric": "lpips-alex-ref"}}
    text = figure_caption(Path("neighbours-K16.png"), config,
                          {"rule": "absolute", "delta_m": 0.03, "delta_s": 0.02})
    assert "K = 16" in text and "d1 ≤ 0.03" in text and "s1 ≤ 0.02" in text
    assert "lpips-alex-ref distance" in text
    assert "K = 256" in figure_caption(Path("samples-K256.png"), {})
    assert figure_caption(Path("other.png"), {}) == "<b>other.png</b>."


def test_config_is_collapsed_and_the_null_paragraph_reads(report):
    assert re.search(r"<h2>Config</h2><details><summary>.+</summary>\s*<pre>", report)
    text = _null_paragraph([Result(2, summary([0.9, 0.05, 0.05])),
                            Result(8, summary([0.5, 0.2, 0.3]))])
    # memorized is above its null rate everywhere; spurious within it at K = 2 only
    assert "the spurious fraction at K = 2 does not exceed the rate" in text
    text = _null_paragraph([Result(K, summary([0.0, 0.1, 0.9])) for K in (2, 9, 64)])
    assert ("the memorized fraction at K = 2, 9 and 64 and the spurious fraction at K = 2, "
            "9 and 64 do not exceed") in text


def test_timings_drop_the_stages_that_never_ran():
    exact = [Result(K, {}, {"eval": 1.0, "synth": 2.0, "classify": 0.5}) for K in (2, 9)]
    table = _timings_table(exact)
    assert "train s" not in table and "analysis s" not in table and "landscape s" not in table
    assert table.count("<th>") == 4  # K, S_eval, S′, classify
    some = exact + [Result(64, {}, {"eval": 1.0, "analysis": 3.0})]
    table = _timings_table(some)
    # analysis at K = 2 and 9, S′ and classify at K = 64: never run there
    assert "analysis s" in table and table.count("<td>–</td>") == 4
    assert "landscape s" not in table


def test_six_significant_digits_keep_every_count_exact():
    rng = np.random.default_rng(0)
    for n in [*range(1, 400), *rng.integers(400, 10**6, 2000), 10**6]:
        c = rng.integers(0, n + 1, 50)
        back = np.array([float(csv_number(float(x))) for x in c / n])
        np.testing.assert_array_equal(np.rint(back * n), c)
    assert csv_number(0.41500000000000004) == "0.415" and csv_number(None) == ""
    assert csv_number(200) == 200 and csv_number(np.float32(0.1)) == "0.1"


def test_rounded_table_reads_back_with_the_same_capacities(tmp_path):
    rng = np.random.default_rng(1)
    n, rows = 997, []
    for K, p in zip((2, 4, 9, 16, 32, 64), ((1, 0, 0), (0.95, 0.03, 0.02), (0.6, 0.3, 0.1),
                                           (0.2, 0.5, 0.3), (0.05, 0.2, 0.75), (0, 0.05, 0.95))):
        counts = rng.multinomial(n, p)
        lo, hi = clopper_pearson_bounds(counts, n)
        s = summary(counts / n)
        s["n_eval"] = n
        s["ci95"] = {name: [float(a), float(b)] for name, a, b in zip(s["fractions"], lo, hi)}
        rows.append(Result(K, s))
    path = tmp_path / "fractions.csv"
    write_fractions(path, rows)
    lines = list(csv.DictReader(path.open()))
    reals = [v for r in lines for k, v in r.items() if k not in ("K", "n_eval", "n_synth",
                                                                   "null_n_eval", "null_n_synth")]
    assert reals and all(v == "" or v == f"{float(v):.6g}" for v in reals)
    table = read_fraction_table(path)  # the checks: sums within 1e-3, lo ≤ p ≤ hi
    exact = read_fraction_table(_unrounded(tmp_path, rows))
    np.testing.assert_array_equal(np.rint(table.fractions * n), np.rint(exact.fractions * n))
    assert np.abs(table.lo - exact.lo).max() <= 5e-7
    assert capacities(table, 0.1, 300, 0) == capacities(exact, 0.1, 300, 0)


def _unrounded(tmp_path, rows):
    """The same table with every float written by repr (the old fractions.csv)."""
    path = tmp_path / "unrounded.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["K", "n_eval", *(f"{n}{s}" for n in ("memorized", "spurious",
                                                                 "generalized")
                                          for s in ("", "_lo", "_hi")),
                         "null_memorized", "null_spurious", "null_generalized"])
        for r in rows:
            s = r.summary
            writer.writerow([r.K, s["n_eval"], *(repr(v) for n in s["fractions"]
                                                 for v in (s["fractions"][n], *s["ci95"][n])),
                             *(repr(s["null"]["fractions"][n]) for n in s["fractions"])])
    return path
