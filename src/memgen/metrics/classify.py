"""Classify one evaluated set against its training and synthetic sets: config → result → files.

This is the orchestration behind ``memgen classify``; the math lives in ``metrics``.
"""

from __future__ import annotations

import numbers
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from memgen._version import __version__
from memgen.errors import UserError
from memgen.io import check_same_shape, row_keys, validate_samples, write_json
from memgen.metrics.features import (FEATURE_MAPS, METRIC_NAMES, RegistryNames, get_feature_map,
                                     metric_help)
from memgen.metrics.null import DEFAULT_ALPHA, NullResult, null_rates
from memgen.metrics.quality import HeldoutQuality, quality_summary, quality_vs_heldout
from memgen.metrics.nearest import Neighbours, find_neighbours
from memgen.metrics.protocols import (DEFAULT_PROTOCOL, PROTOCOL_NAMES, PROTOCOLS,
                                      REFERENCE_PROTOCOL, get_protocol, protocol_help,
                                      protocol_payload)
from memgen.metrics.rules import (DEFAULT_RULE, LABEL_NAMES, RULE_NAMES, RULES, Rule, apply_rule,
                                  make_rule, rule_help, threshold_help)
from memgen.metrics.stats import FractionEstimate, estimate_fractions
from memgen.neighbours import KNN_BACKENDS, ShardSet, get_knn_backend, iter_chunks


