"""The group resampler (`groupresampler`): the original's outputs (fixture), uneven chunk splits that straddle frames,
padded batches equal to the per-video computation, its config fields and its size at the published scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.config import ConnectorConfig
from tlv_jax.models import connectors
from tlv_jax.models.connectors.group import GroupResampler, group_windows

from .reference import (FRAME_COUNTS, call, exact_group, fixture_padded_batch, load_fixture_connector, padded_videos,
                        randomize, rel_err, split_sizes, tiny_cfg)


@pytest.fixture(scope="module")
def fixture_connector(fixtures_dir):
    return load_fixture_connector(fixtures_dir / "qwen2-group-f16")


def test_matches_the_original_on_its_fixture(fixture_connector):
    model, ref = fixture_connector
    assert isinstance(model, GroupResampler)
    out = call(model, jnp.asarray(ref["vision_features"]))
    assert out.shape == ref["connector_output"].shape
    assert rel_err(out, ref["connector_output"]) <= 1e-5


def test_uneven_groups_match_the_original(fixture_connector):
    """The fixture's second video has 3 frames: 45 tokens split 16 ways is [3]*13 + [2]*3."""
    model, ref = fixture_connector
    out = call(model, jnp.asarray(ref["batch_vision_features_1"]))
    assert rel_err(out[0], ref["batch_connector_output"][1]) <= 1e-5


def test_fixture_padded_batch_in_one_call(fixture_connector):
    model, ref = fixture_connector
    assert rel_err(call(model, *fixture_padded_batch(ref)), ref["batch_connector_output"]) <= 1e-5


def test_padded_batch_equals_per_video():
    model = connectors.build_connector(tiny_cfg("group"), rngs=nnx.Rngs(0))
    randomize(model)
    videos, batch, lengths = padded_videos()
    out = np.asarray(call(model, jnp.asarray(batch), lengths))
    assert out.shape == (len(videos), 16, 24)
    for i, v in enumerate(videos):
        want = exact_group(model, v)
        assert rel_err(out[i], want) <= 1e-5, f"{FRAME_COUNTS[i]} frames"
        if FRAME_COUNTS[i] in (3, 16):  # unpadded calls: uneven split, and the T % G == 0 reshape path
            assert rel_err(call(model, jnp.asarray(v)[None]), want[None]) <= 1e-5


def test_fewer_tokens_than_groups():
    """T < G: trailing chunks are empty and their latents only see themselves (torch.split gives empty chunks)."""
    model = connectors.build_connector(tiny_cfg("group", group=8), rngs=nnx.Rngs(0))
    randomize(model)
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    padded = np.concatenate([x, np.ones((4, 12), np.float32)])[None]
    want = exact_group(model, x)
    assert rel_err(call(model, jnp.asarray(x)[None])[0], want) <= 1e-5
    assert rel_err(call(model, jnp.asarray(padded), jnp.array([5]))[0], want) <= 1e-5


def test_split_sizes_straddle_frames():
    index, valid = group_windows(jnp.array([45, 30]), 45, 16)
    sizes = np.asarray(valid.sum(-1))
    assert sizes[0].tolist() == split_sizes(45, 16) == [3] * 13 + [2] * 3
    assert sizes[1].tolist() == split_sizes(30, 16)
    starts = np.asarray(index[..., 0])
    assert starts[0].tolist() == np.concatenate([[0], np.cumsum(sizes[0])[:-1]]).tolist()


def test_config_fields_round_trip_through_the_original_names():
    original = {"connector_type": "groupresampler", "num_queries": 512, "group": 16, "num_resampler_layers": 3}
    cfg = connectors.config_from_original(original, vision_hidden_size=1152, hidden_size=2048)
    assert (cfg.kind, cfg.num_queries, cfg.group, cfg.num_layers) == ("group", 512, 16, 3)
    assert connectors.config_to_original(cfg) == original
    assert connectors.get("group").video_tokens(cfg, 16 * 728) == 512  # whatever the video's length


def test_queries_must_split_over_the_groups():
    with pytest.raises(ValueError, match="not a multiple of group"):
        connectors.config_from_original({"connector_type": "groupresampler", "num_queries": 100, "group": 16},
                                        vision_hidden_size=8, hidden_size=8)


def test_parameter_count_matches_the_published_model():
    cfg = ConnectorConfig(kind="group", num_queries=512, group=16, num_layers=3, vision_hidden_size=1152,
                          hidden_size=2048)
    model = nnx.eval_shape(lambda: connectors.build_connector(cfg, rngs=nnx.Rngs(0)))
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == 115_714_048
