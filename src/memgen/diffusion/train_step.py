"""One step of the training loop (``memgen.diffusion.training.train``), without overhead.

The step is the network's forward, backward and Adam step, plus what the objective adds:
gradient clipping and the EMA of the weights. Everything else costs as little as it can
and never waits for the device: the parameters, their gradients and the EMA's parameters
each live in one contiguous buffer (``FlatAdam``, ``flatten``), so that Adam, zeroing,
clipping and the EMA are one kernel each instead of one per tensor; Adam is fused where
torch has the kernel (``adam``); and ``TrainConfig.compile`` runs the loss through
torch.compile, eagerly with one warning where that fails (``TrainStep.backward``). The
numbers are the plain loop's with torch's fused Adam, to the bit where no step clips and
to the last bit of the gradient norm where one does (``clip_flat``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn


def adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters: CPU and CUDA since torch 2.4) or, where
    torch has no fused kernel for them, foreach (the for-loop's numbers exactly).

    Fused Adam rounds differently from the for-loop (≈1e-8 on the toy MLP); a checkpoint
    keeps its optimiser's settings, so a run resumes with the kernel it was started with.
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.Adam(params, lr=lr, foreach=True)


class FlatAdam:
    """``adam`` on one contiguous buffer that holds all of a model's parameters, each of
    them made a view of it (``flatten``), their gradients views of a second buffer: one
    kernel a step, where Adam over the tensors pays its per-tensor cost for each (toy MLP:
    38 µs against 83 µs), and zeroing and clipping are one kernel each too. The numbers
    are ``adam``'s on the parameters (the same elementwise arithmetic), and so is the
    state_dict: one entry per parameter, so checkpoints keep their format and old ones
    resume. Backward adds into the gradient buffer: ``zero_grad`` zeroes it, and a
    parameter whose .grad was replaced (``model.zero_grad()`` sets it to None) is an
    error at the next ``step``, never a silently lost gradient."""

    def __init__(self, params: list[nn.Parameter], lr: float):
        self.params = list(params)
        self.flat = nn.Parameter(flatten(self.params))
        self.flat.grad = torch.zeros_like(self.flat)
        self.grads = _views(self.flat.grad, self.params)
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.inner = adam([self.flat], lr)

    def zero_grad(self) -> None:
        self.flat.grad.zero_()

    def step(self) -> None:
        if not all(p.grad is g for p, g in zip(self.params, self.grads)):
            raise RuntimeError("a parameter's .grad is no longer a view of FlatAdam's buffer "
                               "(set to None or replaced); zero it with FlatAdam.zero_grad")
        self.inner.step()

    def state_dict(self) -> dict:
        """torch.optim.Adam's state_dict for the parameters, the moments views of ours."""
        inner = self.inner.state_dict()
        group = {**inner["param_groups"][0], "params": list(range(len(self.params)))}
        state = {}
        if 0 in inner["state"]:
            flat = inner["state"][0]
            moments = {k: _views(v, self.params) for k, v in flat.items() if k != "step"}
            state = {i: {"step": flat["step"].clone(), **{k: v[i] for k, v in moments.items()}}
                     for i in range(len(self.params))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, saved: dict) -> None:
        """Load torch.optim.Adam's state_dict for these parameters (one group, one step
        count for all, as every state that training writes)."""
        groups, state = saved["param_groups"], saved["state"]
        if len(groups) != 1 or groups[0]["params"] != list(range(len(self.params))):
            raise ValueError(f"the optimiser state is not one group of {len(self.params)} "
                             "parameters")
        flat = {}
        if state:
            if sorted(state) != list(range(len(self.params))):
                raise ValueError("the optimiser state does not cover every parameter")
            steps = {float(s["step"]) for s in state.values()}
            if len(steps) != 1:
                raise ValueError(f"the parameters' Adam step counts differ: {sorted(steps)}")
            flat = {k: torch.cat([state[i][k].reshape(-1) for i in range(len(self.params))])
                    for k in state[0] if k != "step"}
            flat["step"] = state[0]["step"].clone()  # never shared with the caller's
        self.inner.load_state_dict({"state": {0: flat} if flat else {},
                                    "param_groups": [{**groups[0], "params": [0]}]})


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One contiguous buffer holding ``tensors``' values, each tensor's data made a view
    of it (``.data`` reassigned: the tensor objects, and the references that modules,
    optimisers and DDP hold to them, stay the same). All of one dtype and device."""
    kinds = {(t.dtype, t.device) for t in tensors}
    if len(kinds) > 1:
        raise ValueError(f"cannot flatten tensors of several dtypes or devices: {kinds}")
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.empty(0)
    for t, view in zip(tensors, _views(flat, tensors)):
        t.data = view
    return flat


def _views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """flat split into views shaped as ``like``'s tensors, in order."""
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in like]), like)]


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


