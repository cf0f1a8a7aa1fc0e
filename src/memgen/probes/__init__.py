"""Floor 6 — probes: what is measured on a model's dynamics.

``recovery`` recovery from noise and the critical noise level σ* (basin size);
``relative_energy`` the relative energy of two points along a path; ``curvature`` the
Hessian spectrum of E_σ; ``likelihood`` the PF-ODE log-likelihood and the learned
attractors; ``diagnose`` a model's denoiser error against the exact one by noise level;
``starts`` the starting points of retrieval; ``checks`` their shared input checks.

May import: floors 0–5 and this package.
"""
