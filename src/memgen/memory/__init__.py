"""Floor 4 — associative memory: the math of stored patterns.

Energies (Dense Associative Memory, the empirical energy −log p_σ of a training set, the
Gaussian kernel, the unit-circle continuum) with their scores and Hessians, the exact
posterior weights over the stored patterns, and retrieval: fixed-point and gradient
dynamics, the attractors they reach, their stability, basins and barriers. Tensors in,
tensors out: no models, no files.

May import: floors 0–3 (``memgen.errors``, ``memgen.io``, ``memgen.data``,
``memgen.neighbours``, ``memgen.metrics``) and this package.
"""
