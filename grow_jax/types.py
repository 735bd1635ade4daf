"""Type aliases shared across grow_jax (this module imports nothing else, so any module may use it).

    Params   a parameter tree: plain nested dicts with Gemma's names, leaves arrays (numpy, jax) or, for abstract
             trees, jax.ShapeDtypeStruct; a leaf's path is '/'.join(keys) (docs/design.md, "Parameters")
"""

from typing import Any

Params = dict[str, Any]