def option(help: str, **cli) -> dict:  # noqa: A002 (click's name)
    """A ClassifyConfig field's metadata, the one list of classify options: its --help text
    and how ``memgen classify`` and ``memgen.classify`` take it. ``choices``: the values
    allowed (``registry``: a registry whose names they are, read at each use); ``default``:
    theirs, where it differs from the field's; ``unit="MiB"``: given in MiB, stored in
    bytes; ``seed=True``: a non-negative seed."""
    return {"help": help, **cli}


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything that decides the labels; serialised into every summary.json.

    Each field is an option of ``memgen classify`` (``--delta-m`` for delta_m) and of
    ``memgen.classify``, and a key of a sweep's ``measure`` section: a new field here is a
    new option there (``memgen.cli.measure.classify_options``, ``memgen.api.classify``)."""

    rule: str | None = field(default=None, metadata=option(  # None: the protocol's (paper)
        f"{rule_help()} [{DEFAULT_RULE}; the reference protocol's: "
        f"{REFERENCE_PROTOCOL.rule}]", choices=RULE_NAMES, registry=RULES))
    delta_m: float | None = field(default=None, metadata=option(  # None: the rule's default
        f"Memorization threshold [{threshold_help('delta_m')}]."))
    delta_s: float | None = field(default=None, metadata=option(
        f"Spurious threshold [{threshold_help('delta_s')}]."))
    metric: str = field(default="l2", metadata=option(
        f"Distance d. {metric_help()}. Network weights from $MEMGEN_LPIPS_WEIGHTS or torch "
        "hub's checkpoints folder.", choices=METRIC_NAMES, registry=FEATURE_MAPS))
    k: int | None = field(default=None, metadata=option(  # None: 5, or fewer
        "Neighbours kept per set [5, or fewer for a small set]."))
    alpha: float = field(default=DEFAULT_ALPHA, metadata=option(
        "Null detection rate the calibrated thresholds allow."))
    calibrate: bool = field(default=False, metadata=option(
        "Label with the thresholds calibrated on --heldout."))
    seed: int = field(default=0, metadata=option(
        "Draws the null and quality subsets from --heldout.", seed=True))
    memory_budget: int | None = field(default=None, metadata=option(  # bytes; None: 512 MiB
        "MiB for one block of pairwise distances (and one streamed chunk).",
        default=512, unit="MiB"))
    backend: str = field(default="builtin", metadata=option(  # exact kNN engines, same results
        "Exact kNN engine (faiss: pip install faiss-cpu).", choices=RegistryNames(KNN_BACKENDS),
        registry=KNN_BACKENDS))
    dedup: bool = field(default=False, metadata=option(  # d2 against the nearest distinct one
        "Measure d2 against the nearest training image that is not a near-duplicate of the "
        "first (memgen's extension of eq. 4 for training sets with repeated images)."))
    protocol: str = field(default=DEFAULT_PROTOCOL, metadata=option(  # metrics.protocols
        f"Detection protocol. {protocol_help()}", choices=PROTOCOL_NAMES, registry=PROTOCOLS))

    def __post_init__(self):
        """Each option of its field's type, whoever built the config (``memgen.classify``'s
        keywords arrive unchecked: calibrate="no" would otherwise be true)."""
        hints = typing.get_type_hints(ClassifyConfig)
        for f in fields(ClassifyConfig):
            value = getattr(self, f.name)
            options = set(typing.get_args(hints[f.name]) or (hints[f.name],))
            if value is None and type(None) in options:
                continue
            kind = next(o for o in options if o is not type(None))
            if not isinstance(value, OPTION_TYPES[kind]) or (
                    kind is not bool and isinstance(value, bool)):
                raise UserError(f"{f.name}: expected {TYPE_WORDS[kind]}, got {value!r}")
        protocol = get_protocol(self.protocol)
        protocol.check(self.rule, self.k, self.calibrate)
        if self.rule is None:  # the protocol's rule, or the default one
            object.__setattr__(self, "rule", protocol.rule or DEFAULT_RULE)

    def make_rule(self) -> Rule:
        return make_rule(self.rule, self.delta_m, self.delta_s, metric=self.metric)


OPTION_TYPES = {bool: bool, int: numbers.Integral, float: numbers.Real, str: str}
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


@dataclass(frozen=True)
class Classification:
    """Labels of the evaluated set, their neighbours, fractions and (optionally) null rates."""

    config: ClassifyConfig
    rule: Rule  # the thresholds actually applied
    labels: np.ndarray  # (n,) int8
    neighbours: Neighbours
    estimate: FractionEstimate
    null: NullResult | None
    n_train: int
    n_synth: int
    quality: HeldoutQuality | None = None  # prdc vs held-out data (metrics.quality)
    warnings: tuple[str, ...] = ()  # what may make the labels misleading (duplicates)
    power: int = 1  # d = ‖φ(x) − φ(y)‖^power in the metric's feature space

    @property
    def fractions(self) -> dict[str, float]:
        """Fraction of each label, by name (memorized, spurious, generalized)."""
        return self.estimate.as_dict()["fractions"]

    @property
    def ci95(self) -> dict[str, tuple[float, float]]:
        """Exact (Clopper–Pearson) 95% interval of each fraction, by name."""
        return {name: tuple(v) for name, v in self.estimate.as_dict()["ci95"].items()}

    @property
    def counts(self) -> dict[str, int]:
        return self.estimate.as_dict()["counts"]

    label_names: ClassVar[tuple[str, ...]] = LABEL_NAMES  # the names of labels 0, 1, 2

    @property
    def named_labels(self) -> np.ndarray:
        """(n,) str: each evaluated sample's label by name."""
        return np.asarray(LABEL_NAMES)[self.labels]

    @property
    def null_rates(self) -> dict[str, float] | None:
        """The null rate of each label, by name as ``fractions`` (held-out real data
        labelled by the same rule, at the thresholds the labels used); None without
        held-out data."""
        return None if self.null is None else null_payload(self.null,
                                                           self.config.calibrate)["fractions"]

    @property
    def null_ci95(self) -> dict[str, tuple[float, float]] | None:
        """The exact 95% interval of each null rate, by name as ``ci95``."""
        if self.null is None:
            return None
        ci = null_payload(self.null, self.config.calibrate)["ci95"]
        return {name: tuple(v) for name, v in ci.items()}

    def to_frame(self):
        """A pandas DataFrame, one row per evaluated sample: ``label`` (its name), ``d1``,
        ``d2`` (distances to the nearest and second-nearest training samples; NaN with
        k = 1), ``s1`` (to the nearest synthetic sample), ``train_idx``, ``synth_idx``
        (the indices of those nearest ones) and, with held-out data, ``in_manifold`` (the
        sample lies in a held-out k-NN ball: its share is the precision). Needs pandas."""
        try:
            import pandas as pd  # optional: only to_frame() needs it
        except ImportError:
            raise ImportError("Classification.to_frame() needs pandas: pip install pandas "
                              "(the other results need nothing more)") from None
        near = self.neighbours
        columns = {"label": pd.Categorical(self.named_labels, categories=LABEL_NAMES),
                   "d1": near.train_dist[:, 0],
                   "d2": near.train_dist[:, 1] if near.train_dist.shape[1] > 1
                   else np.full(len(self.labels), np.nan),
                   "s1": near.synth_dist[:, 0], "train_idx": near.train_idx[:, 0],
                   "synth_idx": near.synth_idx[:, 0]}
        if self.quality is not None:
            columns["in_manifold"] = self.quality.quality.in_manifold
        return pd.DataFrame(columns)

    def __repr__(self) -> str:
        """A few lines: sizes and rule, each fraction with its interval and null rate, the
        precision and the warnings."""
        r = self.rule
        lines = [f"Classification of {len(self.labels)} samples: rule {r.name} (δ_m = "
                 f"{r.delta_m:.4g}, δ_s = {r.delta_s:.4g}), metric {self.config.metric}, "
                 f"{self.n_train} training, {self.n_synth} synthetic"]
        null = self.null_rates or {}
        for name, value in self.fractions.items():
            lo, hi = self.ci95[name]
            lines.append(f"  {name:<12}{value:.4f} [{lo:.4f}, {hi:.4f}]"
                         + (f"  null {null[name]:.4f}" if name in null else ""))
        if self.quality is not None:
            q, b = self.quality.quality, self.quality.baseline
            lines.append(f"  precision {q.precision:.3f}"
                         + ("" if b is None else f" (held-out {b.precision:.3f})"))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def summary(self) -> dict:
        """The summary.json payload of ``memgen classify``."""
        return summary(self)


