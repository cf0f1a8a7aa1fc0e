"""--device: a torch device this machine has, checked while the options are read.

Its own module, imported by the commands that run models (they import torch anyway), so
that ``memgen.cli.options`` — which ``memgen --help`` imports — stays free of torch.
"""

from __future__ import annotations

import click
import torch

from memgen.errors import UserError


class Device(click.ParamType):
    """A torch device this machine has: "cpu", "cuda", "cuda:1", "mps". An unknown name or
    a device that is not here is a user error (one line, exit 1) while the options are read,
    before any work."""

    name = "device"

    def convert(self, value, param, ctx):
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            raise UserError(f"--device {value}: not a torch device (cpu, cuda, cuda:N, "
                            "mps)") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                built = "with" if torch.version.cuda else "without"
                raise UserError(f"--device {value}: this machine has no CUDA device (torch "
                                f"{torch.__version__}, built {built} CUDA)")
            if device.index is not None and device.index >= count:
                raise UserError(f"--device {value}: this machine has {count} CUDA device(s)")
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"--device {value}: no MPS device on this machine")
        elif device.type not in ("cpu", "cuda", "mps"):
            raise UserError(f"--device {value}: memgen runs on cpu, cuda or mps")
        return "cpu" if device.type == "cpu" else str(value)  # cpu:0 is the cpu


device_option = click.option("--device", type=Device(), default="cpu", show_default=True,
                             help="Torch device: cpu, cuda, cuda:N or mps.")
