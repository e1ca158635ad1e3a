"""The `mlp2x_gelu` projector: torch's Sequential(Linear, GELU, Linear) through our key table, one token per
vision token, and the depths it refuses."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.convert.apply import load_into
from tlv_jax.convert.rules import expand
from tlv_jax.convert.tables import connector_rules
from tlv_jax.models import connectors
from tlv_jax.models.connectors.mlp import MLPConnector

from .reference import call, rel_err, tiny_cfg


def test_matches_torch():
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg("mlp")
    ref = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.GELU(), torch.nn.Linear(24, 24))
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}

    class Reader:  # the torch state dict as a TensorReader
        keys = lambda self: list(state)
        shape = lambda self, k: state[k].shape
        dtype = lambda self, k: state[k].dtype
        get = lambda self, k: state[k]

    model = connectors.build_connector(cfg, rngs=nnx.Rngs(0))
    assert isinstance(model, MLPConnector)
    load_into(model, Reader(), expand(connector_rules(cfg), 0), "torch")
    x = np.random.default_rng(0).normal(size=(2, 9, 12)).astype(np.float32)
    want = ref(torch.from_numpy(x)).detach().numpy()
    assert rel_err(call(model, jnp.asarray(x)), want) <= 1e-5


def test_one_token_per_vision_token():
    unit = connectors.get("mlp")
    cfg = connectors.config_from_original({"connector_type": "mlp2x_gelu"}, vision_hidden_size=12, hidden_size=24)
    assert unit.variable_tokens and unit.video_tokens(cfg, 3 * 728) == 3 * 728
    assert connectors.config_to_original(cfg) == {"connector_type": "mlp2x_gelu"}


def test_other_depths_are_refused():
    with pytest.raises(ValueError, match="mlp3x_gelu"):
        connectors.config_from_original({"connector_type": "mlp3x_gelu"}, vision_hidden_size=12, hidden_size=24)