def classify_sets(eval_set: np.ndarray, train: np.ndarray, synth=None,
                  heldout: np.ndarray | None = None, config: ClassifyConfig = ClassifyConfig(),
                  progress: bool = False, state=None) -> Classification:
    """Label every evaluated sample; with held-out data, also the null rates and quality.

    Quality (precision, recall, density, coverage in the metric's feature space): the
    evaluated set against the reference part of ``heldout``, and a baseline held-out
    part of the evaluated set's size (``metrics.quality.heldout_split``, config seed).

    synth: an array, None (S_eval is its own synthetic set), or a ShardSet streamed from
    disk (``state``: its restart file, see ``memgen.neighbours.stream``).

    The metric is resolved once (one backbone) and each set embedded once (a streamed one
    chunk by chunk); the null run and quality take the held-out embedding's rows.
    """
    streamed = isinstance(synth, ShardSet)
    n_synth = None if synth is None else synth.rows if streamed else len(synth)
    rule = check_inputs(eval_set, train, synth, heldout, config)
    common = dict(k=config.k, memory_budget=config.memory_budget, progress=progress,
                  backend=config.backend, distinct=config.dedup)
    get_knn_backend(config.backend)  # an unknown or missing engine before any embedding
    space = get_feature_map(config.metric)  # built once (LPIPS: one backbone)
    e, t = space.embed_set(eval_set), space.embed_set(train)
    null = quality = None
    if heldout is not None:  # first, so that its embedding is freed before S′'s is made
        h = space.embed_set(heldout)
        null = null_rates(t, h, rule, n_eval=len(eval_set), n_synth=n_synth,
                          alpha=config.alpha, seed=config.seed, **common)
        if config.calibrate:
            rule = null.calibrated
        quality = quality_vs_heldout(e, h, k=config.k, seed=config.seed,
                                     memory_budget=config.memory_budget, backend=config.backend)
        del h
    s = synth if synth is None or streamed else space.embed_set(synth)
    near = find_neighbours(e, t, s, state=state, **common)
    if streamed:  # s1 = 0 exactly: the row is in S′ (the search refines in float64)
        zero = near.synth_dist == 0
        recurring = zero[:, 1] if zero.shape[1] > 1 else np.zeros(len(zero), dtype=bool)
        positional = (zero & (near.synth_idx == np.arange(len(zero))[:, None])).any(axis=1)
        check_independent(zero[:, 0], recurring, positional, eval_set, train)
    labels = apply_rule(near.train_dist, near.synth_dist, rule)
    return Classification(config=config, rule=rule, labels=labels, neighbours=near, null=null,
                 estimate=estimate_fractions(labels),
                 n_train=len(train), n_synth=len(eval_set) if synth is None else n_synth,
                 quality=quality, warnings=duplicate_warnings(train, near, rule)
                 + overlap_warnings(eval_set, train, near, synth is None), power=space.power)


