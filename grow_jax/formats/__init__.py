"""grow_jax.formats."""
