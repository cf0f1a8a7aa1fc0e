"""Issue #24, item 8: a detection rule is one RuleKind in metrics.rules.RULES, read by every
user (CLI --rule, memgen.classify, a sweep's measure.rule, captions); no rule-name strings
compared elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import memgen.api as api
from memgen.cli import cli
from memgen.errors import UserError
from memgen.experiments.config import load_config
from memgen.metrics.rules import (ABSOLUTE, PAPER, RULES, RuleKind, apply_rule, make_rule,
                                  memorization_score, spurious_score)
from memgen.report.captions import rule_conditions

SRC = Path(__file__).parents[1] / "src" / "memgen"
TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
M, S, G = 0, 1, 2

# (d1, d2) and s1 of four evaluated samples, and what eqs. 4–6 give by hand (ε = 1e-6)
TRAIN = np.array([[1.0, 4.0], [2.0, 2.0], [0.0, 5.0], [3.0, 4.0]])
SYNTH = np.array([[3.0], [1.0], [7.0], [9.0]])


def test_paper_rule_scores_and_labels_by_hand():
    rule = make_rule("paper")
    assert (rule.delta_m, rule.delta_s, rule.eps) == (1 / 3, 1 / 3, 1e-6)
    np.testing.assert_array_equal(memorization_score(TRAIN, rule),
                                  [1 / 4.000001, 2 / 2.000001, 0.0, 3 / 4.000001])
    np.testing.assert_array_equal(spurious_score(TRAIN, SYNTH, rule),
                                  [3 / 4.000001, 1 / 3.000001, 7 / 7.000001, 9 / 12.000001])
    # 0: 1/4 ≤ 1/3 memorized; 1: d1/d2 ≈ 1, s1/(d1+s1) just under 1/3: spurious;
    # 2: an exact copy (0/ε); 3: neither
    np.testing.assert_array_equal(apply_rule(TRAIN, SYNTH, rule), [M, S, M, G])
    # spurious needs not memorized: row 0 has a small s1 too, but stays memorized
    np.testing.assert_array_equal(apply_rule(TRAIN, [[0.0], [1.0], [7.0], [9.0]], rule),
                                  [M, S, M, G])


def test_absolute_rule_scores_and_labels_by_hand():
    rule = make_rule("absolute", 1.5, 2.0)
    np.testing.assert_array_equal(memorization_score(TRAIN, rule), [1.0, 2.0, 0.0, 3.0])
    np.testing.assert_array_equal(spurious_score(TRAIN, SYNTH, rule), [3.0, 1.0, 7.0, 9.0])
    np.testing.assert_array_equal(apply_rule(TRAIN, SYNTH, rule), [M, S, M, G])


def test_the_real_rules_are_registry_entries():
    assert RULES == {"paper": PAPER, "absolute": ABSOLUTE}
    assert make_rule("paper").kind is PAPER and make_rule("absolute", 1, 1).kind is ABSOLUTE
    assert PAPER.needs_second_neighbour and not ABSOLUTE.needs_second_neighbour
    assert rule_conditions("paper", None, 0.25) == ("d1/d2 ≤ 0.333", "s1/(d1 + s1) ≤ 0.25")
    assert rule_conditions("absolute", None, None) == ("d1 ≤ 0.03", "s1 ≤ 0.02")


# A rule registered by this test only: memorized ⇔ d1 ≤ δ_m · median d1, spurious ⇔
# s1 ≤ δ_s · median s1 and not memorized (medians over the evaluated set).
def _positive(rule: str, field: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{field}: the {rule} rule's thresholds are positive")


NEAREST = RuleKind("nearest", "d1 against the median d1", (0.5, 0.5),
                   lambda d, eps: d[:, 0] / np.median(d[:, 0]),
                   lambda d1, s1, eps: s1 / np.median(s1), _positive,
                   ("d1 ≤ {:.3g} median", "s1 ≤ {:.3g} median"))


@pytest.fixture
def nearest(monkeypatch):
    monkeypatch.setitem(RULES, "nearest", NEAREST)


def _sets(tmp_path):
    rng = np.random.default_rng(7)
    train = rng.normal(size=(30, 6))
    synth = rng.normal(size=(80, 6))
    # 6 near copies of training points, 6 near copies of synthetic ones, 12 new points
    ev = np.concatenate([train[:6] + 0.01 * rng.normal(size=(6, 6)),
                         synth[:6] + 0.01 * rng.normal(size=(6, 6)), rng.normal(size=(12, 6))])
    paths = {}
    for name, x in (("train", train), ("eval", ev), ("synth", synth)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], x.astype(np.float32))
    return {k: np.load(p).astype(np.float64) for k, p in paths.items()}, paths


def _brute_force(sets, delta_m=0.5, delta_s=0.5):
    def nearest_dist(a, b):
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min(1)
    d1, s1 = nearest_dist(sets["eval"], sets["train"]), nearest_dist(sets["eval"], sets["synth"])
    memorized = d1 <= delta_m * np.median(d1)
    spurious = (s1 <= delta_s * np.median(s1)) & ~memorized
    return np.where(memorized, M, np.where(spurious, S, G))


def test_a_registered_rule_labels_through_the_cli_as_brute_force_says(tmp_path, nearest):
    sets, p = _sets(tmp_path)
    expected = _brute_force(sets, 0.4, 0.3)
    assert (np.bincount(expected, minlength=3) > 0).all()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["classify", "--train", str(p["train"]), "--eval",
                                      str(p["eval"]), "--synth", str(p["synth"]), "--rule",
                                      "nearest", "--delta-m", "0.4", "--delta-s", "0.3",
                                      "--k", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out / "labels.npz") as archive:
        np.testing.assert_array_equal(archive["labels"], expected)


def test_a_registered_rule_is_a_help_choice(nearest):
    result = CliRunner().invoke(cli, ["classify", "--help"])
    assert "[paper|absolute|nearest]" in result.output.replace("\n", "").replace(" ", "")


def test_a_registered_rule_labels_through_the_api(tmp_path, nearest):
    sets, _ = _sets(tmp_path)
    result = api.classify(sets["train"], sets["eval"], sets["synth"], rule="nearest")
    assert result.rule.kind is NEAREST and result.rule.delta_m == 0.5
    np.testing.assert_array_equal(result.labels, _brute_force(sets))
    assert result.summary()["rule"] == "nearest"


def test_a_registered_rule_is_a_sweep_choice(monkeypatch):
    with pytest.raises(UserError, match="measure.rule: 'nearest' is not one of paper, absolute"):
        load_config(TINY, ["measure.rule=nearest"])
    monkeypatch.setitem(RULES, "nearest", NEAREST)
    # and k = 1 is allowed, since it needs no second neighbour (paper refuses it)
    assert load_config(TINY, ["measure.rule=nearest", "measure.k=1"]).measure.rule == "nearest"
    with pytest.raises(UserError, match="the paper rule needs the second nearest"):
        load_config(TINY, ["measure.k=1"])
    with pytest.raises(UserError, match="delta_m: the nearest rule's thresholds are positive"):
        load_config(TINY, ["measure.rule=nearest", "measure.delta_m=0"])
    assert rule_conditions("nearest", None, 0.2) == ("d1 ≤ 0.5 median", "s1 ≤ 0.2 median")


def rule_name_comparisons(source: str, names) -> list[int]:
    """Lines where a comparison (==, !=, in, not in, is) has a rule name as a string literal
    operand (directly or inside a tuple, list or set)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        operands += [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set))
                     for e in o.elts]
        if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
            lines.append(node.lineno)
    return lines


def test_no_rule_name_is_compared_outside_the_registry():
    names = set(RULES)
    assert rule_name_comparisons('if rule == "paper": pass\nx = r in ("a", "absolute")',
                                 names) == [1, 2]
    found = {str(path.relative_to(SRC)): lines for path in sorted(SRC.rglob("*.py"))
             if path != SRC / "metrics" / "rules.py"
             and (lines := rule_name_comparisons(path.read_text(), names))}
    assert found == {}
