"""Tests of tlv_jax.data."""
