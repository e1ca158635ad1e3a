"""torch -> jax: both fixture layouts and plain HF backbones into our directory; all-or-nothing on bad input."""

from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest

from tlv_jax.convert import torch2jax
from tlv_jax.convert.layouts import SIDE_FILES, open_tinyllava, tinyllava_spec
from tlv_jax.convert.orbax_io import ParamsReader, read_meta
from tlv_jax.convert.safetensors_io import CheckpointError, open_checkpoint

from . import FIXTURES, LAYOUTS, copy_fixture, edit_flat, leftovers, save_tiny_qwen2, save_tiny_siglip


def _convert(src, dst, **kw):
    return torch2jax.convert(src, dst, progress=False, **kw)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixtures_dir):
    """Each fixture converted from each layout: {(name, layout): our directory}."""
    root = tmp_path_factory.mktemp("converted")
    return {(n, lay): _convert(fixtures_dir / n / lay, root / f"{n}-{lay}") for n in FIXTURES for lay in LAYOUTS}


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixture_converts_to_permuted_tensors(fixtures_dir, converted, name, layout):
    src = fixtures_dir / name / layout
    ours = converted[name, layout]
    cfg, torch_reader = open_tinyllava(src)
    params = ParamsReader(ours)
    spec = tinyllava_spec(cfg)
    assert sorted(map(str, params.keys())) == sorted(str(e.path) for e in spec.entries)
    for e in spec.entries:
        got = params.get(e.path)
        want = e.transform.to_ours(torch_reader.get(e.hf))
        assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes(), e.hf
    # metadata and side files
    meta = read_meta(ours)
    assert meta["kind"] == "tinyllava" and meta["dtype"] == "float32" and meta["num_params"] == len(spec.entries)
    assert meta["source"]["layout"] == {"finetune": "published", "pretrain": "pretrain"}[layout]
    assert meta["defaults"]["template"] == {"qwen2": "qwen2_base", "phi": "phi"}[cfg.model.llm.family]
    assert meta["defaults"]["num_frames"] == 16
    assert (ours / "config.json").read_bytes() == (src / "config.json").read_bytes()
    for f in SIDE_FILES:
        if (src / f).exists():
            assert (ours / f).read_bytes() == (src / f).read_bytes()
    assert leftovers(ours.parent) == []


@pytest.mark.parametrize("name", FIXTURES)
def test_both_layouts_give_identical_params(converted, name):
    a, b = ParamsReader(converted[name, "finetune"]), ParamsReader(converted[name, "pretrain"])
    assert sorted(map(str, a.keys())) == sorted(map(str, b.keys()))
    for p in a.keys():
        x, y = a.get(p), b.get(p)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), p


def test_dtype_cast_and_bf16_stays_bf16(fixtures_dir, tmp_path):
    _convert(fixtures_dir / "phi-naive-f4" / "finetune", tmp_path / "bf16", dtype="bfloat16")
    params = ParamsReader(tmp_path / "bf16")
    assert {params.dtype(p) for p in params.keys()} == {np.dtype(ml_dtypes.bfloat16)}
    assert read_meta(tmp_path / "bf16")["dtype"] == "bfloat16"
    # a bf16 source stays bf16 without --dtype
    (tmp_path / "src").mkdir()
    src = copy_fixture(fixtures_dir, "phi-naive-f4", "finetune", tmp_path / "src" / "ck")
    edit_flat(src, lambda t: t.update({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}))
    _convert(src, tmp_path / "again")
    again = ParamsReader(tmp_path / "again")
    for p in params.keys():
        assert again.get(p).tobytes() == params.get(p).tobytes()


def test_1fps_checkpoint_defaults(fixtures_dir, tmp_path):
    src = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "TinyLLaVA-Video-Group-1fps-512")
    _convert(src, tmp_path / "ours")
    assert read_meta(tmp_path / "ours")["defaults"] == {"template": "qwen2_base", "num_frames": -1, "max_frames": 64}


