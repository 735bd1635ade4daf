"""grow_jax.methods."""
