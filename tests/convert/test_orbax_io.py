"""Our checkpoint directory: streaming Orbax params, one-tensor reads, filling NNX models, tlv_jax.json."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from tlv_jax.convert import orbax_io
from tlv_jax.convert.orbax_io import (ParamsReader, iter_model_params, load_params_into, read_meta, save_params,
                                      write_meta)
from tlv_jax.convert.safetensors_io import CheckpointError


def _params() -> list[tuple[tuple, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = [(("llm", "embed", "embedding"), rng.standard_normal((10, 4)).astype(ml_dtypes.bfloat16))]
    for i in range(12):
        out.append((("llm", "layers", i, "attn", "q", "kernel"), rng.standard_normal((4, 6)).astype(np.float32)))
        out.append((("llm", "layers", i, "attn", "q", "bias"), rng.standard_normal(6).astype(np.float16)))
    return out


def test_round_trip_keeps_paths_dtypes_and_bits(tmp_path):
    params = _params()
    total = save_params(tmp_path, iter(params), chunk_bytes=200)  # many partial saves, one checkpoint
    assert total == sum(a.nbytes for _, a in params)
    reader = ParamsReader(tmp_path)
    assert sorted(map(str, reader.keys())) == sorted(str(p) for p, _ in params)  # list indices back as ints
    for path, arr in params:
        assert reader.shape(path) == arr.shape and reader.dtype(path) == arr.dtype
        got = reader.get(path)
        assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes()


def test_iter_chunks_reads_in_the_given_order(tmp_path):
    params = _params()
    save_params(tmp_path, iter(params))
    reader = ParamsReader(tmp_path)
    order = [p for p, _ in reversed(params)]
    got = list(reader.iter_chunks(order, chunk_bytes=100))
    assert [p for p, _ in got] == order
    expected = dict(params)
    assert all(a.tobytes() == expected[p].tobytes() for p, a in got)


def test_params_are_a_plain_orbax_checkpoint(tmp_path):
    import orbax.checkpoint.experimental.v1 as ocp

    params = _params()
    save_params(tmp_path, iter(params))
    tree = ocp.load(tmp_path / "params")
    np.testing.assert_array_equal(tree["llm"]["layers"]["3"]["attn"]["q"]["kernel"], params[7][1])
    assert tree["llm"]["embed"]["embedding"].dtype == ml_dtypes.bfloat16


def test_save_streams_in_bounded_batches(tmp_path, monkeypatch):
    """Each partial save holds at most chunk_bytes (or one larger array), and the items are consumed lazily."""
    ocp = orbax_io._ocp()
    real_save = ocp.partial.save_async
    batches = []
    produced = []

    def spy(path, tree):
        sizes = [a.nbytes for a in _leaves(tree)]
        batches.append((sum(sizes), max(sizes), len(produced)))
        return real_save(path, tree)

    def items():
        for p, a in _params():
            produced.append(p)
            yield p, a

    monkeypatch.setattr(ocp.partial, "save_async", spy)
    save_params(tmp_path, items(), chunk_bytes=256)
    assert len(batches) > 3
    seen = 0
    for size, largest, n_produced in batches:
        assert size <= max(256, largest)
        assert n_produced > seen  # the generator was not drained before the first save
        seen = n_produced
    assert batches[0][2] < len(produced)
    assert len(ParamsReader(tmp_path).keys()) == len(produced)


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [v])


def test_duplicate_and_empty_are_errors(tmp_path):
    a = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="x.y given twice"):
        save_params(tmp_path / "dup", iter([(("x", "y"), a), (("x", "y"), a)]))
    with pytest.raises(CheckpointError, match="x.y.z given twice or inside another one"):
        save_params(tmp_path / "nest", iter([(("x", "y"), a), (("x", "y", "z"), a)]))
    with pytest.raises(CheckpointError, match="no parameters"):
        save_params(tmp_path / "empty", iter([]))


def test_reader_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no Orbax checkpoint"):
        ParamsReader(tmp_path)
    save_params(tmp_path, iter(_params()))
    with pytest.raises(CheckpointError, match="no parameter llm.nope"):
        ParamsReader(tmp_path).get(("llm", "nope"))


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(4, rngs=rngs)


def test_load_params_into_an_abstract_model(tmp_path):
    src = Tiny(nnx.Rngs(1))
    save_params(tmp_path, ((("llm",) + p, a.astype(ml_dtypes.bfloat16)) for p, a in iter_model_params(src)))
    model = nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))
    load_params_into(model, tmp_path, prefix=("llm",))
    for layer_a, layer_b in zip(model.layers, src.layers):
        assert layer_a.kernel[...].dtype == jnp.float32  # cast to the parameter's dtype
        np.testing.assert_array_equal(layer_a.kernel[...], layer_b.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(model.norm.bias[...], src.norm.bias[...].astype(jnp.bfloat16).astype(jnp.float32))


def test_load_params_into_checks_before_assigning(tmp_path):
    src = Tiny(nnx.Rngs(1))
    items = list(iter_model_params(src))
    save_params(tmp_path / "missing", iter(items[1:]))
    save_params(tmp_path / "extra", iter(items + [(("head", "w"), np.zeros(2, np.float32))]))
    save_params(tmp_path / "shape", iter([(p, np.zeros(5, np.float32) if p == ("norm", "bias") else a)
                                          for p, a in items]))
    model = Tiny(nnx.Rngs(7))
    before = np.asarray(model.norm.scale[...]).copy()
    with pytest.raises(CheckpointError, match=f"missing parameter {'.'.join(map(str, items[0][0]))}"):
        load_params_into(model, tmp_path / "missing")
    with pytest.raises(CheckpointError, match="unexpected parameter head.w"):
        load_params_into(model, tmp_path / "extra")
    with pytest.raises(CheckpointError, match=r"norm.bias has shape \[5\], expected \[4\]"):
        load_params_into(model, tmp_path / "shape")
    np.testing.assert_array_equal(model.norm.scale[...], before)


def test_meta_file(tmp_path):
    write_meta(tmp_path, {"kind": "tinyllava", "dtype": "bfloat16"})
    meta = read_meta(tmp_path)
    assert meta["format"] == "tlv_jax" and meta["format_version"] == 1 and meta["dtype"] == "bfloat16"
    with pytest.raises(CheckpointError, match="not a tlv_jax checkpoint"):
        read_meta(tmp_path / "nowhere")
    (tmp_path / "tlv_jax.json").write_text(json.dumps({"format": "tlv_jax", "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer than this code"):
        read_meta(tmp_path)
    (tmp_path / "tlv_jax.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format is 'other'"):
        read_meta(tmp_path)
