"""Detection protocols: which sets the rule reads, and how the paper's two published
procedures differ.

    paper      the paper's eqs. 4–6 (§2.1): S_eval labelled against the training set S and a
               synthetic set S′ drawn independently of it (|S′| ≫ |S|), with any rule.
    reference  what the authors' public code computes (github
               Lemon-cmd/Diffusion-Models-and-Associative-Memory, ``run_distances.py`` and
               ``stats_utils.compute_metrics``): ONE generated set; for each of its samples
               the 5 nearest neighbours in the training split and in the same set, itself
               left out (their k + 1 nearest, first column dropped); then
                   memorized ⇔ d1 ≤ δ_m,   spurious ⇔ s1 ≤ δ_s and not memorized,
               absolute cutoffs (their README: LPIPS-AlexNet 0.03 / 0.02).

Units. The public code's LPIPS (the piqa package) is a channel-weighted mean of squared
differences of unit-normalised features: a *squared* distance, d = ‖Δφ‖², as memgen's
``lpips-*`` spaces (power 2); pixel ℓ2 is plain, d = ‖Δx‖ (power 1). summary.json states
which (``protocol.distance``).

A known bug of the public code, not reproduced: its pixel-ℓ2 path scores pairs by
1/(‖x − y‖ + 1e-8) and keeps the k *smallest* scores — the k FARTHEST neighbours, and the
"self" it drops is the farthest sample. Its LPIPS path is the nearest-neighbour procedure
above. memgen's reference protocol always takes the nearest neighbours; a distance file of
the ℓ2 path cannot be rescored (``memgen.metrics.released``).

The reference protocol's "spurious" samples are broken down by d1/d2 (:func:`copy_breakdown`):
near-copies of one training image, or samples between two of them (mixture candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memgen.errors import UserError
from memgen.metrics.features import RegistryNames, registry_entry, registry_help
from memgen.metrics.rules import LABEL_NAMES, PAPER, SPURIOUS

REFERENCE_K = 5  # neighbours the public code keeps per set (its --k default)


@dataclass(frozen=True)
class Protocol:
    """A detection protocol: an entry of :data:`PROTOCOLS`.

    own_synthetic: S′ is the evaluated set itself, each sample left out of its own search
        (a given synthetic set is refused).
    rule: the rule it prescribes (None: any); k: the neighbours it keeps (None: any);
    calibrate: whether thresholds may be calibrated on held-out data.
    """

    name: str
    help: str
    own_synthetic: bool = False
    rule: str | None = None
    k: int | None = None
    calibrate: bool = True

    def check(self, rule: str | None, k: int | None, calibrate: bool) -> None:
        """One-line UserError for an option that contradicts the protocol."""
        if self.rule is not None and rule is not None and rule != self.rule:
            raise UserError(f"the {self.name} protocol uses the {self.rule} rule; "
                            f"--rule {rule} contradicts it (drop --rule)")
        if self.k is not None and k is not None and k != self.k:
            raise UserError(f"the {self.name} protocol keeps {self.k} neighbours; "
                            f"--k {k} contradicts it (drop --k)")
        if calibrate and not self.calibrate:
            raise UserError(f"the {self.name} protocol's cutoffs are given, not calibrated: "
                            "drop --calibrate")

    def check_synth(self, given: bool) -> None:
        """Refuse a synthetic set where the protocol reads the evaluated set itself."""
        if given and self.own_synthetic:
            raise UserError(f"the {self.name} protocol's synthetic set is the evaluated set "
                            "itself (leave-one-out): drop --synth")


PAPER_PROTOCOL = Protocol("paper", "eqs. 4-6 against an independent synthetic set S'")
REFERENCE_PROTOCOL = Protocol(
    "reference", "the public code's procedure: one generated set, its own S' leave-one-out, "
    "absolute cutoffs, 5 neighbours", own_synthetic=True, rule="absolute", k=REFERENCE_K,
    calibrate=False)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (PAPER_PROTOCOL, REFERENCE_PROTOCOL)}
PROTOCOL_NAMES = RegistryNames(PROTOCOLS)  # the --protocol and measure.protocol choices
DEFAULT_PROTOCOL = PAPER_PROTOCOL.name


def get_protocol(name: str) -> Protocol:
    """The protocol registered under ``name``; UserError lists the known ones."""
    return registry_entry(PROTOCOLS, name, "protocol")


def protocol_help() -> str:
    """The --protocol help: each registered protocol with its entry's help."""
    return registry_help(PROTOCOLS)


