"""One step of the training loop (``memgen.diffusion.training.train``), without overhead.

The step is the network's forward, backward and Adam step, plus what the objective adds:
gradient clipping and the EMA of the weights. Everything else costs as little as it can
and never waits for the device: the parameter lists are gathered once (``StepTensors``),
Adam is fused where torch has the kernel (``adam``), clipping and the EMA are foreach ops
(``clip_grad_norm``, ``ema_step``), gradients are dropped without ``zero_grad``'s
bookkeeping, and ``TrainConfig.compile`` runs the loss through torch.compile, eagerly with
one warning where that fails (``TrainStep.backward``). The numbers are the plain loop's
(fused Adam aside, which rounds differently from the for-loop).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn


def adam(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters: CPU and CUDA since torch 2.4) or, where
    torch has no fused kernel for them, foreach (the for-loop's numbers exactly).

    Fused Adam rounds differently from the for-loop (≈1e-8 on the toy MLP); a checkpoint
    keeps its optimiser's settings, so a run resumes with the kernel it was started with.
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.Adam(params, lr=lr, foreach=True)


def ema_decay(decay: float, step: int, warmup: bool = True) -> float:
    """The EMA decay d at step ``step``: min(decay, (1 + step)/(10 + step)), or decay."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@dataclass(frozen=True)
class StepTensors:
    """The parameters and buffers of a model and of its EMA copy, listed once (walking the
    modules costs as much as the EMA update itself on the toy MLP: ~10 µs a walk)."""

    params: list[nn.Parameter]
    ema: list[nn.Parameter]
    buffers: list[torch.Tensor]
    ema_buffers: list[torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module, ema: nn.Module) -> "StepTensors":
        model = _unwrap(model)
        return cls(list(model.parameters()), list(ema.parameters()), list(model.buffers()),
                   list(ema.buffers()))

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]


@torch.no_grad()
def ema_step(tensors: StepTensors, d: float) -> None:
    """ema ← d·ema + (1 − d)·θ, one foreach lerp; buffers copied (``training.update_ema``)."""
    torch._foreach_lerp_(tensors.ema, tensors.params, 1 - d)
    for e, b in zip(tensors.ema_buffers, tensors.buffers):
        e.copy_(b)


@torch.no_grad()
def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> None:
    """g ← g · min(max_norm/(‖g‖ + 1e-6), 1) with ‖g‖ the norm of all of ``grads`` together:
    ``nn.utils.clip_grad_norm_(foreach=True)``'s ops, for gradients on one device in one
    dtype, without its per-call grouping (half its cost on the toy MLP). No host sync."""
    if grads:
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class TrainStep:
    """One step of ``training.train``'s loop: the loss (bfloat16 autocast under ``amp`` on
    CUDA, through torch.compile under ``compile``), backward, clipping, Adam, then the EMA.
    It never waits for the device. config: a ``training.TrainConfig``; state: a
    ``training.TrainState``; model: state.model or its DDP wrapper."""

    def __init__(self, config, state, model: nn.Module, device: torch.device):
        self.config, self.state, self.model = config, state, model
        self.tensors = StepTensors.of(model, state.ema)
        self.amp = config.amp and device.type == "cuda"
        # the bound loss keeps its parameterization, and with it the ᾱ table on the device
        self.eager = config.parameterization().loss
        self.loss = _compiled(self.eager, config.compile)

    def __call__(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Take the step on one batch (``training.draw_batch``); returns the loss, detached."""
        loss = self.backward(x0, t, noise)
        clip_grad_norm(self.tensors.grads(), self.config.grad_clip)
        self.state.optimizer.step()
        c = self.config
        ema_step(self.tensors, ema_decay(c.ema_decay, self.state.step, c.ema_warmup))
        self.state.step += 1
        return loss.detach()

    def backward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The loss, its gradients put in the parameters' .grad. Where the compiled loss
        fails (compiling its forward, or its backward at the first backward pass), one
        warning, and the step is redone eagerly, as are all that follow."""
        try:
            loss = self.forward(x0, t, noise)
            for p in self.tensors.params:  # zero_grad(set_to_none=True), without overhead
                p.grad = None
            loss.backward()
        except Exception as err:  # noqa: BLE001 — any compile error: run eagerly
            if self.loss is self.eager:
                raise
            _warn_eager(err)
            self.loss = self.eager
            return self.backward(x0, t, noise)
        return loss

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The objective's mean loss on the batch (``training.training_loss``), with its graph."""
        if self.config.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graphs are done
        if not self.amp:
            return self.loss(self.model, x0, t, noise)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.loss(self.model, x0, t, noise)


def _compiled(fn, mode: str):
    """fn through ``torch.compile(fn, mode=mode)``, or fn itself for mode "none" or where
    torch.compile is unavailable (one warning). torch.compile compiles at the first call:
    ``TrainStep.backward`` falls back to fn where that fails (e.g. no C++ compiler for
    the CPU backend, an unsupported op)."""
    if mode == "none":
        return fn
    try:
        return torch.compile(fn, mode=mode)
    except Exception as err:  # noqa: BLE001 — torch.compile unsupported here
        _warn_eager(err)
        return fn


def _warn_eager(err: Exception) -> None:
    first = (str(err).strip().splitlines() or [""])[0][:200]
    warnings.warn(f"torch.compile failed ({type(err).__name__}: {first}); training runs "
                  "eagerly", RuntimeWarning, stacklevel=3)
