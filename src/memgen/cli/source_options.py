"""The model-source options of ``memgen generate`` and ``memgen diagnose``: one per source
of ``memgen.diffusion.sources.SOURCES``, read from the registry at each use, so that a
source registered there alone has its flag on both."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import click

from memgen.cli.options import OptionSlot
from memgen.diffusion.sources import SOURCES, Source, flags, parameter_specs
from memgen.errors import UserError


@dataclass(frozen=True)
class ModelFlags:
    """The model-source options of a command as given (``model_source_options``): paths,
    {source name: path} of each source flag given, in the order of ``SOURCES``; config, the
    --config of a source that reads one (``Source.config_help``); offered, the names of the
    sources the command offers."""

    paths: dict[str, str]
    config: str | None
    offered: tuple[str, ...]
    parameters: dict = field(default_factory=dict)  # {name: value} of --smoothing, … given

    def one(self, parameters_elsewhere: bool = False) -> tuple[Source, str]:
        """(the source, its path): UserError unless exactly one source flag was given, or
        a source's number (--smoothing, …) was given that this source does not read
        (unless ``parameters_elsewhere``: the command builds other sources with them)."""
        if len(self.paths) != 1:
            raise UserError(f"give exactly one of {self.offered_flags()}")
        (name, path), = self.paths.items()
        source = SOURCES[name]
        for key in () if parameters_elsewhere else self.parameters:
            _, readers = parameter_specs()[key]
            if source not in readers:
                raise UserError(f"--{key} is for {', '.join(s.flag for s in readers)}; "
                                f"{source.flag} does not read it")
        return source, path

    def offered_flags(self, sep: str = ", ") -> str:
        return flags(lambda source: source.name in self.offered, sep)

    def path(self, name: str) -> str | None:
        """The path given to source ``name``'s flag, or None."""
        return self.paths.get(name)

    def training_set(self) -> str | None:
        """The path given to a source whose flag names a training set (--exact), or None."""
        return next((path for name, path in self.paths.items()
                     if SOURCES[name].training_set), None)


SOURCE_PARAM = "source_"  # the click name of a source's option: source_<name>
PARAMETER_PARAM = "source_parameter_"  # and of a source's number: source_parameter_<name>
CONFIG_PARAM = "source_config"


def model_source_options(shape_help: str, schedule_help: str,
                         where: Callable[[Source], bool] = lambda source: True,
                         helps: Mapping[str, str] | None = None) -> OptionSlot:
    """One --FLAG PATH per model source of ``memgen.diffusion.sources.SOURCES`` that
    ``where`` holds for (``Source.flag``, a folder or a file, ``Source.help`` unless
    ``helps`` has the source's name), --shape and --schedule after the sources that read
    no config, then each that does with its --config: read from the registry at each use
    (the command's class is a ``LiveCommand``). The command gets them as ``model``, a
    ``ModelFlags``, with ``shape`` and ``schedule``."""
    helps = dict(helps or {})

    def offered() -> list[Source]:
        return [source for source in SOURCES.values() if where(source)]

    def build() -> list[click.Option]:
        plain = [_source_option(s, helps) for s in offered() if not s.config_help]
        configured = [option for s in offered() if s.config_help for option in (
            _source_option(s, helps),
            click.Option(["--config", CONFIG_PARAM], type=click.Path(dir_okay=False),
                         help=s.config_help))]
        return [*plain, *_parameter_options(offered()),
                click.Option(["--shape"], type=int, nargs=3, help=shape_help),
                click.Option(["--schedule"], type=click.Choice(["vp", "ve"]), default="vp",
                             show_default=True, help=schedule_help),
                *configured]

    def collect(params: dict) -> dict:
        names = tuple(source.name for source in offered())
        paths = {name: params.pop(SOURCE_PARAM + name, None) for name in names}
        config = params.pop(CONFIG_PARAM, None)
        given = {name: path for name, path in paths.items() if path}
        values = {key: params.pop(PARAMETER_PARAM + key, None) for key in parameter_specs()}
        chosen = {key: value for key, value in values.items() if value is not None}
        return {**params, "model": ModelFlags(given, config, names, chosen)}

    return OptionSlot(build, lambda: tuple((n, id(s)) for n, s in SOURCES.items()), collect)


def _source_option(source: Source, helps: Mapping[str, str]) -> click.Option:
    kind = click.Path(file_okay=False) if source.folder else click.Path(dir_okay=False)
    return click.Option([source.flag, SOURCE_PARAM + source.name], type=kind,
                        help=helps.get(source.name, source.help))


def _parameter_options(offered: list[Source]) -> list[click.Option]:
    """--NAME for every number an offered source is built with (``SourceParameter``: a
    bool as --NAME/--no-NAME); None unless given, so the source's default applies."""
    options = []
    for key, (parameter, readers) in parameter_specs().items():
        if not any(source in readers for source in offered):
            continue
        if parameter.kind is bool:
            decls = [f"--{key}/--no-{key}", PARAMETER_PARAM + key]
            options.append(click.Option(decls, default=None, help=parameter.help))
        else:
            options.append(click.Option([f"--{key}", PARAMETER_PARAM + key], type=parameter.kind,
                                        default=None, help=parameter.help))
    return options
