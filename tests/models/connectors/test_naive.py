"""The naive resampler (`naiveresampler`, legacy `resamplerwithpe`): the original's outputs (fixture), padded batches
equal to the per-video computation, its config fields and its size at the published scales."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.models import connectors
from tlv_jax.models.connectors.naive import NaiveResampler

from .reference import (FRAME_COUNTS, call, exact_naive, fixture_padded_batch, load_fixture_connector, padded_videos,
                        randomize, rel_err, tiny_cfg)


@pytest.fixture(scope="module")
def fixture_connector(fixtures_dir):
    return load_fixture_connector(fixtures_dir / "phi-naive-f4")


def test_matches_the_original_on_its_fixture(fixture_connector):
    model, ref = fixture_connector
    assert isinstance(model, NaiveResampler)
    out = call(model, jnp.asarray(ref["vision_features"]))
    assert out.shape == ref["connector_output"].shape
    assert rel_err(out, ref["connector_output"]) <= 1e-5
    assert rel_err(call(model, jnp.asarray(ref["batch_vision_features_1"]))[0],
                   ref["batch_connector_output"][1]) <= 1e-5


def test_fixture_padded_batch_in_one_call(fixture_connector):
    model, ref = fixture_connector
    assert rel_err(call(model, *fixture_padded_batch(ref)), ref["batch_connector_output"]) <= 1e-5


def test_padded_batch_equals_per_video():
    model = connectors.build_connector(tiny_cfg("naive"), rngs=nnx.Rngs(0))
    randomize(model)
    videos, batch, lengths = padded_videos()
    out = np.asarray(call(model, jnp.asarray(batch), lengths))
    for i, v in enumerate(videos):
        assert rel_err(out[i], exact_naive(model, v)) <= 1e-5, f"{FRAME_COUNTS[i]} frames"


@pytest.mark.parametrize("name", ["naiveresampler", "resamplerwithpe"])
def test_config_fields_from_the_original_names(name):
    original = {"connector_type": name, "num_queries": 512, "num_resampler_layers": 3}
    cfg = connectors.config_from_original(original, vision_hidden_size=1152, hidden_size=2560)
    assert (cfg.kind, cfg.num_queries, cfg.num_layers) == ("naive", 512, 3)
    assert connectors.config_to_original(cfg) == {**original, "connector_type": "naiveresampler"}


@pytest.mark.parametrize("d,count", [(2048, 116_697_088), (2560, 177_328_640)])
def test_parameter_counts_match_the_published_models(d, count):
    cfg = ConnectorConfig(kind="naive", num_queries=512, group=1, num_layers=3, vision_hidden_size=1152, hidden_size=d)
    model = nnx.eval_shape(lambda: connectors.build_connector(cfg, rngs=nnx.Rngs(0)))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == count
