"""Issue #24, item 3: the metric resolved once per classify, each set embedded once.

A counting feature space registered in ``FEATURE_MAPS`` (and nowhere else) records how
often it is built and which rows it embeds; the same entry is offered by the CLI, the sweep
config and the API, and its labels equal brute force with its own distance. The embedded
path gives the labels, distances and null rates of the per-call path (each function
embedding its own sets, as before) for l2 and a random-weights LPIPS.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import memgen
from memgen.cli import cli
from memgen.experiments.config import load_config
from memgen.experiments.stages import validate_against_data
from memgen.metrics import features
from memgen.metrics.classify import ClassifyConfig, classify_sets
from memgen.metrics.features import FeatureMap, FeatureSpace
from memgen.metrics.lpips import embed_batched, random_lpips
from memgen.metrics.null import null_rates
from memgen.metrics.quality import quality_vs_heldout
from memgen.metrics.nearest import find_neighbours
from memgen.metrics.rules import apply_rule

SIZES = {"train": 40, "eval": 17, "synth": 55, "heldout": 33}  # distinct: a call names its set
SHAPE = (1, 3, 3)
WEIGHTS = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)  # the dummy's own distance


@dataclass
class Counts:
    builds: int = 0
    rows: list = field(default_factory=list)  # rows of every embed call


def counting_space(counts: Counts, name: str = "counting") -> FeatureSpace:
    """d(x, y) = Σ_i w_i (x_i − y_i)²: φ(x) = √w ⊙ x, p = 2."""
    def embedding():
        counts.builds += 1

        def embed(x):
            counts.rows.append(len(x))
            return x.reshape(len(x), -1).double() * WEIGHTS.sqrt()
        return embed
    return FeatureSpace(name, embedding=embedding, power=2, help="a test space")


@pytest.fixture
def counts(monkeypatch):
    counts = Counts()
    monkeypatch.setitem(features.FEATURE_MAPS, "counting", counting_space(counts))
    return counts


@pytest.fixture
def sets():
    rng = np.random.default_rng(4)
    drawn = {name: rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)
             for name, n in SIZES.items()}
    drawn["eval"][:4] = (drawn["train"][:4] + 0.01).clip(-1, 1)  # planted copies
    drawn["eval"][4:8] = (drawn["synth"][:4] + 0.02).clip(-1, 1)  # and recurring ones
    return drawn


def _save(tmp_path, sets):
    for name, data in sets.items():
        np.savez(tmp_path / f"{name}.npz", samples=data)
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(sets["synth"], 4)):
        np.save(tmp_path / "shards" / f"synth-{i:05d}.npy", part)


def _cli(tmp_path, synth, *extra):
    args = ["classify", "--metric", "counting", "--out", str(tmp_path / "out"), "--overwrite",
            "--synth", str(synth), *extra]
    for name in ("train", "eval", "heldout"):
        args += [f"--{name}", str(tmp_path / f"{name}.npz")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ (a) builds and embeddings


@pytest.mark.parametrize("config", [ClassifyConfig(metric="counting"),
                                    ClassifyConfig(metric="counting", calibrate=True,
                                                   dedup=True)])
def test_a_classify_builds_the_map_once_and_embeds_each_set_once(counts, sets, config):
    result = classify_sets(sets["eval"], sets["train"], sets["synth"], sets["heldout"], config)
    assert result.null is not None and result.quality is not None
    assert counts.builds == 1
    assert sorted(counts.rows) == sorted(SIZES.values())


def test_the_cli_builds_the_map_once_and_embeds_each_set_once(counts, sets, tmp_path):
    _save(tmp_path, sets)
    _cli(tmp_path, tmp_path / "synth.npz")
    assert counts.builds == 1
    assert sorted(counts.rows) == sorted(SIZES.values())


def test_a_streamed_synth_is_embedded_chunk_by_chunk_once(counts, sets, tmp_path):
    _save(tmp_path, sets)
    _cli(tmp_path, tmp_path / "shards", "--memory-budget", "0.0005")
    assert counts.builds == 1
    in_memory = sorted(SIZES[name] for name in ("train", "eval", "heldout"))
    chunks = [n for n in counts.rows if n not in in_memory]
    assert sorted(n for n in counts.rows if n in in_memory) == in_memory
    # the streamed set in several chunks, each row once (the chunk size is derived from
    # the queries' embedding, without embedding a sizing row)
    assert len(chunks) > 2 and sum(chunks) == SIZES["synth"]


def test_the_api_with_shards_embeds_each_set_once(counts, sets, tmp_path):
    _save(tmp_path, sets)
    result = memgen.classify(sets["train"], sets["eval"], str(tmp_path / "shards"),
                             heldout=sets["heldout"], metric="counting")
    assert result.quality is not None and counts.builds == 1
    assert sum(counts.rows) == sum(SIZES.values())


def test_the_sweep_checks_the_metric_without_building_it(counts):
    config = load_config(_tiny(), ["measure.metric=counting"])
    validate_against_data(config, np.zeros((10_000, 2), np.float32))
    assert counts.builds == 0 and counts.rows == []


def _tiny():
    return Path(__file__).parents[1] / "configs" / "tiny.yaml"


# ------------------------------------------------------------------ (b) the registry alone


def _brute_force_labels(sets, rule):
    """The rule on distances Σ w_i (x_i − y_i)² computed pair by pair, in float64."""
    w = WEIGHTS.numpy()

    def dist(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        return (w * (a[:, None] - b[None]) ** 2).sum(-1)

    d_train = np.sort(dist(sets["eval"], sets["train"]), axis=1)
    d_synth = np.sort(dist(sets["eval"], sets["synth"]), axis=1)
    return apply_rule(d_train[:, :5], d_synth[:, :5], rule)


def test_b_a_space_in_the_registry_alone_is_accepted_everywhere(counts, sets, tmp_path):
    _save(tmp_path, sets)
    _cli(tmp_path, tmp_path / "synth.npz")
    with np.load(tmp_path / "out" / "labels.npz") as saved:
        cli_labels = saved["labels"]
    api = memgen.classify(sets["train"], sets["eval"], sets["synth"], heldout=sets["heldout"],
                          metric="counting")
    assert load_config(_tiny(), ["measure.metric=counting"]).measure.metric == "counting"
    expected = _brute_force_labels(sets, api.rule)
    assert (expected == 0).sum() >= 4  # the planted copies, memorized
    np.testing.assert_array_equal(api.labels, expected)
    np.testing.assert_array_equal(cli_labels, expected)
    help_text = CliRunner().invoke(cli, ["classify", "--help"]).output
    assert "counting" in help_text  # the choice list reads the registry


def test_an_unregistered_metric_is_refused_by_name(sets):
    with pytest.raises(ValueError, match="unknown metric 'counting'"):
        memgen.classify(sets["train"], sets["eval"], metric="counting")


# ------------------------------------------------------------------ (c) the old path's numbers


def _per_call(sets, config):
    """Labels, neighbours, null and quality the way each function embeds its own sets."""
    common = dict(k=config.k, metric=config.metric, memory_budget=config.memory_budget,
                  backend=config.backend, distinct=config.dedup)
    rule = config.make_rule()
    null = null_rates(sets["train"], sets["heldout"], rule, n_eval=SIZES["eval"],
                      n_synth=SIZES["synth"], alpha=config.alpha, seed=config.seed, **common)
    if config.calibrate:
        rule = null.calibrated
    near = find_neighbours(sets["eval"], sets["train"], sets["synth"], **common)
    quality = quality_vs_heldout(sets["eval"], sets["heldout"], metric=config.metric,
                                 k=config.k, seed=config.seed)
    return apply_rule(near.train_dist, near.synth_dist, rule), near, null, quality


@pytest.mark.parametrize("metric", ["l2", "lpips-random"])
@pytest.mark.parametrize("calibrate,dedup", [(False, False), (True, True)])
def test_c_the_embedded_path_gives_the_per_call_numbers(monkeypatch, metric, calibrate, dedup):
    model = random_lpips("alex", seed=3)
    monkeypatch.setitem(features.FEATURE_MAPS, "lpips-random", lambda: FeatureMap(
        "lpips-random", embed=lambda x: embed_batched(model, x), power=2))
    rng = np.random.default_rng(5)
    sets = {name: rng.uniform(-1, 1, (n, 1, 12, 12)).astype(np.float32)
            for name, n in SIZES.items()}
    sets["eval"][:4] = (sets["train"][:4] + 0.01).clip(-1, 1)
    config = ClassifyConfig(metric=metric, calibrate=calibrate, dedup=dedup, seed=2)
    result = classify_sets(sets["eval"], sets["train"], sets["synth"], sets["heldout"], config)
    labels, near, null, quality = _per_call(sets, config)
    np.testing.assert_array_equal(result.labels, labels)
    for key in ("train_dist", "train_idx", "synth_dist", "synth_idx", "duplicate_pair"):
        np.testing.assert_array_equal(getattr(result.neighbours, key), getattr(near, key))
    assert result.null.as_dict() == null.as_dict()
    assert result.quality.quality.as_dict() == quality.quality.as_dict()
    assert result.quality.baseline.as_dict() == quality.baseline.as_dict()
    np.testing.assert_array_equal(result.quality.quality.in_manifold,
                                  quality.quality.in_manifold)
