"""Floor 4 — probes: what is measured on a model's dynamics.

Recovery from noise and the critical noise level σ* (basin size), the relative energy of
two points along a path, the curvature (Hessian spectrum) of E_σ, the PF-ODE
log-likelihood and the learned attractors, and a model's denoiser error against the
exact one by noise level.

May import: floors 0–3 and this package.
"""
