"""Floor 5 — diffusion models: the denoiser D(x, σ) and everything that makes or runs one.

Noise schedules (VP and VE, owning add_noise and σ ↔ t), the parameterizations that
turn a network's output into a denoiser (ε-prediction, σ·score), denoisers (the exact
empirical one built on ``memgen.memory``, trained checkpoints, TorchScript, diffusers),
samplers (DDPM, DDIM, Euler–Maruyama, Heun), training, generation of sample sets, the
loaders that build a denoiser from any source, and the networks (``nets``).

May import: floors 0–4 and this package.
"""