def check_inputs(eval_set: np.ndarray, train: np.ndarray, synth, heldout: np.ndarray | None,
                 config: ClassifyConfig) -> Rule:
    """The checks of :func:`classify_sets` before any search (a shared file fails fast);
    returns the config's rule."""
    streamed = isinstance(synth, ShardSet)
    get_protocol(config.protocol).check_synth(synth is not None)
    check_same_shape(train=train, eval=eval_set, synth=None if streamed else synth,
                     heldout=heldout)
    if streamed and synth.sample_shape != eval_set.shape[1:]:
        raise UserError(f"synth samples have shape {synth.sample_shape} but eval samples "
                         f"have shape {eval_set.shape[1:]}")
    rule = config.make_rule()
    if config.calibrate and heldout is None:
        raise UserError("calibrated thresholds need held-out real data (--heldout)")
    if rule.needs_second_neighbour and len(train) < 2:
        raise UserError(f"the {rule.name} rule needs a second nearest training sample, but "
                        "the training set has only one (use --rule absolute)")
    if rule.needs_second_neighbour and config.k == 1:
        raise UserError(f"the {rule.name} rule needs a second nearest training sample: k "
                        "must be at least 2 (or unset)")
    if heldout is not None:
        check_disjoint(train, heldout)
    if synth is not None and not streamed:
        hits = shared_rows(eval_set, synth)
        check_independent(hits > 0, hits > 1, same_position(eval_set, synth), eval_set, train)
    return rule


STREAM_PEEK_ROWS = 1024  # rows of a streamed set its range is judged by


def streamed_sample(synth: ShardSet, name: str = "--synth") -> np.ndarray:
    """The input contract (``memgen.io``) for a streamed set, without reading it all: every
    shard's dtype from its header (images: floats or uint8) and the values of its first
    ``STREAM_PEEK_ROWS`` rows, which are returned (for ``memgen.io.check_ranges``)."""
    if len(synth.sample_shape) == 3:
        for shard in synth.shards:
            dtype = np.dtype(shard.dtype)
            if dtype.kind != "f" and dtype != np.uint8:
                raise UserError(f"{name}: {shard.path.name} holds {dtype} images; memgen "
                                "takes images as floats in [-1, 1] or uint8: convert the "
                                "shards")
    rows = next(iter_chunks(synth, min(STREAM_PEEK_ROWS, synth.rows))).samples.numpy()
    return validate_samples(rows, f"{name} (its first {len(rows)} rows)",
                            flag="shards converted from {} to [-1, 1] (a streamed --synth "
                                 "is read as it is: --input-range cannot convert it)")


def check_disjoint(train: np.ndarray, heldout: np.ndarray) -> None:
    """Refuse held-out data that shares samples with the training set: the null run
    must see data the model never saw (with a copy, δ_m calibrates to below 0)."""
    seen = set(row_keys(train))
    shared = sum(key in seen for key in row_keys(heldout))
    if shared:
        raise UserError(f"{shared} of the {len(heldout)} held-out samples are also in the "
                         "training set: held-out data must be disjoint from it")


def shared_rows(eval_set: np.ndarray, synth: np.ndarray) -> np.ndarray:
    """(n_eval,) int: how often each evaluated row appears exactly (byte for byte) in
    ``synth``."""
    index: dict[bytes, list[int]] = {}
    for i, key in enumerate(row_keys(eval_set)):
        index.setdefault(key, []).append(i)
    hits = np.zeros(len(eval_set), dtype=np.int64)
    for key in row_keys(synth):
        hits[index.get(key, [])] += 1
    return hits


