"""Figures as files: matplotlib on the Agg backend (no display) and PNGs with deterministic bytes, so a study
that re-runs with every result present rewrites identical plots."""

from __future__ import annotations

from typing import Sequence

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


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
  """A distinct (colour, marker) per method, the same in every figure of a study: tab10's colours first, then the
  cycle again with another marker (14 methods with one colour cycle gave base and an ablation the same blue)."""
  import matplotlib
  colours, markers = matplotlib.colormaps["tab10"].colors, "osD^vP"
  return {m: {"color": colours[i % len(colours)], "marker": markers[(i // len(colours)) % len(markers)]}
          for i, m in enumerate(methods)}
