"""Options and error handling shared by every ``memgen`` command."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

import click

from memgen.errors import UserError

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

SEED = click.IntRange(min=0)  # every random generator memgen seeds takes a non-negative seed

class RegistryChoice(click.Choice):
    """A click.Choice of a registry's names, read at each use: a name registered after the
    command was built (a plugin, a test) is offered too."""

    def __init__(self, registry: dict, case_sensitive: bool = True):
        self.registry = registry
        super().__init__(tuple(registry), case_sensitive)

    @property
    def choices(self) -> tuple:
        return tuple(self.registry)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it; the registry rules
        pass


class InputRange(click.ParamType):
    """--input-range [SET=]LO,HI: the range a sample file's values are in, converted to
    [-1, 1] (``memgen.io``'s input contract); SET names one of the command's sets."""

    name = "range"

    def __init__(self, sets: tuple[str, ...] = ()):
        self.sets = sets

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        which, _, text = value.rpartition("=") if "=" in value else ("", "", value)
        if which and which not in self.sets:
            known = ", ".join(self.sets) if self.sets else "none here: give LO,HI"
            raise UserError(f"--input-range {value}: no set {which!r} (sets: {known})")
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise UserError(f"--input-range {value}: give LO,HI, e.g. 0,1 or 0,255"
                            + (f" (or SET=LO,HI, SET one of {', '.join(self.sets)})"
                               if self.sets else "")) from None
        if not lo < hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
            raise UserError(f"--input-range {value}: give finite LO < HI")
        return which or None, (lo, hi)


def input_range_option(sets: tuple[str, ...] = ()):
    """--input-range LO,HI (and SET=LO,HI where a command reads several sets): converts the
    sample files from [LO, HI] to [-1, 1]; read by :func:`input_ranges`."""
    where = (f" SET=LO,HI: that set only ({', '.join(sets)}); LO,HI: every set; repeatable."
             if sets else "")
    return click.option(
        "--input-range", "input_range", type=InputRange(sets), multiple=True,
        help="The sample file's values lie in LO,HI (e.g. 0,1 or 0,255): converted to "
             "[-1, 1]. Without it images must be floats in [-1, 1] or uint8; -1,1 takes a "
             "set that looks like [0, 1] as it is." + where)


def input_ranges(given, sets: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """set name → (LO, HI) from the --input-range values: LO,HI for every set of ``sets``
    (those given), SET=LO,HI for one of them (over LO,HI); each at most once."""
    given = list(given or ())
    plain = [bounds for which, bounds in given if which is None]
    named = [which for which, _ in given if which is not None]
    if len(plain) > 1:
        raise UserError("--input-range LO,HI given twice: give it once (SET=LO,HI for one set)")
    if len(named) != len(set(named)):
        twice = next(which for which in named if named.count(which) > 1)
        raise UserError(f"--input-range {twice}=LO,HI given twice")
    absent = [which for which in named if which not in sets]
    if absent:
        raise UserError(f"--input-range {absent[0]}=: no --{absent[0]} given")
    ranges = {name: plain[0] for name in sets} if plain else {}
    ranges.update((which, bounds) for which, bounds in given if which is not None)
    return ranges


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace --out: a file (commands that write one), or a folder that another memgen "
         "command wrote (never a folder of files memgen did not write).")


class OptionSlot:
    """Stands among a command's params (``LiveCommand``) for options built from a registry
    at each use, so that an entry registered after the command was built (a plug-in, a
    test's dummy) has its option too. ``build()`` gives them, cached while ``key()`` (the
    registry's entries) is unchanged; ``collect(params)`` turns their values into the
    callback's arguments."""

    def __init__(self, build: Callable[[], list], key: Callable[[], tuple],
                 collect: Callable[[dict], dict] = lambda params: params):
        self.build, self.key, self.collect = build, key, collect
        self._cached: tuple | None = None

    def options(self) -> list[click.Option]:
        key = self.key()
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.build())
        return self._cached[1]

    def __call__(self, fn):
        """As a decorator: put the slot where a click.option would put its option."""
        fn.__dict__.setdefault("__click_params__", []).append(self)
        return fn


class LiveCommand(click.Command):
    """A click.Command whose params may be given ``OptionSlot``s: its ``params`` holds, at
    each use (parsing, --help, anything reading them), the options each slot's registry
    gives now, in the slot's place."""

    @property
    def params(self) -> list[click.Parameter]:
        """The same list while the registries are unchanged (click appends its help option
        to it and pops it again)."""
        key = tuple(slot.key() for slot in self._slots())
        if self._expanded is None or self._expanded[0] != key:
            expanded = [option for param in self._declared for option in (
                param.options() if isinstance(param, OptionSlot) else [param])]
            self._expanded = (key, expanded)
        return self._expanded[1]

    @params.setter
    def params(self, value) -> None:
        self._declared, self._expanded = list(value), None

    def _slots(self) -> list[OptionSlot]:
        return [param for param in self._declared if isinstance(param, OptionSlot)]

    def invoke(self, ctx: click.Context):
        for slot in self._slots():
            ctx.params = slot.collect(ctx.params)
        return super().invoke(ctx)


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """--debug on the main group, or MEMGEN_DEBUG=1 in the environment."""
    root = ctx.find_root() if ctx is not None else None
    flag = bool(root is not None and root.params.get("debug"))
    return flag or os.environ.get("MEMGEN_DEBUG", "") not in ("", "0")


def _root_flag(name: str, ctx: click.Context | None) -> bool:
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get(name))


