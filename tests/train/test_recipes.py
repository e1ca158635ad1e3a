"""The original recipes, shrunk to a few steps on tiny models (8 CPU devices, data parallel): pretrain from Hugging
Face backbones trains only the connector, finetune from the pretrain output trains LLM and connector, frozen weights
come out bit for bit, accumulation equals a larger batch, a NaN stops the run keeping the last good checkpoint, and a
config typo is a clear error."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tlv_jax.convert.orbax_io import ParamsReader, read_meta
from tlv_jax.train import loop
from tlv_jax.train.config_file import load_config
from tlv_jax.train.metrics import read_jsonl

from . import tiny_run

CONFIGS = tiny_run.ROOT / "configs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    qa, caption, tokenizer = tiny_run.make_data(root / "data")
    vision_dir, llm_dir = tiny_run.make_hf_backbones(root, tokenizer)
    return dict(root=root, data=root / "data", qa=qa, caption=caption, vision=vision_dir, llm=llm_dir)


def params_of(model_dir):
    reader = ParamsReader(model_dir)
    return {".".join(map(str, p)): reader.get(p) for p in reader.keys()}


def component(params, name):
    return {k: v for k, v in params.items() if k.startswith(name + ".")}


@pytest.fixture(scope="module")
def pretrained(setup):
    cfg = load_config(CONFIGS / "pretrain_qwen25_3b_group16.py")
    tiny_run.shrink(cfg, setup["data"], setup["caption"], steps=3)
    cfg.model.update(dict(llm_path=str(setup["llm"]), vision_path=str(setup["vision"])))
    cfg.export.dtype = "float32"  # the recipes export bf16 like the published models; fp32 compares bit for bit
    workdir = setup["root"] / "pretrain"
    result = loop.train(cfg, workdir)
    return result, workdir


def test_pretrain_trains_only_the_connector_and_exports_both_layouts(setup, pretrained):
    result, workdir = pretrained
    assert result.step == 3 and result.stopped == "done"
    ours = params_of(result.model_dir)
    # Frozen SigLIP and LLM: exactly the Hugging Face weights (float32 run), also in the PyTorch export.
    hf_llm = load_file(setup["llm"] / "model.safetensors")
    np.testing.assert_array_equal(ours["llm.layers.0.mlp.gate.kernel"], hf_llm["model.layers.0.mlp.gate_proj.weight"].T)
    exported = {}
    for f in sorted(result.export_dir.glob("*.safetensors")):
        exported.update(load_file(f))
    hf_vis = load_file(setup["vision"] / "model.safetensors")
    for key, value in hf_vis.items():
        if "encoder.layers" in key:
            name = "vision_tower._vision_tower." + (key if key.startswith("vision_model.") else "vision_model." + key)
            assert exported[name].dtype == np.float32
            np.testing.assert_array_equal(exported[name], value, err_msg=key)
    np.testing.assert_array_equal(exported["language_model.model.norm.weight"], hf_llm["model.norm.weight"])
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] > 0  # HF warm-up: the first update uses lr 0
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_a_finished_run_extended_resumes_its_frozen_parts_from_the_checkpoint(setup, pretrained):
    workdir = setup["root"] / "pretrain_extended"
    shutil.copytree(pretrained[1], workdir)
    before = params_of(workdir / "model")
    cfg = load_config(CONFIGS / "pretrain_qwen25_3b_group16.py")
    tiny_run.shrink(cfg, setup["data"], setup["caption"], steps=4)
    cfg.model.update(dict(llm_path=str(setup["llm"]), vision_path=str(setup["vision"])))
    cfg.export.torch = False
    extended = loop.train(cfg, workdir)  # resumes at step 3 from an abstract model: nothing is loaded from HF
    assert extended.step == 4 and [r["step"] for r in read_jsonl(workdir / "metrics.jsonl")] == [1, 2, 3, 4]
    after = params_of(extended.model_dir)
    for k in component(before, "llm"):
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert any(not np.array_equal(after[k], v) for k, v in component(before, "connector").items())


def finetune(setup, pretrained, name, global_batch, micro_batch, steps=2):
    cfg = load_config(CONFIGS / "finetune_qwen25_3b_group16.py")
    tiny_run.shrink(cfg, setup["data"], setup["qa"], steps=steps, global_batch=global_batch, micro_batch=micro_batch)
    cfg.model.pretrained_path = str(pretrained[1] / "model")
    cfg.export.torch = False
    return loop.train(cfg, setup["root"] / name), setup["root"] / name


@pytest.fixture(scope="module")
def finetuned_k2(setup, pretrained):
    return finetune(setup, pretrained, "finetune_k2", global_batch=8, micro_batch=4)


def test_finetune_trains_llm_and_connector_and_keeps_vision_bit_exact(pretrained, finetuned_k2):
    result, _ = finetuned_k2
    before, after = params_of(pretrained[0].model_dir), params_of(result.model_dir)
    for k, v in component(before, "vision").items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    for name in ("llm", "connector"):
        moved = [k for k, v in component(before, name).items() if not np.array_equal(after[k], v)]
        assert len(moved) > len(component(before, name)) // 2, name


def test_exported_models_answer_with_the_frames_and_template_they_were_trained_on(pretrained, finetuned_k2):
    """tlv_jax.json `defaults` (what generation and evaluation read) follow the run's data config; the pretrain
    stage's captioning template has no generation prompt, so that model answers with its family's chat template."""
    for result, workdir in (pretrained, finetuned_k2):
        run = json.loads((workdir / "config.json").read_text())
        assert read_meta(result.model_dir)["defaults"] == {
            "template": "qwen2_base", "num_frames": run["data"]["num_frames"], "max_frames": run["data"]["num_frames"]}
    assert json.loads((pretrained[1] / "config.json").read_text())["data"]["template"] == "pretrain"


def test_accumulating_micro_batches_equals_one_larger_batch(setup, pretrained, finetuned_k2):
    k2, w2 = finetuned_k2
    k1, w1 = finetune(setup, pretrained, "finetune_k1", global_batch=8, micro_batch=8)
    l2 = [r["loss"] for r in read_jsonl(w2 / "metrics.jsonl")]
    l1 = [r["loss"] for r in read_jsonl(w1 / "metrics.jsonl")]
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    a, b = params_of(k2.model_dir), params_of(k1.model_dir)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5


@pytest.mark.parametrize("log_every, save_every, last_good, saved", [
    (1, 1, "step 1", ["1"]),
    (100, 3, "none", []),  # step 2 is neither logged nor saved: its NaN is still caught before step 3 is saved
])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(setup, pretrained, log_every, save_every, last_good,
                                                           saved):
    cfg = load_config(CONFIGS / "finetune_qwen25_3b_group16.py")
    tiny_run.shrink(cfg, setup["data"], setup["qa"], steps=4)
    cfg.model.pretrained_path = str(pretrained[1] / "model")
    cfg.optim.update(dict(lr=1e30, warmup_ratio=0.0, clip=0.0))  # the first update blows the weights up
    cfg.log.every, cfg.checkpoint.every = log_every, save_every
    workdir = setup["root"] / f"nan_{log_every}_{save_every}"
    with pytest.raises(loop.TrainingDiverged, match=rf"at step 2; stopped without saving it, the last good "
                                                    rf"checkpoint is {last_good}"):
        loop.train(cfg, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == saved
    assert not (workdir / "model").exists()


def test_config_typo_is_one_clear_error_listing_the_valid_keys():
    r = subprocess.run([sys.executable, "-m", "tlv_jax.train", "--config", str(CONFIGS / "demo.py"), "--workdir",
                        "/nonexistent", "--config.optim.lrr=2e-5"], capture_output=True, text=True,
                       cwd=tiny_run.ROOT, env=tiny_run.cli_env())
    assert r.returncode == 2
    assert "unknown config key 'optim.lrr'" in r.stderr
    assert "Valid keys at optim: b1, b2, clip, eps, lr, schedule, warmup_ratio, weight_decay" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "tlv_jax.train", "--config", str(CONFIGS / "demo.py"), "--workdir",
                        "/nonexistent", "--config.modle.dtype=float32"], capture_output=True, text=True,
                       cwd=tiny_run.ROOT, env=tiny_run.cli_env())
    assert r.returncode == 2 and "Valid keys at the top level: checkpoint, data, demo, export" in r.stderr

