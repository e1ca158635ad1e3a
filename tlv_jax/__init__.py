"""tlv_jax: TinyLLaVA-Video in JAX/Flax."""
