"""A LoRA run of the tiny scratch recipe: only the adapters train and are saved (no frozen base, no base moments in
the checkpoint), a resumed run logs the same losses as an uninterrupted one, a base that is not the one the
adapters were trained on stops the run before any step with one line naming the difference, and the export holds
the merged model plus the LLM's adapters in PEFT's format."""

import json
import shutil

import jax
import numpy as np
import pytest

from tlv_jax.lora.fingerprint import BaseMismatchError
from tlv_jax.train import loop
from tlv_jax.train.config_file import load_module
from tlv_jax.train.metrics import read_jsonl

from . import tiny_run


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_run")
    qa, _, tokenizer = tiny_run.make_data(root / "data", videos=16)
    path = tiny_run.write_scratch_config(root / "tiny.py", tokenizer, qa, root / "data")
    c = load_module(path).get_config()
    c.freeze.update(dict(llm="frozen", vision="frozen", connector="full"))
    c.lora.update(dict(rank=4, alpha=8.0, dropout=0.1))
    c.train.update(dict(num_steps=4, global_batch=8, micro_batch=4))  # 8 host devices; 2 accumulated micro-batches
    c.checkpoint.update(dict(every=2, keep=2, async_save=False))
    c.log.update(dict(tensorboard=False))
    return c


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora_workdir")
    result = loop.train(config, workdir)
    assert result.stopped == "done" and result.step == 4
    return workdir


def test_checkpoint_holds_what_trains_and_the_base_fingerprint(finished):
    step = finished / "checkpoints" / "4"
    keys = [eval(k) for k in json.loads((step / "state" / "_METADATA").read_text())["tree_metadata"]]
    assert [k for k in keys if k[0] == "frozen"] == [("frozen",)]  # empty: the base is rebuilt from the config
    params = {k[1:-1] for k in keys if k[0] == "params"}
    llm = {p for p in params if p[0] == "llm"}
    assert llm and all(p[-1] in ("kernel_lora_a", "kernel_lora_b") for p in llm)  # of the LLM, only adapters
    assert any(p[0] == "connector" for p in params)  # freeze.connector='full' trains in full
    moments = {k[1:] for k in keys if k[0] == "opt_state"}
    assert not any("embed" in k for k in moments)  # no optimizer state for the base
    base = json.loads((step / "base" / "metadata").read_text())
    assert base["lora"]["rank"] == 4 and "llm.layers.0.attn.q.kernel" in base["params"]


def test_resume_is_exact(config, finished, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(finished, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["step"] <= 2]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = loop.train(config, workdir)
    assert result.resumed_from == 2
    want = {r["step"]: r["loss"] for r in read_jsonl(finished / "metrics.jsonl")}
    got = {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")}
    assert [got[s] for s in (3, 4)] == [want[s] for s in (3, 4)]


@pytest.mark.parametrize("change, named", [(dict(seed=7), "differs"), (dict(lora_rank=8), "lora.rank")])
def test_another_base_is_refused_before_any_step(config, finished, tmp_path, change, named):
    workdir = tmp_path / "other"
    shutil.copytree(finished, workdir)
    other = config.copy_and_resolve_references()
    other.train.num_steps = 6
    if "seed" in change:
        other.seed = change["seed"]  # a scratch base drawn with another seed: another base
    else:
        other.lora.rank = change["lora_rank"]
    rows = len(read_jsonl(workdir / "metrics.jsonl"))
    with pytest.raises(BaseMismatchError, match=named) as e:
        loop.train(other, workdir)
    assert "\n" not in str(e.value)
    assert len(read_jsonl(workdir / "metrics.jsonl")) == rows
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]  # nothing set aside


def test_export_is_merged_model_and_peft_adapter(finished):
    adapter = finished / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["peft_type"] == "LORA"
    from safetensors.numpy import load_file

    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert (finished / "model" / "config.json").exists()
    import tlv_jax

    loaded = tlv_jax.load(finished / "model")
    names = [".".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(
        __import__("flax").nnx.state(loaded.model))[0]]
    assert not any("lora" in n for n in names)


def test_export_cli_restores_adapters_onto_the_rebuilt_base(finished, tmp_path):
    """`python -m tlv_jax.train.export --step 2` of a LoRA run: the base rebuilt and checked, step 2's adapters
    merged; its model differs from the final one (the adapters trained between)."""
    from tlv_jax.train import export

    workdir = tmp_path / "w"
    shutil.copytree(finished, workdir)
    final = (workdir / "adapter" / "adapter_model.safetensors").read_bytes()
    model_dir, _ = export.export_checkpoint(workdir, step=2)
    assert (model_dir / "config.json").exists()
    assert (workdir / "adapter" / "adapter_model.safetensors").read_bytes() != final
