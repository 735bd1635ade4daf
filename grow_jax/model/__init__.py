"""grow_jax.model."""
