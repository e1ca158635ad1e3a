"""SigLIP vision tower: parity with transformers' `SiglipVisionModel` and with the original TinyLLaVA-Video fixture,
bit-exact export, bf16 compute, checkpoint errors, early stop at `output_layer`."""

from __future__ import annotations

import copy
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import load_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from tlv_jax.config import VisionConfig
from tlv_jax.convert import tables
from tlv_jax.convert.apply import load_into
from tlv_jax.convert.safetensors_io import CheckpointError, open_checkpoint, write_safetensors
from tlv_jax.models import siglip
from tlv_jax.convert.backbones import abstract, load_siglip, read_config, save_backbone, vision_entries
from tlv_jax.sharding.rules import DEFAULT_RULES

HF_CONFIG = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=42,
                 patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


def _rel_err(ours: jax.Array, ref: torch.Tensor | np.ndarray) -> float:
    ref = ref.float().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(jnp.asarray(ours, jnp.float32))
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def hf_model() -> SiglipVisionModel:
    """A tiny random SigLIP whose norms, biases and probe are far from their 1/0 initial values."""
    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**HF_CONFIG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("siglip_hf")
    hf_model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    size = HF_CONFIG["image_size"]
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hf_out(hf_model, pixels):
    with torch.no_grad():
        return hf_model(pixels, output_hidden_states=True)


@pytest.fixture(params=["xla", "cpu"])
def attn_impl(request) -> str:
    """Both attention backends `auto` picks on CPU: `xla`, the whole batch at once (what small images take), and
    `cpu`, image by image with attention one head at a time (what long sequences take; the tiny test images are
    forced onto it)."""
    return request.param


def _nhwc(pixels: torch.Tensor) -> jax.Array:
    return jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())


def test_every_hidden_state_matches_transformers(hf_dir, pixels, hf_out, attn_impl):
    model = load_siglip(hf_dir, attn_impl=attn_impl)
    ours = nnx.jit(lambda m, x: m.hidden_states(x))(model, _nhwc(pixels))
    assert len(ours) == len(hf_out.hidden_states) == HF_CONFIG["num_hidden_layers"] + 1
    for i, (a, b) in enumerate(zip(ours, hf_out.hidden_states)):
        assert _rel_err(a, b) <= 1e-4, f"hidden state {i}"


def test_last_hidden_state_and_pooler_match_transformers(hf_dir, pixels, hf_out, attn_impl):
    model = load_siglip(hf_dir, attn_impl=attn_impl)
    x = _nhwc(pixels)
    assert _rel_err(nnx.jit(lambda m, x: m(x))(model, x), hf_out.last_hidden_state) <= 1e-4
    pooled = nnx.jit(lambda m, x: m.pooled(x))(model, x)
    assert pooled.shape == (3, HF_CONFIG["hidden_size"])
    assert _rel_err(pooled, hf_out.pooler_output) <= 1e-4


def _primitives(jaxpr) -> list[str]:
    """Every primitive of a traced program, nested jaxprs (jit, loops, remat) included."""
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names += _primitives(inner)
    return names


def _count_dots(model, x, output_layer) -> int:
    """Matrix products in the traced forward pass: the work actually run."""
    graphdef, state = nnx.split(model)
    closed = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x, output_layer=output_layer))(state)
    return _primitives(closed.jaxpr).count("dot_general")


def test_output_layer_runs_only_the_blocks_it_needs(hf_dir, pixels, hf_out, attn_impl):
    model = load_siglip(hf_dir, attn_impl=attn_impl)
    x = _nhwc(pixels)
    n = HF_CONFIG["num_hidden_layers"]
    for layer in (-2, 0, 1, n, -(n + 1)):
        assert _rel_err(model(x, output_layer=layer), hf_out.hidden_states[layer]) <= 1e-4, f"output_layer={layer}"
    dots = [_count_dots(model, x, layer) for layer in range(n + 1)]
    per_block = dots[1] - dots[0]
    assert per_block > 0 and dots == [dots[0] + i * per_block for i in range(n + 1)]
    assert _count_dots(model, x, -2) == dots[n - 1]
    with pytest.raises(ValueError, match="output_layer"):
        model(x, output_layer=n + 1)


def test_image_size_not_a_multiple_of_the_patch(tmp_path):
    """As in so400m (384 px, patch 14: 27 x 27 patches over 378 px), pixels past the last whole patch are unused."""
    torch.manual_seed(2)
    hf = SiglipVisionModel(SiglipVisionConfig(**{**HF_CONFIG, "image_size": 46, "num_hidden_layers": 1})).eval()
    hf.save_pretrained(tmp_path)
    px = torch.randn(2, 3, 46, 46)
    with torch.no_grad():
        ref = hf(px).last_hidden_state
    model = load_siglip(tmp_path)
    assert model.cfg.num_patches == ref.shape[1] == 9
    assert _rel_err(model(_nhwc(px)), ref) <= 1e-4


