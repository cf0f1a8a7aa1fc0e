"""Floor 8 — experiments: orchestration, no math.

Sweep configs (YAML → frozen dataclasses, strictly checked), the stage cache (keys, done
markers), the per-K stages (train → generate → classify → probes), the sweep and its
aggregate, the executors that run each K (here, a process pool, Ray), and the phase,
landscape and demo experiments.

May import: floors 0–7 and this package.
"""
