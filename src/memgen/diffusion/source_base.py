"""What every model source is (``memgen.diffusion.sources`` registers them): the ``Source``
base class, what a source loads (``LoadedModel``) and how (``LoadOptions``), and the
schedules by name. Apart from the registry so that the sources may live in several
modules (``memgen.diffusion.analytic_sources``) without an import cycle; the registry
module re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from memgen.diffusion.denoisers import Denoiser
from memgen.diffusion.identity import ModelSource
from memgen.diffusion.schedules import VESchedule, VPSchedule
from memgen.diffusion.training import snapshot_path
from memgen.errors import UserError

SCHEDULES = {"vp": VPSchedule, "ve": VESchedule}


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser with what its callers need to run it."""

    denoiser: Denoiser
    schedule: VPSchedule | VESchedule | None  # None: the exact denoiser without a schedule
    shape: tuple[int, ...]  # one sample: (D,) or (C, H, W)
    dtype: torch.dtype  # what it computes in: float32 for networks, exact_dtype otherwise
    source: ModelSource | None = None  # what it was loaded from, and its content hash


@dataclass(frozen=True)
class LoadOptions:
    """How to load a source (``load_denoiser``'s keywords besides the source)."""

    schedule: VPSchedule | VESchedule | str | None = None
    shape: tuple[int, ...] | None = None
    device: str | torch.device = "cpu"
    exact_dtype: torch.dtype = torch.float32
    clip: bool = False
    ema: bool = True


class Source:
    """One kind of model source. ``model`` below is a sweep's model section
    (``memgen.experiments.config.ModelConfig``: kind, path, reference_config, preset, net,
    objective, schedule)."""

    name: ClassVar[str]  # load_denoiser's keyword, the ModelSource kind
    flag: ClassVar[str]  # memgen generate's option
    sweep_kind: ClassVar[str | None] = None  # model.kind in a sweep (None: not in sweeps)
    trains: ClassVar[bool] = False  # the sweep trains its network (a train stage)
    records_shape: ClassVar[bool] = True  # False: the caller gives the sample shape
    model_fields: ClassVar[tuple[str, ...]] = ()  # the model fields it reads, besides kind
    no_network: ClassVar[str] = ""  # why model.preset, net, objective have no effect
    split: ClassVar[str] = "memgen"  # data.split unless given (memgen.data.splits)
    exports_reference: ClassVar[bool] = False  # sample.export_reference unless given
    analysable: ClassVar[bool] = True  # the sweep's analyses and train.snapshots apply
    schedule_option: ClassVar[bool] = False  # the CLI's --schedule is this source's
    folder: ClassVar[bool] = False  # its flag names a folder (else a file)
    help: ClassVar[str] = ""  # the --help line of its flag
    config_help: ClassVar[str] = ""  # the --help line of --config, where it reads a YAML
    diagnosable: ClassVar[bool] = True  # memgen diagnose offers it
    training_set: ClassVar[bool] = False  # its flag names a training set (a sample file)

    def load(self, value, options: LoadOptions) -> LoadedModel:
        """The denoiser of ``value`` (a path, an array, …: what ``load_denoiser`` got)."""
        if options.shape is not None and self.records_shape:
            raise UserError(f"shape is for TorchScript and diffusers models; a {self.name} "
                            "source has its own")
        return self.build(value, options)

    def build(self, value, options: LoadOptions) -> LoadedModel:
        raise NotImplementedError

    def option_value(self, path, *, config=None, input_range=None):
        """What ``load`` takes, from the path given to the CLI's ``flag`` (``config``: the
        YAML of --config; ``input_range``: (LO, HI) of a sample file's values; a source
        with ``parameters`` also takes ``parameters``, {name: value} of their flags given)."""
        return path

    # ------------------------------------------------------------------ in a sweep
    def sweep_model(self, model, state: Path | None, train: np.ndarray,
                    device) -> LoadedModel:
        """The model a sweep samples: the saved ``state`` of this K, or built from S_K."""
        raise NotImplementedError

    def schedule_family(self, model) -> str:
        """"ve" or "vp": the noise schedule of the sweep's model."""
        return "vp"

    def default_sampler(self, model) -> str:
        """The sampler when sample.sampler is unset: the schedule family's default."""
        family = VESchedule if self.schedule_family(model) == "ve" else VPSchedule
        return family.default_sampler

    def trajectory(self, model, K: int, training: dict,
                   file_key: Callable[[Path], str]) -> dict | None:
        """The train key's part beyond the model section and S_K: what decides the states
        (``training``: the train settings that decide a trajectory; ``file_key``: a file's
        content hash in the keys)."""
        return None

    def state_file(self, model, K: int, train_folder: Path | None,
                   steps: int | None) -> Path | None:
        """The state a K is sampled from: the snapshot after ``steps`` steps of its
        training, or None (built from S_K)."""
        return None if train_folder is None else snapshot_path(train_folder, steps)

    def untrained(self, model, K: int) -> str:
        """What a K uses instead of training, for --dry-run."""
        return f"the {self.name} model"

    def check_model(self, model) -> None:
        """UserError for a model section this source cannot run (before any work)."""

    def check_split(self, split: str) -> None:
        """UserError for a data.split this source cannot be measured on."""

    def check_files(self, model, Ks) -> None:
        """UserError for missing files (where the sweep runs, not when a config is read)."""

    def check_data(self, model, shape: tuple[int, ...]) -> None:
        """UserError for samples of ``shape`` this source cannot model (before any work)."""


def parse_schedule(schedule):
    """A schedule from its name ("vp", "ve"); a schedule or None as given."""
    if schedule is None or isinstance(schedule, (VPSchedule, VESchedule)):
        return schedule
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]()