def _tensors(directory) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    assert len(files) == 1
    return load_file(files[0])


def _assert_same_tensors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.dtype, k
        assert ours[k].shape == t.shape, k
        assert torch.equal(ours[k].view(torch.uint8) if t.dtype == torch.bfloat16 else ours[k],
                           t.view(torch.uint8) if t.dtype == torch.bfloat16 else t), k


def test_export_is_bit_exact(hf_dir, tmp_path):
    model = load_siglip(hf_dir)
    save_backbone(model, vision_entries(model.cfg, nested=False), read_config(hf_dir), tmp_path)
    _assert_same_tensors(_tensors(tmp_path), _tensors(hf_dir))
    assert json.loads((tmp_path / "config.json").read_text()) == read_config(hf_dir)


def test_export_of_a_bf16_checkpoint_is_bit_exact(hf_model, tmp_path):
    src, out = tmp_path / "hf_bf16", tmp_path / "ours"
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(src)
    model = load_siglip(src)
    save_backbone(model, vision_entries(model.cfg, nested=False), VisionConfig.from_hf(read_config(src)).to_hf(),
                  out, dtype="bfloat16")
    ref = _tensors(src)
    assert all(t.dtype == torch.bfloat16 for t in ref.values())
    _assert_same_tensors(_tensors(out), ref)


def test_nested_layout_round_trips(hf_dir, pixels, hf_out, tmp_path):
    """The `vision_model.`-prefixed keys of transformers < 5 (TinyLLaVA's checkpoints) load and save too."""
    model = load_siglip(hf_dir)
    save_backbone(model, vision_entries(model.cfg), model.cfg.to_hf(), tmp_path)
    assert all(k.startswith("vision_model.") for k in _tensors(tmp_path))
    again = load_siglip(tmp_path)
    assert _rel_err(again(_nhwc(pixels)), hf_out.last_hidden_state) <= 1e-4


def test_bf16_compute_stays_within_bf16_tolerance(hf_dir, pixels, hf_out, attn_impl):
    model = load_siglip(hf_dir, dtype="bfloat16", attn_impl=attn_impl)
    assert model.layers[0].attn.q.kernel[...].dtype == jnp.float32
    hidden = nnx.jit(lambda m, x: m.hidden_states(x))(model, _nhwc(pixels))
    for i, (a, b) in enumerate(zip(hidden, hf_out.hidden_states)):
        assert a.dtype == jnp.bfloat16
        assert _rel_err(a, b) <= 3e-2, f"hidden state {i}"
    assert _rel_err(nnx.jit(lambda m, x: m(x))(model, _nhwc(pixels)), hf_out.last_hidden_state) <= 3e-2


def _write_checkpoint(directory, tensors: dict[str, np.ndarray], config: dict) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    write_safetensors(directory / "model.safetensors", list(tensors.items()), {"format": "pt"})


@pytest.mark.parametrize("defect, key", [
    ("missing", "encoder.layers.1.self_attn.k_proj.bias"),
    ("unexpected", "encoder.layers.3.mlp.fc1.weight"),
    ("shape", "encoder.layers.2.layer_norm2.weight"),
])
def test_broken_checkpoint_names_the_key(hf_dir, tmp_path, defect, key):
    tensors = {k: t.numpy() for k, t in _tensors(hf_dir).items()}
    if defect == "missing":
        del tensors[key]
    elif defect == "unexpected":
        tensors[key] = np.zeros((4, 4), np.float32)
    else:
        tensors[key] = tensors[key][:-1]
    bad = tmp_path / "bad"
    _write_checkpoint(bad, tensors, read_config(hf_dir))
    with pytest.raises(CheckpointError) as err:
        load_siglip(bad)
    message = str(err.value)
    assert key in message and "\n" not in message
    assert {"missing": "missing", "unexpected": "unexpected", "shape": "shape"}[defect] in message


def test_matches_the_original_tinyllava_video_fixture(fixtures_dir):
    """The SigLIP inside the published-layout checkpoint, run on the original's preprocessed frames."""
    root = fixtures_dir / "qwen2-group-f16"
    ref = np.load(root / "reference.npz")
    cfg = VisionConfig.from_hf(read_config(root / "finetune")["vision_config"])
    model = abstract(lambda: siglip.SiglipVisionTower(cfg, rngs=nnx.Rngs(0)))
    prefix = tables.COMPONENT_PREFIXES["vision"]
    others = tuple(p for p in tables.COMPONENT_PREFIXES.values() if p != prefix)
    load_into(model, open_checkpoint(root / "finetune"), vision_entries(cfg, hf_prefix=prefix),
              "finetune", ignore_unexpected=others)
    frames = jnp.asarray(ref["pixel_values"][0].transpose(0, 2, 3, 1))
    hidden = model.hidden_states(frames)
    expected = ref["siglip_hidden_states"]
    assert len(hidden) == expected.shape[0] == cfg.num_layers + 1
    for i, (a, b) in enumerate(zip(hidden, expected)):
        assert _rel_err(a, b) <= 1e-5, f"hidden state {i}"
    assert _rel_err(model(frames, output_layer=-2)[:, 1:].reshape(1, -1, cfg.hidden_size),
                    ref["vision_features"]) <= 1e-5
    # The pretrain-stage layout (vision_tower/pytorch_model.bin, `vision_model.` keys) holds the same tower.
    pretrain = load_siglip(root / "pretrain" / "vision_tower")
    assert _rel_err(pretrain(frames, output_layer=-2), expected[-2]) <= 1e-5


