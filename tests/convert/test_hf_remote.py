"""Every PyTorch export loads with transformers alone: `AutoModelForCausalLM` / `AutoProcessor` with
`trust_remote_code=True` in an interpreter where tlv_jax and the original code cannot be imported
(`remote_checks.py`, one subprocess per group of checks). The upstream fixtures, converted to ours and exported
back, reproduce the original's logits, batched logits (two videos of different frame counts), loss and greedy tokens;
variants with the mlp2x_gelu connector and a Qwen3 decoder match our own forward; and the processor + model answer
questions about an mp4 exactly as `tlv_jax.load(...).generate(...)` does, for the fixtures and for a model trained by
the CPU demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tlv_jax
from tlv_jax.convert import jax2torch, torch2jax
from tlv_jax.convert.hf_remote import AUTO_MAP, FILES
from tlv_jax.convert.layouts import copy_side_files
from tlv_jax.convert.orbax_io import inference_defaults, iter_model_params, save_params, write_meta
from tlv_jax.data.synthetic import write_video

from . import FIXTURES

QUESTIONS = ["What is happening in the video?", "What colour is the square?"]
NEW_TOKENS = 8
INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "batch_input_ids", "batch_attention_mask",
          "batch_labels", "batch_pixel_values_1", "gen_input_ids")


def run_isolated(jobs: list[dict], tmp: Path) -> list[dict[str, np.ndarray]]:
    """Runs `remote_checks.py` on `jobs` in `python -I` from an empty directory; returns each job's results."""
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    script = shutil.copy(Path(__file__).with_name("remote_checks.py"), cwd / "remote_checks.py")
    for i, job in enumerate(jobs):
        job["out"] = str(tmp / f"out-{i}.npz")
    (cwd / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, "-I", script, "jobs.json"], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(np.load(job["out"])) for job in jobs]


def mp4(path: Path, frames: int = 40) -> Path:
    """A smooth moving pattern, 64 x 48, whose sampled frames all differ."""
    y, x = np.mgrid[0:48, 0:64]
    video = np.stack([np.stack([(x * 4 + t * 6) % 256, (y * 5 + t * 3) % 256, ((x + y) * 2 + t * 9) % 256], -1)
                      for t in range(frames)]).astype(np.uint8)
    return write_video(path, video)


def perturbed_like(arr: np.ndarray, rng: np.random.Generator, name: str) -> np.ndarray:
    """A random tensor whose outputs are far from ties: norm scales near 1, biases small, matrices 1/sqrt(fan-in)."""
    if name == "scale":
        return (1 + 0.1 * rng.standard_normal(arr.shape)).astype(arr.dtype)
    if arr.ndim == 1:
        return (0.1 * rng.standard_normal(arr.shape)).astype(arr.dtype)
    return (rng.standard_normal(arr.shape) / np.sqrt(arr.shape[0])).astype(arr.dtype)


def variant(ours: Path, dst: Path, edit: dict) -> Path:
    """Our checkpoint `ours` with config.json fields replaced by `edit`: tensors that keep their path and shape are
    kept, the others are drawn at random."""
    from flax import nnx

    from tlv_jax.models.tinyllava import TinyLlavaVideo
    from tlv_jax.models.tinyllava_config import TinyLlavaConfig

    cfg = TinyLlavaConfig.from_dict({**json.loads((ours / "config.json").read_text()), **edit})
    kept = dict(iter_model_params(tlv_jax.load_model(ours)))
    rng = np.random.default_rng(0)
    params = [(p, kept[p] if p in kept and kept[p].shape == a.shape else perturbed_like(a, rng, p[-1]))
              for p, a in iter_model_params(TinyLlavaVideo(cfg.model, rngs=nnx.Rngs(0)))]
    dst.mkdir()
    cfg.save(dst)
    copy_side_files(ours, dst)
    write_meta(dst, {"kind": "tinyllava", "dtype": "float32", "defaults": inference_defaults("qwen2_base", 16, 16)})
    save_params(dst, iter(params))
    return dst


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fixtures_dir):
    """{name: (our checkpoint, its PyTorch export)} for each upstream fixture and two variants of qwen2-group-f16."""
    root = tmp_path_factory.mktemp("remote")
    out = {}
    for name in FIXTURES:
        ours = torch2jax.convert(fixtures_dir / name / "finetune", root / f"{name}-ours", progress=False)
        out[name] = ours, jax2torch.convert(ours, root / f"{name}-torch", progress=False)
    base = out["qwen2-group-f16"][0]
    qwen3 = dict(json.loads((base / "config.json").read_text())["text_config"], model_type="qwen3",
                 architectures=["Qwen3ForCausalLM"], head_dim=8, rms_norm_eps=1e-6)
    for name, edit in (("mlp2x_gelu", {"connector_type": "mlp2x_gelu"}),
                       ("qwen3", {"text_config": qwen3})):
        ours = variant(base, root / f"{name}-ours", edit)
        out[name] = ours, jax2torch.convert(ours, root / f"{name}-torch", progress=False)
    return out


