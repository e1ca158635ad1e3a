"""The lmms-eval plugin: lmms-eval finds `tlv_jax` through its `lmms_eval.models` entry points and runs local tasks
(a task YAML over a local JSON dataset of generated videos and images, offline) whose answers equal our `generate`;
`loglikelihood` is the continuation's log-probability under the forward pass; multi-round generation feeds each
round's answer to the task's next prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .fixtures import level, write_video
from .lmms_runner import alias_filelock_api, hide_broken_torchvision

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("lmms_runner.py")
SAMPLING = dict(num_frames=4, max_frames=4)
NEW_TOKENS = 5
UNTIL = "###"

UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [doc["video"]] if doc["video"] else [Image.open(doc["image"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip() == doc["answer"])}
'''

TASK = '''task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {tokens}
  until: ["{until}"]
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
'''


@pytest.fixture(scope="module")
def model_dir(fixtures_dir) -> Path:
    return fixtures_dir / "qwen2-group-f16" / "finetune"


@pytest.fixture(scope="module")
def loaded(model_dir):
    import tlv_jax

    return tlv_jax.load(model_dir)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    """Three videos and two images (each frame a different grey level so answers can differ), questions on each."""
    root = tmp_path_factory.mktemp("lmms_data")
    rows = []
    for i in range(3):
        video = write_video(root / f"v{i}.mp4", num_frames=6 + 3 * i)
        rows.append(dict(id=i, video=str(video), image="", question=f"What happens in clip {i}?", answer="A"))
    for i in range(2):
        image = root / f"i{i}.png"
        Image.fromarray(np.full((24, 40, 3), level(3 * i + 2), np.uint8)).save(image)
        rows.append(dict(id=3 + i, video="", image=str(image), question=f"<image>\nDescribe picture {i}.", answer="B"))
    return rows


def write_tasks(root: Path, docs: list[dict]) -> Path:
    """Two tasks (videos, images) over local JSON files, and an entry-point record naming the plugin."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "utils.py").write_text(UTILS)
    for name, rows in (("tlv_local_video", docs[:3]), ("tlv_local_image", docs[3:])):
        data = root / f"{name}.json"
        data.write_text(json.dumps(rows))
        (tasks / f"{name}.yaml").write_text(TASK.format(name=name, data=data, tokens=NEW_TOKENS, until=UNTIL))
    # What `pip install -e .[lmms]` registers (setup.py's entry point), for a checkout installed without it.
    info = root / "entry_points" / "tlv_jax_lmms_entry-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tlv-jax-lmms-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\ntlv_jax = tlv_jax.evaluate.lmms_plugin:manifest\n")
    return tasks


def test_lmms_eval_runs_local_tasks_through_the_plugin_with_our_answers(tmp_path, model_dir, loaded, docs):
    from tlv_jax.generate import VideoSampling

    tasks = write_tasks(tmp_path, docs)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'entry_points'}{os.pathsep}{ROOT}", JAX_PLATFORMS="cpu",
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf_cache"))
    env.pop("XLA_FLAGS", None)
    args = ",".join(f"{k}={v}" for k, v in SAMPLING.items())
    proc = subprocess.run([sys.executable, str(RUNNER), "--model", "tlv_jax", "--model_args",
                           f"pretrained={model_dir},{args}", "--tasks", "tlv_local_video,tlv_local_image",
                           "--include_path", str(tasks), "--log_samples", "--output_path", str(tmp_path / "out"),
                           "--batch_size", "1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    sampling = VideoSampling(**SAMPLING)
    for name, rows in (("tlv_local_video", docs[:3]), ("tlv_local_image", docs[3:])):
        (path,) = (tmp_path / "out").rglob(f"*samples_{name}.jsonl")
        samples = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == list(range(len(rows)))
        for sample, row in zip(samples, rows):
            video = row["video"] or [Image.open(row["image"]).convert("RGB")]
            ours = loaded.generate(video, row["question"].replace("<image>", "").strip(), max_new_tokens=NEW_TOKENS,
                                   stop=[UNTIL], sampling=sampling)
            assert sample["filtered_resps"] == ours, (name, row["id"])


@pytest.fixture(scope="module")
def plugin(model_dir):
    hide_broken_torchvision()  # as the runner does: lmms_eval imports transformers' pipelines
    alias_filelock_api()
    from tlv_jax.evaluate.lmms_plugin import TlvJax

    return TlvJax(pretrained=str(model_dir), **SAMPLING)


def request(kind: str, args: tuple, doc_id: int):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata=dict(task="local", doc_id=doc_id, repeats=1))


def test_loglikelihood_is_the_log_probability_of_the_continuation(plugin, loaded, docs):
    import jax

    from tlv_jax.data.templates import eval_prompt_ids
    from tlv_jax.generate import VideoSampling

    plugin.task_dict = {"local": {"test": docs}}
    visual = lambda doc: [doc["video"]]  # noqa: E731
    greedy = loaded.generate(docs[0]["video"], "Say something.", max_new_tokens=3, sampling=VideoSampling(**SAMPLING))
    continuations = [greedy, " a yellow submarine"]
    results = plugin.loglikelihood([request("loglikelihood", ("Say something.", c, visual, 0, "local", "test"), 0)
                                    for c in continuations])

    gen = loaded.generator
    for (logprob, is_greedy), text in zip(results, continuations):
        prompt = eval_prompt_ids("Say something.", gen.tokenizer, gen.template).input_ids
        target = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
        pixels = gen.frames(docs[0]["video"], VideoSampling(**SAMPLING))
        logits = loaded.forward(np.concatenate([prompt, target])[None], [pixels]).logits[0, -len(target) - 1:-1]
        log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        assert logprob == pytest.approx(float(log_probs[np.arange(len(target)), target].sum()), rel=1e-4, abs=1e-4)
        assert is_greedy == bool((log_probs.argmax(-1) == target).all())


def test_multi_round_feeds_each_answer_to_the_next_prompt(plugin, loaded, docs):
    from tlv_jax.generate import VideoSampling

    plugin.task_dict = {"local": {"test": docs}}
    asked = []

    def next_round(doc, previous_output, round_idx, previous_round_info):
        asked.append((round_idx, list(previous_output), previous_round_info))
        if round_idx == 3:
            return None, None, True, previous_output, None
        return [docs[1]["video"]], f"Round {round_idx}: you said {previous_output[-1]!r}.", False, previous_output, \
            round_idx

    kwargs = dict(max_new_tokens=4, until=[UNTIL])
    (rounds,) = plugin.generate_until_multi_round([request(
        "generate_until_multi_round", ("First round.", kwargs, lambda doc: [doc["video"]], next_round, 0, "local",
                                       "test"), 0)])
    sampling = VideoSampling(**SAMPLING)
    expected = [loaded.generate(docs[0]["video"], "First round.", max_new_tokens=4, stop=[UNTIL], sampling=sampling)]
    for i in (1, 2):
        expected.append(loaded.generate(docs[1]["video"], f"Round {i}: you said {expected[-1]!r}.", max_new_tokens=4,
                                        stop=[UNTIL], sampling=sampling))
    assert list(rounds) == expected
    assert [(i, len(previous), info) for i, previous, info in asked] == [(1, 1, None), (2, 2, 1), (3, 3, 2)]