BROKEN = {
    "missing": (lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"),
                "missing tensor 'language_model.model.layers.1.mlp.up_proj.weight'"),
    "unexpected": (lambda t: t.__setitem__("connector._connector.bonus", np.zeros(2, np.float32)),
                   "unexpected tensor 'connector._connector.bonus'"),
    "shape": (lambda t: t.__setitem__("connector._connector.latents", np.zeros((5, 32), np.float32)),
              r"'connector._connector.latents' has shape \[5, 32\], expected \[4, 32\]"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_tensor_stops_before_writing(fixtures_dir, tmp_path, case):
    edit, message = BROKEN[case]
    (tmp_path / "src").mkdir()
    src = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "src" / "ck")
    edit_flat(src, edit)
    with pytest.raises(CheckpointError, match=message):
        _convert(src, tmp_path / "out" / "dst")
    assert not (tmp_path / "out").exists()  # not even the parent was created


def test_unknown_connector_type_and_truncated_file(fixtures_dir, tmp_path):
    src = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "conn")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "connector_type": "qformer"}))
    with pytest.raises(CheckpointError, match="unsupported connector_type 'qformer'"):
        _convert(src, tmp_path / "dst")
    src = copy_fixture(fixtures_dir, "qwen2-group-f16", "finetune", tmp_path / "trunc")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated safetensors file"):
        _convert(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_conversion_leaves_nothing(fixtures_dir, tmp_path, monkeypatch, exc):
    """Fail after several batches of tensors have already been written."""
    from tlv_jax.convert import layouts, orbax_io

    ocp = orbax_io._ocp()
    real_get, real_save = layouts.RenamedReader.get, ocp.partial.save_async
    calls, saves = [], []

    def flaky(self, key):
        calls.append(key)
        if len(calls) == 100:
            raise exc("simulated failure")
        return real_get(self, key)

    def counted(path, tree):
        saves.append(path)
        return real_save(path, tree)

    monkeypatch.setattr(layouts.RenamedReader, "get", flaky)
    monkeypatch.setattr(ocp.partial, "save_async", counted)
    with pytest.raises(exc, match="simulated failure"):
        torch2jax.convert(fixtures_dir / "qwen2-group-f16" / "finetune", tmp_path / "dst", progress=False,
                          chunk_bytes=100_000)
    assert len(calls) == 100 and len(saves) >= 3
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_existing_destination_needs_force(fixtures_dir, tmp_path):
    src = fixtures_dir / "phi-naive-f4" / "finetune"
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        _convert(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "old.txt").exists()
    _convert(src, tmp_path / "dst", force=True)
    assert not (tmp_path / "dst" / "old.txt").exists() and read_meta(tmp_path / "dst")["kind"] == "tinyllava"
    assert leftovers(tmp_path) == []


def test_hf_qwen2_backbone_converts(tmp_path):
    save_tiny_qwen2(tmp_path / "hf")
    _convert(tmp_path / "hf", tmp_path / "ours", component="llm")
    meta = read_meta(tmp_path / "ours")
    assert meta["kind"] == "llm" and meta["source"]["layout"] == "hf" and "defaults" not in meta
    params = ParamsReader(tmp_path / "ours")
    hf = open_checkpoint(tmp_path / "hf")
    np.testing.assert_array_equal(params.get(("llm", "layers", 1, "attn", "q", "kernel")),
                                  hf.get("model.layers.1.self_attn.q_proj.weight").T)
    np.testing.assert_array_equal(params.get(("llm", "embed", "embedding")), hf.get("model.embed_tokens.weight"))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "qwen2"


@pytest.mark.parametrize("full", [False, True], ids=["SiglipVisionModel", "SiglipModel"])
def test_hf_siglip_backbone_converts(tmp_path, full):
    save_tiny_siglip(tmp_path / "hf", full)
    _convert(tmp_path / "hf", tmp_path / "ours")  # component detected from config.json
    params = ParamsReader(tmp_path / "ours")
    assert all(p[0] == "vision" for p in params.keys())
    key = ("vision_model." if full else "") + "embeddings.patch_embedding.weight"
    np.testing.assert_array_equal(params.get(("vision", "patch_embed", "kernel")),
                                  open_checkpoint(tmp_path / "hf").get(key).transpose(2, 3, 1, 0))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "siglip_vision_model"


def test_component_mismatch_is_an_error(fixtures_dir, tmp_path):
    save_tiny_siglip(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="--component llm given, but config.json describes a vision model"):
        _convert(tmp_path / "hf", tmp_path / "ours", component="llm")
    with pytest.raises(CheckpointError, match="--component is only for plain HF backbones"):
        _convert(fixtures_dir / "phi-naive-f4" / "finetune", tmp_path / "ours", component="llm")
    shutil.rmtree(tmp_path / "hf")
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("shape", [(3, 5), (256, 256), (1000, 777), (257, 1025)])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_linear_transform_is_an_exact_transpose(shape, dtype):
    """Large matrices take the tiled path (fixture tensors are too small to reach it)."""
    from tlv_jax.convert.rules import Transform

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    ours = Transform.LINEAR.to_ours(x)
    assert ours.dtype == x.dtype and ours.flags.c_contiguous
    assert ours.tobytes() == np.ascontiguousarray(x.T).tobytes()
    assert Transform.LINEAR.to_hf(ours).tobytes() == x.tobytes()