def test_export_carries_the_modeling_code_and_the_original_model_type(exported, fixtures_dir, tmp_path):
    """The original's loader still reads config.json (its fields: test_jax2torch); transformers finds the code. A
    pretrain-stage export, which transformers cannot load as one model, gets none."""
    ours, export = exported["qwen2-group-f16"]
    config = json.loads((export / "config.json").read_text())
    original = json.loads((fixtures_dir / "qwen2-group-f16" / "finetune" / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == original["model_type"] == "tinyllava"
    for name in FILES:
        source = (Path(jax2torch.__file__).parent / "hf_remote" / name).read_text()
        assert (export / name).read_text() == source and "tlv_jax" not in source
    again = torch2jax.convert(export, tmp_path / "ours", progress=False)  # an export read back and written again
    pretrain = jax2torch.convert(again, tmp_path / "pretrain", layout="pretrain", progress=False)
    assert "auto_map" not in json.loads((pretrain / "config.json").read_text()) and not (pretrain / FILES[0]).exists()
    assert json.loads((jax2torch.convert(again, tmp_path / "published", progress=False) / "config.json").read_text()
                      )["auto_map"] == AUTO_MAP
    processor = json.loads((export / "processor_config.json").read_text())
    assert processor["num_frames"] == processor["max_frames"] == 16
    assert processor["prompt_format"].endswith(" USER: <image>\n{question} ASSISTANT:")


def test_fixtures_and_variants_through_transformers_alone(exported, fixtures_dir, tmp_path):
    video = mp4(tmp_path / "clip.mp4")
    jobs = []
    for name, (ours, export) in exported.items():
        np.savez(tmp_path / f"{name}.npz", **{k: fixture_arrays(fixtures_dir, name)[k] for k in INPUTS})
        jobs.append({"dir": str(export), "inputs": str(tmp_path / f"{name}.npz"), "max_new_tokens": NEW_TOKENS})
        if name in FIXTURES:
            jobs[-1].update(video=str(video), questions=QUESTIONS)
    for (name, (ours, _)), got in zip(exported.items(), run_isolated(jobs, tmp_path)):
        model = tlv_jax.load(ours)
        want = expected_outputs(name, model, fixture_arrays(fixtures_dir, name))
        for key, value in want.items():
            assert got[key].shape == value.shape, (name, key)
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-5 if key != "gen_output_ids" else 0,
                                       err_msg=f"{name} {key}")
        if name in FIXTURES:
            assert_answers_as_ours(got, model, [str(video)] * len(QUESTIONS), QUESTIONS)
            assert list(got["errors"]) == ["2 videos for 3 questions: give one, or one per question",
                                           "sample 0 has 2 video placeholders; one video per sample is supported"]


def assert_answers_as_ours(got: dict[str, np.ndarray], model: tlv_jax.LoadedModel, videos: list[str],
                           questions: list[str]) -> None:
    """The processor's ids and frames are ours, the model's first-step logits are our forward's at the prompt's
    end, and the decoded answers are `generate`'s."""
    gen = model.generator
    ids, mask = gen.prompt_ids(questions)
    for i in range(len(questions)):
        assert got["input_ids"][i][got["attention_mask"][i] == 1].tolist() == ids[i][mask[i]].tolist(), i
        np.testing.assert_allclose(got["video"][i], gen.frames(videos[i]).transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    frames = [f.transpose(0, 2, 3, 1) for f in got["video"]]
    logits = np.asarray(model.forward(got["input_ids"], frames, got["attention_mask"]).logits)
    last = got["attention_mask"].sum(1) - 2 + model.model.cfg.video_tokens(len(frames[0]))
    np.testing.assert_allclose(got["first_logits"], logits[np.arange(len(last)), last], rtol=0, atol=1e-5)
    assert list(got["answers"]) == model.generate(videos, questions, max_new_tokens=NEW_TOKENS)


def fixture_arrays(fixtures_dir: Path, name: str):
    """The fixture's reference.npz (the variants reuse qwen2-group-f16's inputs)."""
    return np.load(fixtures_dir / (name if name in FIXTURES else "qwen2-group-f16") / "reference.npz")


def expected_outputs(name: str, model: tlv_jax.LoadedModel, ref) -> dict[str, np.ndarray]:
    """The original's outputs for a fixture; for the variants, which the original cannot run, our forward's on the
    batch of two samples with 16 and 3 frames."""
    if name in FIXTURES:
        return {k: ref[k] for k in ("logits", "batch_logits", "loss", "batch_loss", "gen_output_ids")}
    frames = [ref["pixel_values"][0].transpose(0, 2, 3, 1), ref["batch_pixel_values_1"].transpose(0, 2, 3, 1)]
    batch = model.forward(ref["batch_input_ids"], frames, ref["batch_attention_mask"], ref["batch_labels"])
    return {"batch_logits": np.asarray(batch.logits), "batch_loss": np.asarray(batch.loss)}