def test_params_carry_vision_logical_axes():
    cfg = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=28, patch_size=14)
    model = abstract(lambda: siglip.SiglipVisionTower(cfg, rngs=nnx.Rngs(0)))
    known = {name for name, _ in DEFAULT_RULES}
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) == len(vision_entries(cfg))
    for path, var in params:
        axes = var.get_metadata()["axes"]
        assert len(axes) == len(var.shape), path
        assert all(a is None or (a in known and a.startswith("vit_")) for a in axes), (path, axes)
    assert model.patch_embed.kernel.get_metadata()["axes"] == ("vit_patch", "vit_patch", "vit_patch", "vit_embed")
    assert model.pos_embed.embedding.get_metadata()["axes"] == ("vit_pos", "vit_embed")


def test_sincos_position_init_is_a_trainable_2d_table():
    cfg = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, image_size=42, patch_size=14,
                       use_head=False)
    model = siglip.SiglipVisionTower(dataclasses.replace(cfg, posemb_init="sincos2d"), rngs=nnx.Rngs(0))
    table = np.asarray(model.pos_embed.embedding[...])
    assert isinstance(model.pos_embed.embedding, nnx.Param) and table.shape == (9, 32)
    q = 32 // 4
    grid = np.arange(9)
    # x varies along a row, y down the columns; frequency 0 of each block is sin/cos of the raw coordinate.
    np.testing.assert_allclose(table[:, 0], np.sin(grid % 3), atol=1e-6)
    np.testing.assert_allclose(table[:, q], np.cos(grid % 3), atol=1e-6)
    np.testing.assert_allclose(table[:, 2 * q], np.sin(grid // 3), atol=1e-6)
    np.testing.assert_allclose(table[:, 3 * q], np.cos(grid // 3), atol=1e-6)
    assert model.head is None
    with pytest.raises(ValueError, match="posemb_init"):
        siglip.SiglipVisionTower(dataclasses.replace(cfg, posemb_init="learned"), rngs=nnx.Rngs(0))


def test_remat_gives_the_same_values_and_gradients(hf_dir, pixels):
    plain = load_siglip(hf_dir, attn_impl="cpu")  # remat inside the image-by-image loop
    cfg = plain.cfg
    remat = abstract(lambda: siglip.SiglipVisionTower(dataclasses.replace(cfg, remat=True), rngs=nnx.Rngs(0)))
    nnx.update(remat, nnx.state(plain))
    x = _nhwc(pixels)
    loss = lambda m: jnp.sum(jnp.square(m(x, output_layer=1)))
    (l1, g1), (l2, g2) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (plain, remat))

    def rematerialised(m) -> bool:
        graphdef, state = nnx.split(m)
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: loss(nnx.merge(graphdef, s))))(state).jaxpr
        return bool({"checkpoint", "remat2"} & set(_primitives(jaxpr)))

    assert rematerialised(remat) and not rematerialised(plain)
    assert _rel_err(l2, np.asarray(l1)) <= 1e-6
    flat1, flat2 = nnx.to_flat_state(g1), nnx.to_flat_state(g2)
    scale = max(float(jnp.abs(v[...]).max()) for _, v in flat1)
    for (path, a), (path2, b) in zip(flat2, flat1):
        assert path == path2
        # Relative to the largest gradient: the key biases' true gradient is 0 (softmax ignores them).
        assert float(jnp.abs(a[...] - b[...]).max()) <= 1e-5 * scale, path


def test_each_image_is_encoded_independently(hf_dir, pixels, attn_impl):
    """A batch gives each image's result alone (the `cpu` backend runs a batch image by image, one image whole)."""
    model = load_siglip(hf_dir, attn_impl=attn_impl)
    x = _nhwc(pixels)
    batch = model.hidden_states(x)
    for i in range(x.shape[0]):
        for j, alone in enumerate(model.hidden_states(x[i:i + 1])):
            assert _rel_err(alone[0], np.asarray(batch[j][i])) <= 1e-6, (i, j)


def test_wrong_image_size_is_a_clear_error(hf_dir):
    model = load_siglip(hf_dir)
    with pytest.raises(ValueError, match=r"\(N, 42, 42, 3\)"):
        model(jnp.zeros((1, 3, 42, 42)))
