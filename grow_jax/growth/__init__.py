"""grow_jax.growth."""
