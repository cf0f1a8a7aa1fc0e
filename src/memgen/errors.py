"""The one exception type for problems with a user's input.

memgen raises :class:`UserError` (a ``ValueError``, so library callers may catch
either) for anything the user can fix: a missing file, a value out of range, an
impossible combination of options. The command line prints it as one line and exits
with status 1. Every other exception is a bug in memgen: the command line says so,
exits with status 70 and shows the traceback with ``--debug`` or ``MEMGEN_DEBUG=1``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the input or the options, explained in the message's first line."""
