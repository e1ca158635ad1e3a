"""The rules table and what it lays out: logical names -> mesh axes, head axes never split a head, dimensions
that do not divide and small tensors replicated, optimizer state sharded like its parameters, frozen parameters in
the compute dtype, and a golden table of every parameter's partition spec (the tiny model on (2, 2, 2), the
Qwen2.5-3B group finetune on fsdp=8 from abstract shapes). Regenerate the golden file after an intended layout
change with `TLV_UPDATE_GOLDEN=1 pytest tests/sharding/test_rules.py`, and review its diff."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tlv_jax import plan
from tlv_jax.sharding.global_batch import global_batch, process_rows
from tlv_jax.sharding.mesh import (SMALL_TENSOR_BYTES, abstract_mesh, make_mesh, path_name, per_device_bytes, place,
                                   spec_for, spec_table, tree_shardings)
from tlv_jax.sharding.rules import DEFAULT_RULES, HEAD_AXES, fit_rules, logical_to_spec, model_rules

from .tiny import MIN_SHARD_BYTES, tiny_config

GOLDEN = Path(__file__).with_name("golden_specs.json")
ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "finetune_qwen25_3b_group16.py"
FREEZE = {"vision": "frozen", "connector": "full", "llm": "full"}


# ---- the table -------------------------------------------------------------------------------------------------

def test_logical_names_map_through_the_one_table():
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)  # fsdp used once
    assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert logical_to_spec(("queries", None, "not_a_name")) == P(None, None, None)
    names = [n for n, _ in DEFAULT_RULES]
    assert len(names) == len(set(names)) and set(HEAD_AXES) <= set(names)


def test_head_axes_fall_back_when_heads_do_not_divide():
    counts = {"heads": 16, "kv_heads": 2, "vit_heads": 16, "res_heads": 8}
    assert fit_rules({"data": 1, "fsdp": 8, "tensor": 2}, counts) == DEFAULT_RULES  # 2 KV heads over 2: fine
    rules = dict(fit_rules({"data": 1, "fsdp": 2, "tensor": 4}, counts))
    assert rules["kv_heads"] is None
    assert rules["heads"] == rules["vit_heads"] == rules["res_heads"] == rules["mlp"] == "tensor"
    assert all(dict(fit_rules({"tensor": 32}, counts))[h] is None for h in HEAD_AXES)


def test_specs_replicate_dimensions_that_do_not_divide_and_small_tensors():
    mesh = abstract_mesh(1, 4, 2, 8)
    assert spec_for((32, 64), ("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert spec_for((30, 64), ("embed", "mlp"), mesh) == P(None, "tensor")
    assert spec_for((32, 63), ("embed", "mlp"), mesh) == P("fsdp", None)
    assert spec_for((32, 64), ("embed", "mlp"), mesh, min_shard_bytes=32 * 64 * 4 + 1) == P()
    assert spec_for((32, 64), ("embed", "mlp"), mesh, min_shard_bytes=32 * 64 * 2 + 1, itemsize=2) == P()
    assert spec_for((32,), None, mesh) == P()
    assert spec_for((32, 64), ("embed", "mlp"), abstract_mesh(8, 1, 1, 8)) == P(None, None)


def test_every_parameter_names_its_axes_from_the_table():
    _, state = plan.abstract_train_state(tiny_config(), FREEZE)
    known = {n for n, _ in DEFAULT_RULES}
    for part in (state.params, state.frozen):
        for path, var in nnx.to_flat_state(part):
            axes = var.get_metadata().get("axes")
            assert axes is not None and len(axes) == len(var.shape), path
            assert set(axes) - {None} <= known, (path, axes)


# ---- the layout of a train state -------------------------------------------------------------------------------

def layout(cfg, state, mesh, min_shard_bytes):
    return tree_shardings(state, mesh, model_rules(cfg, mesh.shape), min_shard_bytes)


def tiny_layout():
    """The tiny model with bf16 compute (so frozen parameters are bf16), laid out on (2, 2, 2)."""
    cfg = tiny_config("bfloat16")
    _, state = plan.abstract_train_state(cfg, FREEZE)
    return cfg, state, layout(cfg, state, abstract_mesh(2, 2, 2, 8), MIN_SHARD_BYTES)


@pytest.fixture(scope="module")
def qwen3b():
    """The Qwen2.5-3B group-16 finetune recipe, abstract (no weights), laid out on fsdp=8."""
    config = plan.load_config(RECIPE)
    cfg = plan.model_config(config)
    _, state = plan.abstract_train_state(cfg, config.freeze.to_dict())
    return cfg, state, layout(cfg, state, abstract_mesh(1, 8, 1, 8), SMALL_TENSOR_BYTES)


def collapse_layers(table: dict[str, str]) -> dict[str, str]:
    """One row per layer-stacked parameter ('layers.*'), after checking every layer is laid out alike."""
    out: dict[str, str] = {}
    for path, entry in table.items():
        key = re.sub(r"\.layers\.\d+\.", ".layers.*.", path)
        assert out.setdefault(key, entry) == entry, (path, entry, out[key])
    return out


def golden_tables(tiny, big) -> dict[str, dict[str, str]]:
    tables = {}
    for name, (_, state, shardings) in (("tiny_2x2x2", tiny), ("qwen25_3b_group16_finetune_fsdp8", big)):
        model = {"params": state.params, "frozen": state.frozen, "rest": state.rest}
        model_sh = {"params": shardings.params, "frozen": shardings.frozen, "rest": shardings.rest}
        tables[name] = collapse_layers(spec_table(model, model_sh))
    return tables


def test_partition_specs_match_the_golden_table(qwen3b):
    tables = golden_tables(tiny_layout(), qwen3b)
    if os.environ.get("TLV_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(tables, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    for name, table in tables.items():
        assert table == golden[name], name


def test_golden_table_reads_as_intended():
    """Spot checks of the checked-in table itself, so a regenerated file cannot silently bless a bad layout."""
    golden = json.loads(GOLDEN.read_text())
    tiny, big = golden["tiny_2x2x2"], golden["qwen25_3b_group16_finetune_fsdp8"]
    assert tiny["params.llm.layers.*.mlp.gate.kernel"] == "(32, 64) float32 P('fsdp', 'tensor')"
    assert tiny["params.llm.layers.*.attn.k.kernel"] == "(32, 16) float32 P('fsdp', 'tensor')"  # 2 KV heads / 2
    assert tiny["params.llm.layers.*.input_norm.scale"] == "(32,) float32 P()"  # small: replicated
    assert tiny["frozen.vision.layers.*.mlp.fc1.kernel"] == "(32, 64) bfloat16 P('fsdp', 'tensor')"
    assert big["params.llm.embed.embedding"] == "(151936, 2048) float32 P(None, 'fsdp')"
    assert big["params.llm.layers.*.attn.k.kernel"] == "(2048, 256) float32 P('fsdp', None)"  # 2 MiB: sharded
    assert big["params.llm.layers.*.attn.k.bias"] == "(256,) float32 P()"
    assert big["params.connector.latents"] == "(32, 2048) float32 P()"  # 256 KiB: replicated
    assert big["frozen.vision.layers.*.attn.q.kernel"] == "(1152, 1152) bfloat16 P('fsdp', None)"
    assert all(" float32 " in v for k, v in big.items() if k.startswith("params."))
    assert all(" bfloat16 " in v for k, v in big.items() if k.startswith("frozen."))


@pytest.mark.parametrize("which", ["tiny", "qwen3b"])
def test_optimizer_state_is_sharded_like_its_parameters(which, request):
    _, state, shardings = tiny_layout() if which == "tiny" else request.getfixturevalue("qwen3b")
    params = {path_name(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
        shardings.params, is_leaf=lambda s: isinstance(s, NamedSharding))}
    moments = 0
    for p, s in jax.tree_util.tree_leaves_with_path(shardings.opt_state,
                                                   is_leaf=lambda s: isinstance(s, NamedSharding)):
        name = path_name(p)
        m = re.match(r".*\.(mu|nu)\.(.*)$", name)
        if m:
            assert s.spec == params[m.group(2)], name
            moments += 1
    assert moments == 2 * len(params)
    assert any(spec != P() for spec in params.values())


def test_frozen_parameters_are_stored_in_the_compute_dtype(qwen3b):
    cfg, state, _ = qwen3b
    assert cfg.llm.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(state.frozen)} == {np.dtype("bfloat16")}
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    assert set(state.frozen.keys()) == {"vision"} and set(state.params.keys()) == {"connector", "llm"}


def test_fsdp8_holds_an_eighth_of_the_trained_state_per_device(qwen3b):
    cfg, state, fsdp = qwen3b
    dp = layout(cfg, state, abstract_mesh(8, 1, 1, 8), SMALL_TENSOR_BYTES)
    trained = lambda sh: per_device_bytes(state.params, sh.params) + per_device_bytes(state.opt_state,  # noqa: E731
                                                                                      sh.opt_state)
    assert 7.5 < trained(dp) / trained(fsdp) <= 8


# ---- batches and placement (one process: the identity) -----------------------------------------------------------

def test_global_batch_from_process_rows_on_one_process():
    mesh = make_mesh(2, 2, 2)
    assert process_rows(mesh, 8) == slice(0, 8)
    with pytest.raises(ValueError, match="does not split over data x fsdp = 4"):
        process_rows(mesh, 6)
    local = {"ids": np.arange(16, dtype=np.int32).reshape(8, 2), "mask": np.ones((8, 2), bool)}
    arrays = global_batch(local, mesh, keys=("ids", "absent"))
    assert list(arrays) == ["ids"]
    assert arrays["ids"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(arrays["ids"]), local["ids"])


def test_hybrid_mesh_needs_one_group_per_process_or_slice():
    with pytest.raises(ValueError, match=r"dcn_data=2 but the devices span 1 process\(es\)"):
        make_mesh(2, 4, 1, dcn_data=2)
    with pytest.raises(ValueError, match="data=1 does not split into dcn_data=2 groups"):
        make_mesh(1, 8, 1, dcn_data=2)


def test_place_puts_host_arrays_on_their_shardings():
    mesh = make_mesh(1, 4, 2)
    tree = {"w": np.arange(64, dtype=np.float32).reshape(8, 8), "step": np.int32(3)}
    shardings = {"w": NamedSharding(mesh, P("fsdp", "tensor")), "step": NamedSharding(mesh, P())}
    placed = place(tree, shardings)
    assert placed["w"].sharding == shardings["w"] and placed["w"].addressable_shards[0].data.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(placed["w"]), tree["w"])
    assert int(placed["step"]) == 3
