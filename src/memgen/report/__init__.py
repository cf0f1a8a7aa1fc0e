"""Floor 7 — figures and report.html.

They take computed data (arrays, the payloads of summary.json and capacities.json) and
compute nothing: every number they show was measured below.

May import: floors 0–6 (in practice ``memgen.io``, ``memgen.metrics``) and this package.
"""
