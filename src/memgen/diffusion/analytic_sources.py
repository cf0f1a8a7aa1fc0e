"""The training-free generalizers as model sources (``memgen.diffusion.analytic``'s
denoisers, registered in ``memgen.diffusion.sources.SOURCES``): each built from a
training set as the exact denoiser is, with its numbers (``SourceParameter``): the CLI's
--smoothing, --patch, --equivariant and the sweep's model fields of the same names.

    name      model.kind  parameters (default)         denoiser
    smoothed  smoothed    smoothing (0.1), draws (16)  SmoothedDenoiser (Scarvelis et al.)
    els       els         patch (3), equivariant (on)  ELSDenoiser (Kamb & Ganguli)
    gaussian  gaussian    —                            LinearDenoiser (S_K's mean, 1/K cov)

The defaults are memgen's, not the papers': the smoothing s is a per-coordinate standard
deviation in the data's [-1, 1] units at σ = 0, so the perturbation's length is about
s√D (0.8 for s = 0.1 on 8×8 digits, 4 for s = 0.5, where held-out digits lie 2.0–5.4 from
their nearest training digit); Kamb & Ganguli calibrate the patch against each network
and time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from memgen.diffusion.analytic import (SMOOTHING_DRAWS, ELSDenoiser, LinearDenoiser,
                                      SmoothedDenoiser, check_els)
from memgen.diffusion.denoisers import Denoiser
from memgen.diffusion.identity import ModelSource, array_sha256
from memgen.diffusion.source_base import LoadedModel, LoadOptions, Source, parse_schedule
from memgen.errors import UserError
from memgen.io import load_samples


@dataclass(frozen=True)
class SourceParameter:
    """A number a training-free source is built with: ``model.<name>`` in a sweep (a field
    of ``ModelConfig`` with this default), ``--<name>`` on the CLI (a bool: --name/--no-name)."""

    name: str
    kind: type  # float, int or bool
    default: float | int | bool
    help: str


class AnalyticSource(Source):
    """A training-free generalizer of a training set (N, ...) (``memgen.diffusion.analytic``),
    in ``exact_dtype``, with ``schedule`` for the samplers' ladder as for the exact denoiser.
    ``load`` takes the training set, or (training set, {parameter: value}) with the
    ``parameters`` not given at their defaults."""

    training_set, schedule_option, analysable = True, True, False  # analyses: exact/network
    parameters: ClassVar[tuple[SourceParameter, ...]] = ()
    title: ClassVar[str] = ""  # the denoiser in a message

    def option_value(self, path, *, config=None, input_range=None, parameters=None):
        return (load_samples(path, self.flag, input_range), dict(parameters or {}))

    def settings(self, given: Mapping, where: str = "--") -> dict:
        """{name: value} of every parameter, defaults filled, range-checked (UserError)."""
        out = {p.name: given.get(p.name, p.default) for p in self.parameters}
        for p in self.parameters:
            if isinstance(out[p.name], bool) != (p.kind is bool):
                raise UserError(f"{where}{p.name}: {out[p.name]!r} is not a {p.kind.__name__}")
        self.check_settings(out, where)
        return out

    def check_settings(self, settings: dict, where: str) -> None:
        """UserError for settings out of range (``where``: "--" or "model.")."""

    def build(self, value, options: LoadOptions) -> LoadedModel:
        train, given = value if isinstance(value, tuple) else (value, {})
        settings = self.settings(given)
        patterns = torch.as_tensor(train).to(device=options.device, dtype=options.exact_dtype)
        if patterns.ndim < 2 or len(patterns) == 0:
            raise UserError(f"{self.flag}: need a non-empty training set (N, ...)")
        denoiser = self.denoiser(patterns, settings)
        source = ModelSource(self.name, None, lambda: settings_sha256(train, settings))
        return LoadedModel(denoiser, parse_schedule(options.schedule),
                           tuple(patterns.shape[1:]), options.exact_dtype, source)

    def denoiser(self, patterns: torch.Tensor, settings: dict) -> Denoiser:
        raise NotImplementedError

    def model_settings(self, model) -> dict:
        return {p.name: getattr(model, p.name) for p in self.parameters}

    def sweep_model(self, model, state, train, device) -> LoadedModel:
        """S_K's denoiser in float32, as the exact denoiser's (the stored samples' bits)."""
        value = (train, self.model_settings(model))
        return self.load(value, LoadOptions(schedule=model.schedule, device=device))

    def schedule_family(self, model) -> str:
        return model.schedule

    def trajectory(self, model, K, training, file_key) -> dict:
        """Its parameters: the model fields no other source keys (``keyed_by_sources``)."""
        return self.model_settings(model)

    def untrained(self, model, K: int) -> str:
        return self.title

    def check_model(self, model) -> None:
        self.settings(self.model_settings(model), "model.")


def settings_sha256(train, settings: dict) -> str:
    """The training set's content with the settings a denoiser was built with."""
    h = hashlib.sha256(array_sha256(train).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class SmoothedSource(AnalyticSource):
    name, flag, sweep_kind = "smoothed", "--smoothed", "smoothed"
    help = ("Use the smoothed closed-form denoiser of this training set (Scarvelis et al. "
            "2023; --smoothing, --draws).")
    title = "the smoothed closed-form denoiser"
    parameters = (
        SourceParameter("smoothing", float, 0.1, "Smoothing s of --smoothed: D(x, σ) = "
                        "E[D_K(x + s(1 + σ)ε, σ)] (0: the exact denoiser) [0.1]."),
        SourceParameter("draws", int, SMOOTHING_DRAWS, "Antithetic pairs of fixed draws ε in "
                        "--smoothed's Monte-Carlo mean: few make D piecewise constant in x, "
                        f"many approach the expectation [{SMOOTHING_DRAWS}]."))
    model_fields = ("schedule", "smoothing", "draws")
    no_network = "the smoothed closed-form denoiser is not a network"

    def check_settings(self, settings, where) -> None:
        if not settings["smoothing"] >= 0:
            raise UserError(f"{where}smoothing: {settings['smoothing']!r} must be at least 0")
        if settings["smoothing"] == math.inf:  # every output NaN
            raise UserError(f"{where}smoothing: must be finite, got {settings['smoothing']!r}")
        if settings["draws"] < 1:
            raise UserError(f"{where}draws: must be at least 1, got {settings['draws']}")

    def denoiser(self, patterns, settings) -> Denoiser:
        return SmoothedDenoiser(patterns, settings["smoothing"], draws=settings["draws"])


class ELSSource(AnalyticSource):
    name, flag, sweep_kind = "els", "--els", "els"
    help = ("Use the equivariant local score machine of this training set (Kamb & Ganguli "
            "2024; --patch, --equivariant).")
    title = "the equivariant local score machine"
    parameters = (
        SourceParameter("patch", int, 3, "Patch size P of --els, odd (2·max(H, W) − 1: the "
                        "whole image) [3]."),
        SourceParameter("equivariant", bool, True, "--els over the patches at all positions "
                        "(translation equivariance), or at each pixel's own [on]."))
    model_fields = ("schedule", "patch", "equivariant")
    no_network = "the ELS machine is not a network"

    def check_settings(self, settings, where) -> None:
        patch = settings["patch"]
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch % 2 == 0:
            raise UserError(f"{where}patch: {patch!r} must be an odd whole number of pixels")

    def denoiser(self, patterns, settings) -> Denoiser:
        return ELSDenoiser(patterns, settings["patch"], settings["equivariant"])

    def check_data(self, model, shape) -> None:
        try:
            check_els(tuple(shape), model.patch)
        except UserError as err:
            raise UserError(f"model.kind = els: {err}") from None


class GaussianSource(AnalyticSource):
    name, flag, sweep_kind = "gaussian", "--gaussian", "gaussian"
    help = "Use the optimal linear (Gaussian) denoiser of this training set."
    title = "the optimal linear denoiser"
    model_fields = ("schedule",)
    no_network = "the optimal linear denoiser is not a network"

    def denoiser(self, patterns, settings) -> Denoiser:
        return LinearDenoiser(patterns)

