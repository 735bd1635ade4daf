"""Tables for people: markdown (results pages, summaries) and aligned plain text (the console)."""

from __future__ import annotations

from typing import Any, Sequence


def _cell(value: Any, float_format: str) -> str:
  if isinstance(value, float):
    return format(value, float_format)
  return str(value)


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]], *, float_format: str = ".4g") -> str:
  """A GitHub markdown table; floats formatted with `float_format`."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c, float_format) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def text(header: Sequence[str], rows: Sequence[Sequence[Any]], *, float_format: str = ".6g") -> str:
  """A monospace table: first column left-aligned, the others right-aligned, a rule under the header."""
  cells = [[str(h) for h in header]] + [[_cell(c, float_format) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