@torch.no_grad()
def ema_step(tensors: StepTensors, d: float) -> None:
    """ema ← d·ema + (1 − d)·θ, one foreach lerp; buffers copied (``training.update_ema``)."""
    torch._foreach_lerp_(tensors.ema, tensors.params, 1 - d)
    for e, b in zip(tensors.ema_buffers, tensors.buffers):
        e.copy_(b)


def clip_flat(grad: torch.Tensor, max_norm: float, host: bool | None = None) -> None:
    """g ← g · min(max_norm/(‖g‖ + 1e-6), 1), ``nn.utils.clip_grad_norm_``'s rule, for a
    buffer holding all of the gradients (``FlatAdam``): ‖g‖ is one reduction (accumulated
    in float64 on the CPU), so it may differ in its last bit from torch's norm of the
    per-tensor norms. host (default: g on the CPU, where nothing waits for it): the factor
    is read on the host, and the product skipped where it is 1 (g · 1 = g exactly);
    otherwise it stays on the device, with no sync. grad must not require grad (a .grad
    never does): no ``no_grad`` context, which costs as much as the norm on the toy MLP."""
    total = torch.linalg.vector_norm(grad)
    if not (grad.device.type == "cpu" if host is None else host):
        grad.mul_(clip_coefficient(total, max_norm))
    elif (factor := max_norm / (float(total) + 1e-6)) < 1.0:
        grad.mul_(factor)


def clip_coefficient(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(max_norm/(‖g‖ + 1e-6), 1) for ‖g‖ = total, a tensor (no host sync): the factor
    of clip_grad_norm_, in its operations."""
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class TrainStep:
    """One step of ``training.train``'s loop: the loss (bfloat16 autocast under ``amp`` on
    CUDA, through torch.compile under ``compile``), backward, clipping, Adam, then the EMA.
    It never waits for the device. config: a ``training.TrainConfig``; state: a
    ``training.TrainState`` whose optimiser is a ``FlatAdam``; model: state.model or its
    DDP wrapper. The EMA's parameters are flattened in place too: its update is one
    kernel."""

    def __init__(self, config, state, model: nn.Module, device: torch.device):
        if not isinstance(state.optimizer, FlatAdam):
            raise TypeError(f"TrainStep needs a FlatAdam, got {type(state.optimizer).__name__}")
        self.config, self.state, self.model = config, state, model
        self.optimizer = state.optimizer
        self.weights = state.optimizer.flat.detach()  # its buffer, outside autograd: the
        # EMA's lerp then needs no no_grad context (~10 µs a step on the toy MLP)
        self.tensors = StepTensors.of(model, state.ema)
        self.ema = flatten(self.tensors.ema)
        self.amp = config.amp and device.type == "cuda"
        # the bound loss keeps its parameterization, and with it the ᾱ table on the device
        self.eager = config.parameterization().loss
        self.loss = _compiled(self.eager, config.compile)

    def __call__(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Take the step on one batch (``training.draw_batch``); returns the loss, detached."""
        loss = self.backward(x0, t, noise)
        self.clip()
        self.optimizer.step()
        self.update_ema()
        return loss.detach()

    def backward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The loss, its gradients put in the parameters' .grad. Where the compiled loss
        fails (compiling its forward, or its backward at the first backward pass), one
        warning, and the step is redone eagerly, as are all that follow."""
        try:
            loss = self.forward(x0, t, noise)
            self.zero_grad()
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

    def zero_grad(self) -> None:
        """Zero the gradient buffer (backward adds into it, as into any existing .grad)."""
        self.optimizer.zero_grad()

    def clip(self) -> None:
        """``clip_flat`` on the gradient buffer at the config's grad_clip."""
        clip_flat(self.optimizer.flat.grad, self.config.grad_clip)

    def update_ema(self) -> None:
        """``ema_step`` at this step's decay, on the whole buffer; then count the step."""
        c = self.config
        self.ema.lerp_(self.weights, 1 - ema_decay(c.ema_decay, self.state.step, c.ema_warmup))
        for e, b in zip(self.tensors.ema_buffers, self.tensors.buffers):
            e.copy_(b)
        self.state.step += 1


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
