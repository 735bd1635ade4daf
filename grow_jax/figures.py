"""Figures as files: matplotlib on the Agg backend (no display) and PNGs with deterministic bytes, so a study
that re-runs with every result present rewrites identical plots."""

from __future__ import annotations

from grow_jax import files


def pyplot():
  """matplotlib.pyplot on the Agg backend (imported on first use: only the commands that draw need it)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_png(fig, path: str, dpi: float | None = None) -> None:
  """Writes `fig` to `path` (local or gs://, whole or not at all) as a PNG without a Software stamp, at `dpi`
  (default: the figure's own), and closes it."""
  options = {"format": "png", "metadata": {"Software": None}, **({"dpi": dpi} if dpi else {})}
  files.write_with(path, lambda tmp: fig.savefig(tmp, **options))
  pyplot().close(fig)
