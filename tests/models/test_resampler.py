"""The group / naive resamplers and the mlp2x_gelu connector against the original code (fixtures) and the spec."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import open_checkpoint
from tlv_jax.convert.tables import COMPONENT_PREFIXES, connector_rules, expand
from tlv_jax.models.resampler import (GroupResampler, MLPConnector, NaiveResampler, build_connector,
                                      positional_encoding, sinusoid_table_fp16)
from tlv_jax.models.tinyllava_config import ConnectorConfig, TinyLlavaConfig
from tlv_jax.sharding.rules import DEFAULT_RULES

FIXTURES = ("qwen2-group-f16", "phi-naive-f4")
call = jax.jit(lambda m, x, n=None: m(x, n))  # model(features, lengths), compiled (much faster than eager here)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_connector(request, fixtures_dir):
    """(connector loaded from the fixture's published checkpoint, reference arrays)."""
    d = fixtures_dir / request.param
    cfg = TinyLlavaConfig.load(d / "finetune").model.connector
    model = build_connector(cfg, rngs=nnx.Rngs(0))
    entries = expand(connector_rules(cfg.kind), cfg.num_layers, COMPONENT_PREFIXES["connector"])
    load_into(model, open_checkpoint(d / "finetune"), entries, str(d),
              ignore_unexpected=(COMPONENT_PREFIXES["vision"], COMPONENT_PREFIXES["llm"]))
    return model, dict(np.load(d / "reference.npz"))


@pytest.mark.parametrize("name", FIXTURES)
def test_pe_table_is_bit_exact(fixtures_dir, name):
    ref = np.load(fixtures_dir / name / "reference.npz")["pe_table_fp16"]
    ours = sinusoid_table_fp16(*ref.shape)
    assert ours.dtype == np.float16
    np.testing.assert_array_equal(ours.view(np.uint16), ref.view(np.uint16))
    # cast to the activation dtype from those fp16 values
    np.testing.assert_array_equal(np.asarray(positional_encoding(*ref.shape, jnp.float32)), ref.astype(np.float32))


def test_fixture_connector_output(fixture_connector):
    model, ref = fixture_connector
    out = call(model, jnp.asarray(ref["vision_features"]))
    assert out.shape == ref["connector_output"].shape
    assert rel_err(out, ref["connector_output"]) <= 1e-5


def test_fixture_batch_sample_with_uneven_groups(fixture_connector):
    """Sample B has 3 frames: 45 tokens split 16 ways is [3]*13 + [2]*3 in the group model."""
    model, ref = fixture_connector
    out = call(model, jnp.asarray(ref["batch_vision_features_1"]))
    assert rel_err(out[0], ref["batch_connector_output"][1]) <= 1e-5


def test_fixture_padded_batch_in_one_call(fixture_connector):
    model, ref = fixture_connector
    a, b = ref["vision_features"][0], ref["batch_vision_features_1"][0]
    x = np.zeros((2, *a.shape), np.float32)
    x[0], x[1, : len(b)] = a, b
    x[1, len(b):] = 123.0  # padding content must not matter
    out = call(model, jnp.asarray(x), jnp.array([len(a), len(b)]))
    assert rel_err(out, ref["batch_connector_output"]) <= 1e-5


# ---- padded batches == the exact per-video computation ---------------------------------------------------

def tiny_cfg(kind: str, group: int = 4, **kw) -> ConnectorConfig:
    return ConnectorConfig(kind=kind, num_queries=16, group=group if kind == "group" else 1, num_layers=2,
                           vision_hidden_size=12, hidden_size=24, dim_head=4, heads=3, **kw)


def randomize(model: nnx.Module, seed: int = 1) -> None:
    """Random norm scales/biases too, so a wrong mapping or masking cannot hide behind 1/0 defaults."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            var.set_value(jnp.asarray(np.asarray(var[...]) + 0.3 * rng.normal(size=var.shape), jnp.float32))


def split_sizes(t: int, groups: int) -> list[int]:
    a, r = divmod(t, groups)
    return [a + 1] * r + [a] * (groups - r)


def np_params(model: nnx.Module) -> dict:
    return {".".join(map(str, path)): np.asarray(var[...], np.float64)
            for path, var in nnx.iter_graph(model) if isinstance(var, nnx.Param)}


def np_layernorm(x, p, name, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p[name + ".scale"] + p[name + ".bias"]


def np_perceive(p, media, heads, dim_head, num_layers):
    """Spec §15 in float64 numpy: latents attend to [LN(media); LN(latents)], no mask."""
    from scipy.special import erf

    lat = p["latents"]
    inner = heads * dim_head
    for i in range(num_layers):
        a = f"layers.{i}.attn."
        ln = np_layernorm(lat, p, a + "norm_latents")
        kv = np.concatenate([np_layernorm(media, p, a + "norm_media"), ln]) @ p[a + "to_kv.kernel"]
        q = (ln @ p[a + "to_q.kernel"]).reshape(len(ln), heads, dim_head) * dim_head ** -0.5
        k, v = kv[:, :inner].reshape(-1, heads, dim_head), kv[:, inner:].reshape(-1, heads, dim_head)
        sim = np.einsum("ihd,jhd->hij", q, k)
        w = np.exp(sim - sim.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        lat = lat + np.einsum("hij,jhd->ihd", w, v).reshape(len(ln), inner) @ p[a + "to_out.kernel"]
        f = f"layers.{i}.ff."
        h = np_layernorm(lat, p, f + "norm") @ p[f + "fc1.kernel"]
        lat = lat + (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ p[f + "fc2.kernel"]
    return np_layernorm(lat, p, "norm")


def exact_group(model: GroupResampler, x: np.ndarray) -> np.ndarray:
    """Spec §3.1 literally (float64 numpy): python split sizes, one chunk at a time, no mask."""
    p, cfg = np_params(model), model.cfg
    proj = x @ p["linear.kernel"] + p["linear.bias"]
    outs, start = [], 0
    for size in split_sizes(len(x), cfg.group):
        outs.append(np_perceive(p, proj[start:start + size], cfg.heads, cfg.dim_head, cfg.num_layers))
        start += size
    y = np.concatenate(outs)
    return y + sinusoid_table_fp16(*y.shape)


def exact_naive(model: NaiveResampler, x: np.ndarray) -> np.ndarray:
    p, cfg = np_params(model), model.cfg
    proj = x @ p["linear.kernel"] + p["linear.bias"]
    proj = proj + sinusoid_table_fp16(*proj.shape)
    return np_perceive(p, proj, cfg.heads, cfg.dim_head, cfg.num_layers)


FRAME_COUNTS = (1, 3, 5, 16, 30)
TOKENS_PER_FRAME = 7  # 7, 21, 35, 112, 210 tokens: remainders 3, 1, 3, 0, 2 over 4 groups


@pytest.mark.parametrize("kind,exact", [("group", exact_group), ("naive", exact_naive)])
def test_padded_batch_equals_per_video(kind, exact):
    model = build_connector(tiny_cfg(kind), rngs=nnx.Rngs(0))
    randomize(model)
    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(f * TOKENS_PER_FRAME, 12)).astype(np.float32) for f in FRAME_COUNTS]
    t_max = max(len(v) for v in videos)
    batch = np.full((len(videos), t_max, 12), 7.0, np.float32)
    for i, v in enumerate(videos):
        batch[i, : len(v)] = v
    lengths = jnp.array([len(v) for v in videos])
    out = np.asarray(call(model, jnp.asarray(batch), lengths))
    assert out.shape == (len(videos), 16, 24)
    for i, v in enumerate(videos):
        want = exact(model, v)
        assert rel_err(out[i], want) <= 1e-5, f"{FRAME_COUNTS[i]} frames"
        if FRAME_COUNTS[i] in (3, 16):  # unpadded calls: uneven split, and the T % G == 0 reshape path
            assert rel_err(call(model, jnp.asarray(v)[None]), want[None]) <= 1e-5


def test_group_with_fewer_tokens_than_groups():
    """T < G: trailing chunks are empty and their latents only see themselves (torch.split gives empty chunks)."""
    model = build_connector(tiny_cfg("group", group=8), rngs=nnx.Rngs(0))
    randomize(model)
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    padded = np.concatenate([x, np.ones((4, 12), np.float32)])[None]
    want = exact_group(model, x)
    assert rel_err(call(model, jnp.asarray(x)[None])[0], want) <= 1e-5
    assert rel_err(call(model, jnp.asarray(padded), jnp.array([5]))[0], want) <= 1e-5


def test_group_split_sizes_straddle_frames():
    from tlv_jax.models.resampler import group_windows

    index, valid = group_windows(jnp.array([45, 30]), 45, 16)
    sizes = np.asarray(valid.sum(-1))
    assert sizes[0].tolist() == split_sizes(45, 16) == [3] * 13 + [2] * 3
    assert sizes[1].tolist() == split_sizes(30, 16)
    starts = np.asarray(index[..., 0])
    assert starts[0].tolist() == np.concatenate([[0], np.cumsum(sizes[0])[:-1]]).tolist()


# ---- mlp2x_gelu, parameters, dtypes ---------------------------------------------------------------------

def test_mlp2x_gelu_matches_torch():
    torch = pytest.importorskip("torch")
    cfg = tiny_cfg("mlp")
    ref = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.GELU(), torch.nn.Linear(24, 24))
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}

    class Reader:  # the torch state dict as a TensorReader
        keys = lambda self: list(state)
        shape = lambda self, k: state[k].shape
        dtype = lambda self, k: state[k].dtype
        get = lambda self, k: state[k]

    model = build_connector(cfg, rngs=nnx.Rngs(0))
    assert isinstance(model, MLPConnector)
    load_into(model, Reader(), expand(connector_rules("mlp"), 0), "torch")
    x = np.random.default_rng(0).normal(size=(2, 9, 12)).astype(np.float32)
    want = ref(torch.from_numpy(x)).detach().numpy()
    assert rel_err(call(model, jnp.asarray(x)), want) <= 1e-5


@pytest.mark.parametrize("kind,d,q,group,count", [
    ("group", 2048, 512, 16, 115_714_048), ("naive", 2048, 512, 1, 116_697_088), ("naive", 2560, 512, 1, 177_328_640)])
def test_parameter_counts_match_the_published_models(kind, d, q, group, count):
    cfg = ConnectorConfig(kind=kind, num_queries=q, group=group, num_layers=3, vision_hidden_size=1152, hidden_size=d)
    model = nnx.eval_shape(lambda: build_connector(cfg, rngs=nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(p.shape)) for p in params) == count


@pytest.mark.parametrize("kind", ["group", "naive", "mlp"])
def test_every_parameter_has_logical_axes(kind):
    known = {name for name, _ in DEFAULT_RULES}
    model = nnx.eval_shape(lambda: build_connector(tiny_cfg(kind), rngs=nnx.Rngs(0)))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            axes = var.get_metadata().get("axes")
            assert axes is not None and len(axes) == var.ndim, path
            assert all(a in known for a in axes), (path, axes)


@pytest.mark.parametrize("kind", ["group", "naive"])
def test_bfloat16_compute(kind):
    cfg32 = tiny_cfg(kind)
    m32 = build_connector(cfg32, rngs=nnx.Rngs(0))
    m16 = build_connector(dataclasses.replace(cfg32, dtype="bfloat16"), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 21, 12)).astype(np.float32))
    y16 = call(m16, x)
    assert y16.dtype == jnp.bfloat16
    assert m16.latents.dtype == jnp.float32  # parameters stay fp32
    assert rel_err(y16.astype(jnp.float32), call(m32, x)) < 5e-2
