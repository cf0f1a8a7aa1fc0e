"""Floor 9 — the ``memgen`` command line: flags → configs → library calls.

``main`` holds the command group, its error handling and the lazily loaded command
modules (one per family: measurements, models, probes, diagnose, experiments), so that
``memgen --help`` starts without importing torch.

May import: every floor below.
"""

from memgen.cli.main import cli, main

__all__ = ["cli", "main"]
