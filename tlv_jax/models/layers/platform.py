"""Which kind of chip this process computes on: the one place model code asks (attention's backend choice and the
CPU-only kernel selection of `linear.matmul_2d`), so that no module asks JAX for the backend itself."""

from __future__ import annotations

import jax


def platform() -> str:
    """'cpu', 'gpu' or 'tpu' (what `jax.default_backend()` names the default device's backend)."""
    return jax.default_backend()