def own_duplicates(eval_set: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n,) repeated, (n,) copied): evaluated rows that repeat another evaluated row
    exactly, and those that are exactly a training row — what explains an exact repeat
    across independently drawn sets (a model that emits a few images exactly)."""
    flat = eval_set.reshape(len(eval_set), -1)
    _, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    repeated = counts[inverse.reshape(-1)] > 1
    seen = set(row_keys(train))
    copied = np.fromiter((key in seen for key in row_keys(flat)), dtype=bool, count=len(flat))
    return repeated, copied


def same_position(eval_set: np.ndarray, synth: np.ndarray) -> np.ndarray:
    """(n_eval,) bool: evaluated row i is exactly synthetic row i — what two sets drawn
    from the same seed give (sample i of a set comes from the stream (seed, i))."""
    n = min(len(eval_set), len(synth))
    same = np.zeros(len(eval_set), dtype=bool)
    same[:n] = (eval_set[:n].reshape(n, -1) == synth[:n].reshape(n, -1)).all(axis=1)
    return same


def check_independent(shared: np.ndarray, recurring: np.ndarray, positional: np.ndarray,
                      eval_set: np.ndarray, train: np.ndarray) -> None:
    """Refuse an evaluated set that shares rows with the synthetic set where nothing in the
    data explains it. shared: (n,) bool, the row is in S′; recurring: it is there at least
    twice; positional: it is S′'s row of the same index. A shared row is explained when it
    is a training image, repeats within S_eval or recurs within S′: an exact state the
    model reaches again and again (a fixed point of retrieval, a clipped image). Refused:
    two or more unexplained rows at the same index (sets drawn from the same seed, or the
    same file), or two or more unexplained shared rows where neither set repeats itself (a
    model without exact states cannot explain them). Drawn from the same noise, every such
    sample has s1 = 0 and is called spurious; ``overlap_warnings`` says what is left."""
    if not shared.any():
        return
    repeated, copied = own_duplicates(eval_set, train)
    unexplained = shared & ~recurring & ~repeated & ~copied
    same_seed = int((unexplained & positional).sum())
    repeats = repeated.any() or recurring.any()
    if not (same_seed >= 2 or (same_seed and shared.all())
            or (unexplained.sum() >= 2 and not repeats)):
        return
    raise UserError(f"{int(shared.sum())} of the {len(shared)} evaluated samples are also in "
                    f"the synthetic set ({int(unexplained.sum())} of them neither training "
                    "images nor repeated within either set: the same file, or sets generated "
                    "from the same seed): S_eval and S′ must be drawn independently (memgen "
                    "generate's default --seed depends on --name; give each set its own)")


def overlap_warnings(eval_set: np.ndarray, train: np.ndarray, near: Neighbours,
                     own_synth: bool) -> tuple[str, ...]:
    """A warning where more evaluated samples have an exact copy in S′ (s1 = 0) than the
    evaluated set's own exact repeats and training copies explain: those samples are
    called spurious because the sets share rows, not because the model repeats itself.
    Not for S_eval as its own S′ (its self-matches are excluded, so s1 = 0 is exactly a
    repeat)."""
    zero = near.synth_dist[:, 0] == 0
    if own_synth or not zero.any():
        return ()
    repeated, copied = own_duplicates(eval_set, train)
    explained = repeated | copied
    if zero.mean() <= explained.mean():
        return ()
    n = len(zero)
    return (f"{int(zero.sum())} of the {n} evaluated samples ({zero.mean():.1%}) have an "
            f"exact copy in the synthetic set (s1 = 0), more than the evaluated set's own "
            f"exact repeats and training copies explain ({explained.mean():.1%}): were "
            "S_eval and S′ drawn independently?",)


def duplicate_warnings(train: np.ndarray, near: Neighbours, rule: Rule) -> tuple[str, ...]:
    """Warnings when duplicated training images can hide copies from eq. 4 (d1 ≈ d2)."""
    repeats = len(train) - len(np.unique(train.reshape(len(train), -1), axis=0))
    # an exact copy (d1 = d2 = 0) still passes eq. 4 (0 / ε); the near-copies do not
    hidden = 0 if near.duplicate_pair is None else \
        int((near.duplicate_pair & (near.train_dist[:, 0] > 0)).sum())
    if not rule.needs_second_neighbour or not (repeats or hidden):
        return ()
    where = ("the training set has near-duplicates" if not repeats else
             "1 training sample repeats another exactly" if repeats == 1 else
             f"{repeats} training samples repeat others exactly")
    if near.distinct:
        return (f"{where}; d2 is measured against the nearest distinct training image "
                f"(--dedup) for the {hidden} evaluated samples whose two nearest training "
                "images are near-duplicates",)
    return (f"{where}: for {hidden} evaluated samples the two nearest training images are "
            f"near-duplicates (closer than {near.duplicate_cut:.3g}), so d1/d2 ≈ 1 cannot "
            "call a copy memorized; use --dedup, or see memgen hygiene duplicates",)


def summary(result: Classification, provenance: dict | None = None) -> dict:
    """The summary.json payload: the keys the README documents (“Command line”) first;
    ``provenance`` (``memgen.provenance.gather``: command line, versions, input hashes)
    last, when given."""
    payload = result.estimate.as_dict()
    payload.update(rule=result.rule.name, delta_m=result.rule.delta_m,
                   delta_s=result.rule.delta_s, metric=result.config.metric,
                   k=int(result.neighbours.train_dist.shape[1]), n_train=result.n_train,
                   n_synth=result.n_synth, calibrated=result.config.calibrate)
    if result.warnings:
        payload["warnings"] = list(result.warnings)
    if result.null is not None:
        payload["null"] = null_payload(result.null, result.config.calibrate)
        payload["quality"] = (None if result.quality is None
                              else quality_summary(result.quality, result.labels))
    protocol = get_protocol(result.config.protocol)
    if protocol.name != DEFAULT_PROTOCOL:  # the default's summary.json is that of before
        near = result.neighbours
        payload["protocol"] = protocol_payload(
            protocol, result.config.metric, result.power,
            near.train_dist.shape[1], near.train_dist, result.labels)
    payload.update(config=config_payload(result.config), version=__version__)
    if provenance is not None:
        payload["provenance"] = provenance
    return payload


def config_payload(config: ClassifyConfig) -> dict:
    """summary.json's ``config``: every field, the protocol only where it is not the default
    (so that a default summary.json reads as it did before protocols existed)."""
    payload = asdict(config)
    if payload["protocol"] == DEFAULT_PROTOCOL:
        del payload["protocol"]
    return payload


def null_payload(null: NullResult, calibrated: bool) -> dict:
    """The null rates at the thresholds the labels used (calibrated or given), and with
    calibration also those at the given thresholds.

    Calibrated rates are measured on the held-out rows that chose the thresholds, so the
    detection rates are ≤ α by construction (``in_sample``): a check of the calibration,
    not an independent estimate of the false-detection rate."""
    payload = null.as_dict()
    payload["thresholds"] = "calibrated" if calibrated else "given"
    payload["in_sample"] = calibrated
    if calibrated:
        applied = null.calibrated_estimate.as_dict()
        payload["given_thresholds"] = {"fractions": payload["fractions"],
                                       "ci95": payload["ci95"]}
        payload.update(fractions=applied["fractions"], ci95=applied["ci95"])
    return payload


def write_classification(out: Path, result: Classification,
                         provenance: dict | None = None) -> None:
    """summary.json (with ``provenance`` when given) and labels.npz into an (already
    created) folder."""
    write_json(out / "summary.json", summary(result, provenance))
    near = result.neighbours
    np.savez(out / "labels.npz", labels=result.labels, train_dist=near.train_dist,
             train_idx=near.train_idx, synth_dist=near.synth_dist, synth_idx=near.synth_idx)

