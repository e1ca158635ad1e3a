"""Building blocks shared by every model: parameters with logical axes, norms, RoPE, attention and the KV cache."""
