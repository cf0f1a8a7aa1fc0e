"""The ``memgen`` command group: list options, error handling, lazily loaded commands.

Each command lives in the module of its family (``measure``, ``aggregate``,
``experiments``, ``models``, ``probes``, ``diagnose``) and is imported only when it runs or
its help is shown, so that ``memgen --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from memgen._version import __version__
from memgen.cli.options import ARGV_KEY, run_guarded
from memgen.io import output_locks
from memgen.provenance import describe, gather

LIST_OPTIONS = ("--K", "--sigma", "--radius-fraction")  # take several numbers: --K 2 9 1000


def expand_lists(args: list[str]) -> list[str]:
    """Rewrite ``--K 2 9 1000`` as ``--K 2 --K 9 --K 1000`` (click repeats options)."""
    out, current = [], None
    for token in args:
        if token in LIST_OPTIONS:
            current = token
            out.append(token)
            continue
        if current is not None and _is_number(token) and out[-1] != current:
            out.append(current)
        elif not _is_number(token):
            current = None
        out.append(token)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


GLOBAL_FLAGS = ("--debug", "--quiet", "-q", "--verbose", "-v")  # the group's own options


def hoist_global_flags(group: click.Group, ctx, args: list[str]) -> list[str]:
    """Move the group's flags given after the subcommand (``memgen classify ... -q``) before
    it, where click reads them. A token is a flag only where it is not an option's value
    (``--name -q``: the name "-q") and not after ``--``; a subcommand that defines the
    same flag keeps it."""
    hoisted, rest, command, takes = [], [], group, 0
    for i, token in enumerate(args):
        if takes:
            takes -= 1
        elif token == "--":
            rest.extend(args[i:])
            break
        elif isinstance(command, click.Group) and not token.startswith("-"):
            command = command.get_command(ctx, token) or command
        elif token in GLOBAL_FLAGS and command is not group and token not in _names(command):
            hoisted.append(token)
            continue
        elif "=" not in token:
            takes = _values_taken(command, token)
        rest.append(token)
    return hoisted + rest


def _names(command: click.Command) -> set[str]:
    return {name for p in command.params for name in (*p.opts, *p.secondary_opts)}


def _values_taken(command: click.Command, token: str) -> int:
    """How many of the next tokens option ``token`` of ``command`` takes as its value."""
    for param in command.params:
        if isinstance(param, click.Option) and token in param.opts:
            return 0 if param.is_flag or param.count else param.nargs
    return 0


# command name → ("module:attribute" of the click command or group, its line in --help)
COMMANDS = {
    "classify": ("memgen.cli.measure:classify",
                 "Label evaluated samples memorized, spurious or generalized (eqs. 4-6)."),
    "rescore": ("memgen.cli.rescore:rescore",
                "Both protocols' fractions per K from the authors' released files."),
    "capacities": ("memgen.cli.measure:capacities",
                   "MC, SC and GC (eqs. 1-3) of a fractions.csv."),
    "aggregate": ("memgen.cli.aggregate:aggregate",
                  "Collect classify folders, one per K, into a fractions.csv."),
    "plot": ("memgen.cli.measure:plot", "Figures: fractions vs K, phase maps, neighbour grids."),
    "sweep": ("memgen.cli.experiments:sweep",
              "Fractions against the training-set size K (paper Fig. 2), cached and resumable."),
    "phase": ("memgen.cli.experiments:phase",
              "Attractors of the exact energy against the load K and noise level σ."),
    "landscape": ("memgen.cli.experiments:landscape",
                  "2D energy landscapes with their attractors (exact and learned)."),
    "demo": ("memgen.cli.experiments:demo",
             "Classify planted copies, blends and novel images of real Fashion-MNIST."),
    "train": ("memgen.cli.models:train", "Train a diffusion model (resumable; DDP)."),
    "generate": ("memgen.cli.models:generate",
                 "Sample a set from a model as resumable npz shards."),
    "hygiene": ("memgen.cli.probes:hygiene",
                "Training-set checks: near-duplicates, disjoint halves."),
    "basins": ("memgen.cli.probes:basins",
               "Basin size (critical σ*), relative energy and curvature at samples."),
    "census": ("memgen.cli.census:census",
               "Attractor census: endpoints of deterministic sampling, clustered at radii."),
    "diagnose": ("memgen.cli.diagnose:diagnose",
                 "A model's denoiser against the exact one, by noise level."),
    "r2": ("memgen.cli.r2:r2",
           "r² of a model's denoiser against the exact, smoothed, ELS and Gaussian ones."),
}


class _Group(click.Group):
    """Accepts list options and the global flags after the subcommand, loads each
    command's module when it is needed (click's lazy group pattern), holds the output
    folders' locks while a command runs, and handles errors as
    :func:`memgen.cli.options.run_guarded` says."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx, formatter):
        """The command list of --help from the registry: no command module is imported."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, help) for name, (_, help) in sorted(COMMANDS.items())])

    def parse_args(self, ctx, args):
        ctx.meta[ARGV_KEY] = ["memgen", *args]  # the command line as run, for provenance
        return super().parse_args(ctx, hoist_global_flags(self, ctx, expand_lists(list(args))))

    def invoke(self, ctx):
        with output_locks():  # each output folder locked from its check to the command's end
            return run_guarded(ctx, super().invoke)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="memgen")
@click.option("--debug", is_flag=True,
              help="Show the traceback of any error (also MEMGEN_DEBUG=1).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars or other chatter on stderr: results and warnings only.")
@click.option("--verbose", "-v", is_flag=True,
              help="Detail on stderr: versions and git commit, inputs with their hashes, "
                   "timings, which sweep stages ran and which were cached.")
def cli(debug, quiet, verbose):
    """memgen: which generated samples are copies of training data (memorized), which are
    new but recurring attractors (spurious), and which are genuinely new (generalized)
    — Pham et al., "Memorization to Generalization", arXiv 2505.21777.

    A problem with the input is one line on stderr and exit status 1; an internal error
    exits 70; Ctrl-C exits 130. No command leaves a half-written output behind; the
    resumable ones (sweep, train, generate, classify --state) keep their finished parts.
    Results go to stdout; progress bars, warnings and --verbose detail to stderr."""
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    if verbose:
        click.echo(describe(gather()), err=True)


def main(argv=None):
    """Entry point of the ``memgen`` console script."""
    cli.main(args=argv, prog_name="memgen")


if __name__ == "__main__":
    sys.exit(main())
