"""Capacities said plainly: SC only above the null rate, reached shares, grid-edge and
monotonicity flags, and one describe() line for the CLI and the report."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from memgen.cli import cli
from memgen.metrics.capacity import (AT_EDGE, NO_NULL, NOT_ABOVE_NULL, NOT_MONOTONE, NOT_REACHED,
                                     Capacity, FractionTable, above_null, capacities, describe,
                                     memorized_not_monotone, read_fraction_table)

K = np.array([10, 100, 1000, 10000])


def _table(fractions, spread=0.02, null_spurious=None, n_eval=None):
    """Fractions (M, 3) with symmetric intervals ± spread and a null spurious rate per K."""
    f = np.array(fractions, dtype=float)
    spread = np.broadcast_to(np.asarray(spread, dtype=float), f.shape)
    null = None
    if null_spurious is not None:
        null = np.zeros_like(f)
        null[:, 1] = null_spurious
    return FractionTable(K, f, None if n_eval is None else np.full(len(K), n_eval),
                         np.clip(f - spread, 0, 1), np.clip(f + spread, 0, 1), null)


# Memorized falls, generalized rises; spurious is 0.05 ± 0.02 everywhere except where noted.
BASE = [[0.95, 0.05, 0.00], [0.60, 0.05, 0.35], [0.20, 0.05, 0.75], [0.00, 0.05, 0.95]]


def test_spurious_within_null_everywhere_gives_no_sc():
    # spurious peaks at 0.08 at K = 10000 (the grid's edge), but its lower bound 0.06
    # does not exceed the null rate 0.07 there; elsewhere 0.03 < 0.07.
    f = [row[:] for row in BASE]
    f[3] = [0.00, 0.08, 0.92]
    table = _table(f, null_spurious=0.07, n_eval=2000)
    np.testing.assert_array_equal(above_null(table), [False] * 4)
    sc = capacities(table, n_resamples=200)["SC"]
    assert sc.value is None and sc.reason == NOT_ABOVE_NULL and sc.reason != NOT_REACHED
    assert not sc.at_edge and NO_NULL not in sc.notes
    assert describe(sc).startswith("SC: not above null (reached in ")
    assert "K = " not in describe(sc)


def test_sc_is_the_peak_above_null_strictly_inside_the_grid():
    # The raw argmax (0.40 at K = 10000) is within its null rate (lower bound 0.10 < 0.30):
    # SC must be K = 1000, where 0.30 − 0.02 = 0.28 > 0.05.
    f = [[0.95, 0.05, 0.00], [0.60, 0.10, 0.30], [0.20, 0.30, 0.50], [0.00, 0.40, 0.60]]
    spread = np.full((4, 3), 0.02)
    spread[3, 1] = 0.30
    table = _table(f, spread, null_spurious=[0.05, 0.05, 0.05, 0.30], n_eval=10_000)
    np.testing.assert_array_equal(above_null(table), [False, True, True, False])
    sc = capacities(table, n_resamples=300)["SC"]
    assert sc.value == 1000 and sc.reason is None and not sc.at_edge
    # In each resample the same rule holds: 0.30 ± 0.005 beats 0.10 ± 0.003 at K = 100,
    # and K = 10000 stays within its null rate (its margin 0.30 keeps it below 0.30).
    assert sc.reached_share == 1.0 and (sc.lo, sc.hi) == (1000, 1000)
    assert describe(sc) == "SC: K = 1000 (reached in 100% of resamples; 95% CI 1000–1000)"


def test_without_null_rates_sc_is_the_plain_argmax_and_says_so():
    f = [row[:] for row in BASE]
    f[2] = [0.20, 0.25, 0.55]
    sc = capacities(_table(f))["SC"]
    assert sc.value == 1000 and sc.notes == (NO_NULL,)
    assert sc.reached_share is None  # no n_eval: no bootstrap
    assert describe(sc) == "SC: K = 1000 (no bootstrap: n_eval unknown); no null rate given"


def test_edge_of_grid_flag():
    caps = capacities(_table(BASE, null_spurious=0.0, n_eval=5000), n_resamples=100)
    # MC = 10 (only 0.95 ≥ 0.9) is the first K; GC = 10000 the last; SC = 10 (ties: first).
    assert caps["MC"].value == 10 and caps["MC"].at_edge
    assert caps["GC"].value == 10000 and caps["GC"].at_edge
    assert describe(caps["GC"]).endswith("; " + AT_EDGE)
    mc = describe(caps["MC"])
    assert mc.startswith("MC: K = 10 (reached in ") and mc.endswith("; " + AT_EDGE)
    inner = capacities(_table([[1, 0, 0], [0.95, 0.05, 0], [0.5, 0.05, 0.45], [0, 0.05, 0.95]]))
    assert inner["MC"].value == 100 and not inner["MC"].at_edge
    assert AT_EDGE not in describe(inner["MC"])


def test_not_reached_is_none_with_its_reason():
    table = _table([[0.8, 0.1, 0.1], [0.6, 0.1, 0.3], [0.4, 0.1, 0.5], [0.2, 0.1, 0.7]],
                   n_eval=50)
    caps = capacities(table, n_resamples=200)
    for name in ("MC", "GC"):
        assert caps[name].value is None and caps[name].reason == NOT_REACHED
        assert not caps[name].at_edge
    assert caps["GC"].reached_share == 0 and caps["GC"].lo is None  # 0.7 on 50 never ≥ 0.9
    # MC: 0.8 on 50 samples exceeds 0.9 in a few resamples; the share is printed, no CI.
    assert 0 < caps["MC"].reached_share < 0.2
    share = caps["MC"].reached_share
    assert describe(caps["MC"]) == f"MC: not reached (reached in {share:.0%} of resamples)"
    assert "CI" not in describe(caps["MC"])


def test_memorized_not_monotone_beyond_intervals():
    bumpy = _table([[0.95, 0.05, 0], [0.50, 0.05, 0.45], [0.92, 0.05, 0.03], [0, 0.05, 0.95]])
    assert memorized_not_monotone(bumpy)
    mc = capacities(bumpy)["MC"]
    assert mc.value == 1000 and mc.notes == (NOT_MONOTONE,)
    assert describe(mc).endswith("; " + NOT_MONOTONE)
    # A rise smaller than the intervals (0.50 → 0.52, ± 0.02 each) is no evidence.
    wobbly = _table([[0.95, 0.05, 0], [0.50, 0.05, 0.45], [0.52, 0.05, 0.43], [0, 0.05, 0.95]])
    assert not memorized_not_monotone(wobbly)
    assert capacities(wobbly)["MC"].notes == ()


def test_not_monotone_uses_clopper_pearson_without_intervals():
    f = np.array([[0.9, 0.05, 0.05], [0.3, 0.05, 0.65], [0.6, 0.05, 0.35]])
    grid = np.array([10, 100, 1000])
    assert memorized_not_monotone(FractionTable(grid, f, np.full(3, 1000)))  # 0.6 ≫ 0.3
    assert not memorized_not_monotone(FractionTable(grid, f, np.full(3, 5)))  # 2/5 vs 3/5


def test_describe_formats():
    assert (describe(Capacity("MC", 32, 8, 32, 0.97))
            == "MC: K = 32 (reached in 97% of resamples; 95% CI 8–32)")
    assert (describe(Capacity("MC", None, reached_share=0.42, reason=NOT_REACHED))
            == "MC: not reached (reached in 42% of resamples)")
    assert "reached in >99%" in describe(Capacity("GC", 5, 5, 5, 0.998))
    assert "reached in <1%" in describe(Capacity("GC", None, reached_share=0.001))


def test_as_dict_round_trip():
    c = Capacity("SC", None, None, None, 0.03, False, NOT_ABOVE_NULL, (NO_NULL,))
    d = c.as_dict()
    assert {"value", "ci95", "reached_share", "at_edge", "reason", "notes"} <= set(d)
    assert Capacity.from_dict("SC", json.loads(json.dumps(d))) == c
    old = Capacity.from_dict("MC", {"value": 5, "ci95": [2, 5], "reached_share": 0.9})
    assert old == Capacity("MC", 5, 2, 5, 0.9)


def test_epsilon_out_of_range():
    with pytest.raises(ValueError, match="epsilon"):
        capacities(_table(BASE), eps=1.0)


# ----------------------------------------------------------------- reading, CLI, report

CSV = """K,memorized,memorized_lo,memorized_hi,spurious,spurious_lo,spurious_hi,\
generalized,generalized_lo,generalized_hi,n_eval,null_memorized,null_spurious,null_generalized
10,1.0,0.99,1.0,0.0,0.0,0.01,0.0,0.0,0.01,1000,0.0,0.01,0.99
100,0.95,0.93,0.97,0.03,0.02,0.04,0.02,0.01,0.03,1000,0.0,0.01,0.99
1000,0.5,0.47,0.53,0.3,0.27,0.33,0.2,0.18,0.22,1000,0.0,0.01,0.99
10000,0.02,0.01,0.03,0.05,0.04,0.06,0.93,0.91,0.95,1000,0.0,0.06,0.94
100000,0.0,0.0,0.01,0.02,0.01,0.03,0.98,0.97,0.99,1000,0.0,0.03,0.97
"""


def test_read_fraction_table_null_columns(tmp_path):
    path = tmp_path / "fractions.csv"
    path.write_text(CSV)
    table = read_fraction_table(path)
    np.testing.assert_allclose(table.null[:, 1], [0.01, 0.01, 0.01, 0.06, 0.03])
    empty = CSV.splitlines()
    empty = [empty[0]] + [",".join(line.split(",")[:11] + ["", "", ""]) for line in empty[1:]]
    path.write_text("\n".join(empty) + "\n")
    assert read_fraction_table(path).null is None  # sweep without held-out data
    path.write_text(CSV.replace("0.0,0.06,0.94", "0.0,1.6,0.94"))
    with pytest.raises(ValueError, match="null rates"):
        read_fraction_table(path)


def test_cli_prints_reached_share_and_reasons(tmp_path):
    csv = tmp_path / "fractions.csv"
    # A null spurious rate of 0.45 at every K: spurious (at most 0.30) is never above it.
    rows = CSV.splitlines()
    csv.write_text("\n".join(rows[:1] + [",".join(r.split(",")[:11] + ["0.0", "0.45", "0.55"])
                                        for r in rows[1:]]) + "\n")
    out = tmp_path / "caps.json"
    result = CliRunner().invoke(cli, ["capacities", str(csv), "--bootstrap", "200",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("MC: K = 100 (reached in ") and "95% CI" in lines[0]
    assert lines[1].startswith("SC: not above null (reached in ")
    assert lines[2].startswith("GC: K = 10000 (reached in ")
    payload = json.loads(out.read_text())
    assert payload["SC"]["value"] is None and payload["SC"]["reason"] == NOT_ABOVE_NULL
    assert 0 <= payload["SC"]["reached_share"] < 0.05
    assert payload["MC"]["at_edge"] is False and payload["MC"]["notes"] == []


def test_cli_sc_above_null_and_edge(tmp_path):
    csv = tmp_path / "fractions.csv"
    csv.write_text(CSV)
    result = CliRunner().invoke(cli, ["capacities", str(csv), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert "SC: K = 1000 (reached in 100% of resamples; 95% CI 1000–1000)" in result.output
    edge = CSV.replace("100000,0.0,0.0,0.01,0.02,0.01,0.03,0.98,0.97,0.99",
                       "100000,0.0,0.0,0.01,0.4,0.37,0.43,0.6,0.57,0.63")
    csv.write_text(edge)
    result = CliRunner().invoke(cli, ["capacities", str(csv), "--bootstrap", "100"])
    sc = [line for line in result.output.splitlines() if line.startswith("SC")][0]
    assert sc.startswith("SC: K = 100000") and sc.endswith(AT_EDGE)


def test_report_headline_uses_describe(tmp_path):
    from memgen.report.html import write_report

    sc = Capacity("SC", None, None, None, 0.02, False, NOT_ABOVE_NULL)
    mc = Capacity("MC", 32, 8, 32, 0.97, True)
    payload = {"MC": mc.as_dict(), "SC": sc.as_dict(), "epsilon": 0.1}
    write_report(tmp_path / "r.html", "t", {}, payload, [], [])
    text = (tmp_path / "r.html").read_text()
    assert "<b>SC</b>: not above null (reached in 2% of resamples)" in text
    assert ("<b>MC</b>: K = 32 (reached in 97% of resamples; 95% CI 8–32); at the edge of "
            "the K grid — extend the grid") in text


def test_plot_fractions_draws_sc_only_when_a_value():
    from memgen.report.figures import COLORS, plot_fractions

    f = np.array(BASE, dtype=float)
    null = np.full_like(f, 0.04)
    fig = plot_fractions(K, f, capacities={"MC": 10, "SC": None, "GC": 10000}, null=null)
    ax = fig.axes[0]
    dotted = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(dotted) == 2 and {t.get_text() for t in ax.texts} == {"MC", "GC"}
    dashed = [line for line in ax.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert [line.get_color() for line in dashed] == [COLORS[n] for n in COLORS]
    fig = plot_fractions(K, f, capacities={"SC": Capacity("SC", 1000)})
    assert {t.get_text() for t in fig.axes[0].texts} == {"SC"}
