"""jax -> torch: the published layout bit-equal to the original's, sharding + index, pretrain layout, backbones."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from tlv_jax.convert import jax2torch, torch2jax
from tlv_jax.convert.orbax_io import ParamsReader, save_params, write_meta
from tlv_jax.convert.safetensors_io import CheckpointError, open_checkpoint

from . import FIXTURES, LAYOUTS, assert_same_tensors, leftovers, save_tiny_qwen2, save_tiny_siglip


@pytest.fixture(scope="module")
def ours(tmp_path_factory, fixtures_dir):
    """Each fixture, converted once from each layout: {(name, layout): our directory}."""
    root = tmp_path_factory.mktemp("ours")
    out = {}
    for name in FIXTURES:
        for layout in LAYOUTS:
            out[name, layout] = torch2jax.convert(fixtures_dir / name / layout, root / f"{name}-{layout}",
                                                  progress=False)
    return out


def _back(src, dst, **kw):
    return jax2torch.convert(src, dst, progress=False, **kw)


def _assert_contains(original, written, where=""):
    """Every field of the original JSON is in the written one with the same value."""
    for k, v in original.items():
        assert k in written, where + k
        if isinstance(v, dict):
            _assert_contains(v, written[k], f"{where}{k}.")
        else:
            assert written[k] == v, where + k


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_reproduces_the_published_checkpoint(fixtures_dir, ours, tmp_path, name, layout):
    from safetensors.torch import load_file

    out = _back(ours[name, layout], tmp_path / "torch")
    ref = fixtures_dir / name / "finetune"
    assert_same_tensors(open_checkpoint(out), open_checkpoint(ref))  # keys (lm_head omitted when tied), bits
    loaded = load_file(out / "model.safetensors")
    assert sorted(loaded) == sorted(load_file(ref / "model.safetensors"))
    _assert_contains(json.loads((ref / "config.json").read_text()), json.loads((out / "config.json").read_text()))
    gen = json.loads((out / "generation_config.json").read_text())
    want = json.loads((ref / "generation_config.json").read_text())
    assert {k: gen[k] for k in ("bos_token_id", "eos_token_id", "use_cache")} == \
        {k: want[k] for k in ("bos_token_id", "eos_token_id", "use_cache")}
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        assert (out / f).read_bytes() == (ref / f).read_bytes()
    assert leftovers(tmp_path) == []


def test_jax_torch_jax_is_bit_exact(ours, tmp_path):
    src = ours["phi-naive-f4", "finetune"]
    _back(src, tmp_path / "torch")
    torch2jax.convert(tmp_path / "torch", tmp_path / "again", progress=False)
    a, b = ParamsReader(src), ParamsReader(tmp_path / "again")
    assert sorted(map(str, a.keys())) == sorted(map(str, b.keys()))
    for p in a.keys():
        assert a.get(p).dtype == b.get(p).dtype and a.get(p).tobytes() == b.get(p).tobytes(), p


def test_sharded_output_with_index(fixtures_dir, ours, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = _back(ours["qwen2-group-f16", "finetune"], tmp_path / "torch", max_shard_bytes=200_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    total = 0
    for shard in shards:
        tensors = load_file(out / shard)
        assert {k for k, v in index["weight_map"].items() if v == shard} == set(tensors)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        with safe_open(out / shard, "np") as f:
            assert f.metadata() == {"format": "pt"}
    assert index["metadata"]["total_size"] == total
    assert_same_tensors(open_checkpoint(out), open_checkpoint(fixtures_dir / "qwen2-group-f16" / "finetune"))


def test_dtype_cast(ours, fixtures_dir, tmp_path):
    out = _back(ours["qwen2-group-f16", "pretrain"], tmp_path / "torch", dtype="bfloat16")
    got, ref = open_checkpoint(out), open_checkpoint(fixtures_dir / "qwen2-group-f16" / "finetune")
    for k in ref.keys():
        assert got.dtype(k) == ml_dtypes.bfloat16
        assert got.get(k).tobytes() == ref.get(k).astype(ml_dtypes.bfloat16).tobytes(), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["text_config"]["torch_dtype"] == "bfloat16"


@pytest.mark.parametrize("name", FIXTURES)
def test_pretrain_layout_as_the_original_writes_it(fixtures_dir, ours, tmp_path, name):
    out = _back(ours[name, "finetune"], tmp_path / "pre", layout="pretrain")
    ref = fixtures_dir / name / "pretrain"
    for sub in ("language_model", "vision_tower", "connector"):
        assert (out / sub / "pytorch_model.bin").exists()
        assert_same_tensors(open_checkpoint(out / sub), open_checkpoint(ref / sub))  # component-local keys
    original = json.loads((fixtures_dir / name / "finetune" / "config.json").read_text())
    for sub, part in (("language_model", "text_config"), ("vision_tower", "vision_config")):
        _assert_contains(original[part], json.loads((out / sub / "config.json").read_text()))
    torch2jax.convert(out, tmp_path / "again", progress=False)  # and it reads back to the same params
    a, b = ParamsReader(ours[name, "finetune"]), ParamsReader(tmp_path / "again")
    for p in a.keys():
        assert a.get(p).tobytes() == b.get(p).tobytes(), p


def test_hf_backbone_round_trip_loads_in_transformers(tmp_path):
    import torch
    from transformers import Qwen2ForCausalLM

    save_tiny_qwen2(tmp_path / "hf")
    torch2jax.convert(tmp_path / "hf", tmp_path / "ours", progress=False)
    out = _back(tmp_path / "ours", tmp_path / "back", max_shard_bytes=5_000)  # sharded + index
    assert len(list(out.glob("model-*.safetensors"))) > 1
    a = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    b = Qwen2ForCausalLM.from_pretrained(out).state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_siglip_backbone_round_trip(tmp_path):
    import torch
    from transformers import SiglipVisionModel

    save_tiny_siglip(tmp_path / "hf", full=True)
    torch2jax.convert(tmp_path / "hf", tmp_path / "ours", progress=False)
    out = _back(tmp_path / "ours", tmp_path / "back")
    a = SiglipVisionModel.from_pretrained(tmp_path / "hf").state_dict()
    b = SiglipVisionModel.from_pretrained(out).state_dict()
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_params_stop_before_writing(ours, tmp_path):
    src = ours["qwen2-group-f16", "finetune"]
    reader = ParamsReader(src)
    items = [(p, reader.get(p)) for p in reader.keys()]
    cases = {
        "missing": ([(p, a) for p, a in items if p != ("llm", "final_norm", "scale")],
                    "missing parameter llm.final_norm.scale"),
        "extra": (items + [(("llm", "spare"), np.zeros(2, np.float32))], "unexpected parameter llm.spare"),
        "shape": ([(p, np.zeros(7, np.float32) if p == ("connector", "norm", "bias") else a) for p, a in items],
                  r"parameter connector.norm.bias has shape \[7\], expected \[32\]"),
    }
    for case, (params, message) in cases.items():
        d = tmp_path / case
        d.mkdir()
        (d / "config.json").write_bytes((src / "config.json").read_bytes())
        write_meta(d, {"kind": "tinyllava"})
        save_params(d, iter(params))
        with pytest.raises(CheckpointError, match=message):
            _back(d, tmp_path / "out" / case)
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="not a tlv_jax checkpoint"):
        _back(tmp_path, tmp_path / "out" / "x")


def test_interrupted_export_leaves_nothing(ours, tmp_path, monkeypatch):
    from tlv_jax.convert import safetensors_io

    real_add = safetensors_io.ShardedWriter.add
    count = []

    def flaky(self, key, array):
        count.append(key)
        if len(count) == 50:
            raise KeyboardInterrupt
        return real_add(self, key, array)

    monkeypatch.setattr(safetensors_io.ShardedWriter, "add", flaky)
    with pytest.raises(KeyboardInterrupt):
        _back(ours["qwen2-group-f16", "finetune"], tmp_path / "torch", max_shard_bytes=100_000)
    assert not (tmp_path / "torch").exists() and leftovers(tmp_path) == []


def test_parse_size():
    assert jax2torch.parse_size("5GB") == 5 * 10 ** 9
    assert jax2torch.parse_size("500MB") == 500 * 10 ** 6
    assert jax2torch.parse_size("2GiB") == 2 * 2 ** 30
    assert jax2torch.parse_size("1.5kb") == 1500
    assert jax2torch.parse_size("4096") == 4096
    for bad in ("lots", "-1GB", "0"):
        with pytest.raises(ValueError, match="bad size"):
            jax2torch.parse_size(bad)


def test_writer_with_a_plan_writes_the_same_files(tmp_path):
    """jax2torch tells ShardedWriter every tensor in advance so headers go first; the files must not change."""
    from tlv_jax.convert.safetensors_io import ShardedWriter

    rng = np.random.default_rng(0)
    tensors = [(f"t{i}", rng.standard_normal((i + 1, 40)).astype(np.float32)) for i in range(9)]
    tensors.append(("b", np.ones((3, 5), ml_dtypes.bfloat16)))
    plan = [(k, a.shape, a.dtype) for k, a in tensors]
    for name, expected in (("plain", None), ("planned", plan)):
        (tmp_path / name).mkdir()
        writer = ShardedWriter(tmp_path / name, 1000, expected=expected)
        for k, a in tensors:
            writer.add(k, a)
        assert len(writer.close()) > 3
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "planned").iterdir())
    assert all((tmp_path / "plain" / f).read_bytes() == (tmp_path / "planned" / f).read_bytes() for f in files)
    (tmp_path / "bad").mkdir()
    writer = ShardedWriter(tmp_path / "bad", 1000, expected=plan)
    with pytest.raises(CheckpointError, match="'t1'.*was not expected"):
        writer.add("t1", tensors[1][1])
    writer = ShardedWriter(tmp_path / "bad", 1000, expected=plan)
    writer.add("t0", tensors[0][1])
    with pytest.raises(CheckpointError, match="'t1' was never added"):
        writer.close()
