"""grow_jax.evaluation."""