def quiet_enabled(ctx: click.Context | None = None) -> bool:
    """--quiet on the main group: no progress bars or other chatter, results only."""
    return _root_flag("quiet", ctx)


def verbose_enabled(ctx: click.Context | None = None) -> bool:
    """--verbose on the main group: detail (inputs, timings, cached stages) on stderr."""
    return _root_flag("verbose", ctx)


def show_progress(ctx: click.Context | None = None) -> bool:
    """Whether a command draws progress bars (always on stderr): unless --quiet."""
    return not quiet_enabled(ctx)


def echo_verbose(message: str, ctx: click.Context | None = None) -> None:
    """A line of detail on stderr, with --verbose only (stdout keeps the results)."""
    if verbose_enabled(ctx):
        click.echo(message, err=True)


ARGV_KEY = "memgen.argv"  # click context meta: the command line as the main group got it


def command_argv(ctx: click.Context | None = None) -> list[str]:
    """The command line as run (``memgen classify --train ...``), as the main group
    received it; ``sys.argv`` outside it."""
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)
    argv = ctx.meta.get(ARGV_KEY) if ctx is not None else None
    return list(argv) if argv else list(sys.argv)


def run_guarded(ctx: click.Context, invoke):
    """Run a command: user errors as one line (exit 1), Ctrl-C as exit 130, any other
    exception as a bug report line (exit 70); tracebacks with --debug."""
    try:
        return invoke(ctx)
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except KeyboardInterrupt:
        if debug_enabled(ctx):
            traceback.print_exc()
        click.echo("memgen: interrupted; nothing half-written was kept (sweep, train, "
                   "generate and --state keep their finished parts: rerun to resume)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (UserError, OSError) as err:
        if debug_enabled(ctx):
            traceback.print_exc()
        click.echo(f"Error: {_first_line(err)}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:  # noqa: BLE001 - every other exception is a bug, said as such
        if debug_enabled(ctx):
            traceback.print_exc()
        click.echo(f"memgen: internal error ({type(err).__name__}: {_first_line(err)}). "
                   "This is a bug in memgen, not a problem with your input; rerun with "
                   "--debug (or MEMGEN_DEBUG=1) for the traceback and report it.", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


def _first_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
