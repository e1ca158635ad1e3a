"""The memory planner: exact parameter counts of the published architectures from presets (no weights), per-device
bytes that drop ~8x from pure data parallel to fsdp=8, a fit verdict per accelerator, XLA's memory analysis with
--compile, and clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

from tlv_jax import plan
from tlv_jax.models.connectors import build_connector

ROOT = Path(__file__).resolve().parents[1]
GROUP = ROOT / "configs" / "finetune_qwen25_3b_group16.py"
NAIVE = ROOT / "configs" / "finetune_qwen25_3b_naive16.py"


@pytest.fixture(scope="module")
def group_plans():
    """The Qwen2.5-3B group-16 finetune on 8 devices: pure data parallel and fsdp=8 (one abstract build)."""
    config = plan.load_config(GROUP)
    return {mesh: plan.plan(config, mesh, accelerator="h100") for mesh in [(8, 1, 1), (1, 8, 1)]}


def test_parameter_counts_equal_the_published_model(group_plans):
    """The published sizes (the SigLIP count includes its unused attention-pooling head, as the checkpoint does)."""
    counts = group_plans[(1, 8, 1)].counts
    assert counts == {"vision": 428_225_600, "connector": 115_714_048, "llm": 3_085_938_688}
    assert group_plans[(1, 8, 1)].trained == {"vision": False, "connector": True, "llm": True}


def test_naive_connector_count():
    cfg = plan.model_config(plan.load_config(NAIVE))
    assert (cfg.connector.kind, cfg.connector.num_queries, cfg.connector.hidden_size) == ("naive", 512, 2048)
    connector = nnx.eval_shape(lambda: build_connector(cfg.connector, rngs=nnx.Rngs(0)))
    assert sum(v.size for _, v in nnx.to_flat_state(nnx.state(connector, nnx.Param))) == 116_697_088


def test_fsdp8_cuts_parameter_and_optimizer_bytes_per_device_about_8x(group_plans):
    dp, fsdp = group_plans[(8, 1, 1)], group_plans[(1, 8, 1)]
    held = lambda p: p.row("parameters") + p.row("optimizer")  # noqa: E731
    assert 7.5 < held(dp) / held(fsdp) <= 8
    # Pure data parallel: every device holds all 3.2 B trained fp32 parameters and both Adam moments.
    trained = dp.counts["connector"] + dp.counts["llm"]
    assert dp.row("parameters, trained") == trained * 4
    assert 0 <= dp.row("optimizer") - trained * 8 < 64  # m and v, plus AdamW's scalar step counter
    assert dp.row("parameters, frozen") == dp.counts["vision"] * 2  # bf16
    assert fsdp.activations_source == dp.activations_source == "estimate"
    assert fsdp.row("activations") == dp.row("activations")  # same rows per device on both meshes
    assert fsdp.fits and fsdp.total < dp.total


def test_a_packed_recipe_is_planned_as_rows_of_max_length_with_a_video_slot_per_sample():
    config = plan.load_config(GROUP)
    cfg = plan.model_config(config)
    shapes, _ = plan.micro_shapes(config, cfg, (1, 1, 1))
    assert (shapes.seq, shapes.frames, shapes.videos) == (3072, 16, 4)  # the finetune recipes' 4 slots
    unpacked = dataclasses.replace(shapes, videos=1)
    freeze = dict(config.freeze)
    assert plan.activation_estimate(cfg, freeze, shapes, 1) > plan.activation_estimate(cfg, freeze, unpacked, 1)


def test_fit_verdict_per_accelerator():
    config = plan.load_config(GROUP)
    dp = plan.plan(config, (8, 1, 1), accelerator="v5e")
    assert dp.fits is False and "does NOT fit v5e (16 GiB HBM)" in plan.report(dp, "t")
    assert plan.plan(config, (1, 8, 1), accelerator="h200").fits
    assert plan.plan(config, (1, 8, 1)).fits is None


def test_lora_and_qlora_of_the_3b_finetune_on_one_24gb_gpu_and_one_v5e_chip():
    """The Factory's LoRA (r 128 on every LLM projection, connector in full): one 24 GB GPU holds it; a 16 GB v5e
    chip holds only the QLoRA int8 variant, at one sample per micro-batch (unpacked: a packed row's four videos
    do not fit the chip); the full finetune fits neither."""
    lora = plan.load_config(ROOT / "configs" / "finetune_qwen25_3b_group16_lora.py")
    qlora = plan.load_config(ROOT / "configs" / "finetune_qwen25_3b_group16_qlora.py")
    for config in (lora, qlora):
        config.train.micro_batch = 1
    packed = plan.plan(qlora, (1, 1, 1), accelerator="v5e")
    qlora.data.packing = False
    assert not packed.fits and packed.row("activations") > plan.plan(qlora, (1, 1, 1)).row("activations")
    p = plan.plan(lora, (1, 1, 1), accelerator="gpu24")
    adapters = 36 * 128 * (2 * (2048 + 2048) + 2 * (2048 + 256) + 3 * (2048 + 11008))  # r (in + out), 7 per layer
    assert p.counts["adapters"] == adapters and p.counts["llm"] == 3_085_938_688
    assert p.row("parameters, trained") == (adapters + p.counts["connector"]) * 4  # fp32 masters
    assert 0 <= p.row("optimizer") - (adapters + p.counts["connector"]) * 8 < 64  # moments of these only
    assert p.fits and p.max_micro_batch >= 1
    assert "largest micro-batch per device that fits" in plan.report(p, "t")
    assert not plan.plan(lora, (1, 1, 1), accelerator="v5e").fits
    q = plan.plan(qlora, (1, 1, 1), accelerator="v5e")
    assert q.fits and q.max_micro_batch >= 1
    assert q.row("parameters, frozen") < 0.65 * p.row("parameters, frozen")  # int8 kernels, bf16 embeddings/vision
    full = plan.load_config(GROUP)
    full.train.micro_batch = 1
    assert not plan.plan(full, (1, 1, 1), accelerator="gpu24").fits


def test_model_sizes_come_from_config_json_when_present(tmp_path):
    config = plan.load_config(GROUP)
    llm = tmp_path / "my-llm"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps(dict(
        model_type="qwen2", vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True)))
    config.model.llm_path = str(llm)
    cfg = plan.model_config(config)
    assert (cfg.llm.hidden_size, cfg.llm.vocab_size, cfg.connector.hidden_size) == (64, 1000, 64)
    assert cfg.vision.hidden_size == 1152  # still the preset: checkpoints/siglip-so400m-patch14-384 is absent


def test_clear_errors():
    config = plan.load_config(GROUP)
    with pytest.raises(ValueError, match="unknown accelerator 'a100'"):
        plan.plan(config, (1, 8, 1), accelerator="a100")
    with pytest.raises(ValueError, match="-1 axis: say how many devices with --devices"):
        plan.plan(config, (-1, 8, 1))
    m = config.train.micro_batch
    with pytest.raises(ValueError, match=f"micro_batch={m} does not split over data x fsdp = 64"):
        plan.plan(config, (8, 8, 1))
    config.model.llm_path = "checkpoints/unknown-llm"
    with pytest.raises(ValueError, match="no config.json there and no known architecture"):
        plan.model_config(config)


def test_cli_compiles_the_step_for_memory_analysis():
    """`--compile` on the demo recipe (tiny): the step is compiled for 8 fake CPU devices on a (2, 2, 2) mesh."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-m", "tlv_jax.plan", "--config", "configs/demo.py", "--mesh", "2,2,2", "--compile",
         "--accelerator", "v5e", "--config.train.micro_batch=16", "--config.model.scratch.llm.vocab_size=400"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "mesh data=2 fsdp=2 tensor=2 (8 devices)" in text
    temp = re.search(r"gradients \+ activations \+ temporaries \(compiled temp\)\s+([\d.]+) MiB", text)
    assert temp and float(temp.group(1)) > 0
    assert re.search(r"fits v5e \(16 GiB HBM\): \d+% used", text)
    assert "analytic estimate" not in text