def distance_statement(metric: str, power: int) -> dict:
    """How the distances the cutoffs compare are made: d = ‖φ(x) − φ(y)‖^power."""
    return {"metric": metric, "power": int(power), "squared": int(power) == 2,
            "formula": "d = ||phi(x) - phi(y)||" + ("^2" if power == 2 else "")}


# d1/d2 bins of the breakdown: ≤ eq. 4's default δ_m (a near-copy of ONE training image:
# the paper rule calls it memorized), up to 2/3, and above (about as near the second
# training image as the first: a mixture candidate, or far from both).
NEAR_COPY_RATIO = PAPER.defaults[0]
EQUIDISTANT_RATIO = 2 / 3
BREAKDOWN_BINS = ("near_copy", "between", "equidistant")


def d1_over_d2(train_dist: np.ndarray) -> np.ndarray:
    """(n,) d1 / d2 of (n, k ≥ 2) ascending training distances (0/0 = 0: an exact copy of a
    training image that occurs twice is still a copy)."""
    d = np.asarray(train_dist, dtype=np.float64)
    if d.shape[1] < 2:
        raise UserError("the d1/d2 breakdown needs the second nearest training sample")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = d[:, 0] / d[:, 1]
    return np.where(d[:, 0] == 0, 0.0, ratio)


def breakdown_bins(train_dist: np.ndarray) -> np.ndarray:
    """(n,) int: each sample's bin of BREAKDOWN_BINS by its d1/d2 — 0 near_copy (≤ 1/3),
    1 between (≤ 2/3), 2 equidistant (> 2/3)."""
    ratio = d1_over_d2(train_dist)
    return (ratio > NEAR_COPY_RATIO).astype(np.int64) + (ratio > EQUIDISTANT_RATIO)


def copy_breakdown(train_dist: np.ndarray, labels: np.ndarray) -> dict:
    """The spurious samples by d1/d2: counts of ``near_copy`` (d1/d2 ≤ 1/3), ``between``
    (≤ 2/3) and ``equidistant`` (> 2/3), with the cuts and the median ratio (None without
    spurious samples)."""
    spurious = np.asarray(labels) == SPURIOUS
    ratio = d1_over_d2(train_dist)[spurious]
    found = np.bincount(breakdown_bins(train_dist)[spurious], minlength=len(BREAKDOWN_BINS))
    counts = dict(zip(BREAKDOWN_BINS, map(int, found)))
    return {"label": LABEL_NAMES[SPURIOUS], "n": int(spurious.sum()), "counts": counts,
            "cuts": {"near_copy": NEAR_COPY_RATIO, "equidistant": EQUIDISTANT_RATIO},
            "median_d1_over_d2": float(np.median(ratio)) if len(ratio) else None}


def protocol_payload(protocol: Protocol, metric: str, power: int, k: int,
                     train_dist: np.ndarray, labels: np.ndarray) -> dict:
    """summary.json's ``protocol`` block of a non-default protocol: what it reads, its
    distances' units and the d1/d2 breakdown of its spurious samples."""
    payload = {"name": protocol.name,
               "synthetic_set": ("the evaluated set, each sample left out"
                                 if protocol.own_synthetic else "given"),
               "k": int(k), "distance": distance_statement(metric, power)}
    if np.asarray(train_dist).shape[1] >= 2:
        payload["spurious_by_d1_d2"] = copy_breakdown(train_dist, labels)
    return payload
