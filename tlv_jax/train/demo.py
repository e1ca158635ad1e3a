"""The CPU demo: generate a synthetic video-QA set, train a BPE tokenizer on its text, train a tiny TinyLLaVA-Video
from scratch, then answer held-out multiple-choice questions (options in a shuffled order) on unseen videos.

Everything runs through the package's own parts: the videos are real mp4 files (`tlv_jax.data.synthetic`), decoded,
preprocessed and tokenised by the training pipeline's per-sample transform (once: the decoded set is small and stays
in memory, then Grain shuffles and batches it every epoch), trained by `loop.train` (checkpoints, metrics, export),
and evaluated from the exported checkpoint (`tlv_jax.load_model`). A question counts as right only when the model's
first generated token is the correct option letter (no fallback guess).

Outputs in the workdir: results.json (accuracy per question type, held-out count, chance, wall time), loss.png,
plus what every run writes (metrics.jsonl, tensorboard/, checkpoints/, model/, export/). Re-running resumes.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import psutil


EOS = "<|endoftext|>"
LETTERS = "ABCD"


# ---- data ----------------------------------------------------------------------------------------------------------

def generate(cfg: ml_collections.ConfigDict, data_dir: Path) -> tuple[Path, Path]:
    """Train and held-out annotation files (videos under data_dir/videos/); kept if already there. Both are
    multiple-choice as generated; the training questions are then answered in three ways (`answer_formats`)."""
    from tlv_jax.data.synthetic import generate_dataset

    out = []
    for split, n in (("train", cfg.train_videos), ("test", cfg.test_videos)):
        path = data_dir / f"{split}.json"
        if not path.exists():
            generate_dataset(data_dir, n, seed=cfg.seed, frames=cfg.frames, size=cfg.size, square=cfg.square,
                             question_types=tuple(cfg.question_types), split=split, answer_format="mc",
                             workers=cfg.workers)
        out.append(path)
    train = data_dir / "train_formats.json"
    if not train.exists():
        records = json.loads(out[0].read_text())
        train.write_text(json.dumps(answer_formats(records, dict(cfg.answer_formats), cfg.seed), indent=1))
    return train, out[1]


ANSWER_FORMATS = ("option", "open")


def answer_formats(records: Sequence[dict], weights: dict[str, float], seed: int) -> list[dict]:
    """Each multiple-choice record answered one way, drawn with `weights`: 'option' (the prompt as generated, the
    answer the whole chosen option line, 'B. cyan') or 'open' (the question without options, the open instruction,
    the answer text 'cyan').

    Why: the demo's tokenizer makes an option line one token (`train_tokenizer`), so an 'option' answer is a copy
    of one of the four option tokens in the prompt: choosing which one is what the model must learn from the
    video, while copying is what tied embeddings make easy. With the bare letter as the answer, nothing ties an
    option to its letter until the model already knows the answer, and nothing rewards knowing the answer before
    that tie exists (every option is pushed towards every letter alike), so the loss sits at chance for a long time.
    The 'open' answers teach what the video shows directly. Scoring reads the letter as the original evaluators
    do (`evaluate`)."""
    from tlv_jax.data.synthetic import MC_SUFFIX, OPEN_SUFFIX

    unknown = set(weights) - set(ANSWER_FORMATS)
    if unknown:
        raise ValueError(f"demo.answer_formats: unknown format {sorted(unknown)[0]!r}; expected {ANSWER_FORMATS}")
    names = sorted(weights)
    p = np.array([weights[n] for n in names], np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        fmt = names[rng.choice(len(names), p=p / p.sum())]
        lines = r["conversations"][0]["value"].split("\n")  # <image>, question, 4 options, letter instruction
        meta = r["meta"]
        if lines[-1] != MC_SUFFIX:
            raise ValueError(f"demo record {r.get('id')}: not a multiple-choice question")
        if fmt == "option":
            human, reply = r["conversations"][0]["value"], f"{meta['answer_letter']}. {meta['answer']}"
        else:
            human, reply = "\n".join([*lines[:2], OPEN_SUFFIX]), meta["answer"]
        out.append({**r, "meta": {**meta, "format": fmt},
                    "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]})
    return out


def train_tokenizer(records: Sequence[dict], template: str, vocab_size: int, out_dir: Path) -> Any:
    """A byte-level BPE trained on the training conversations as the template writes them, saved as a
    `PreTrainedTokenizerFast` (pad = eos = <|endoftext|>, as Qwen).

    Merges may cross spaces but never a newline, so a frequent line becomes one token: the question, and each option
    line. A space is normalised in after every newline, so an option line in the prompt ('\\n B. cyan') and the same
    option as an answer ('ASSISTANT: B. cyan') are the same token. The fixed boilerplate (the template's system
    prompt, the answer-format instructions, the ' ASSISTANT:' marker) are added tokens. On 2 CPU cores every sequence
    position costs; the model still has to read the video to know which option to answer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tlv_jax.data.synthetic import MC_SUFFIX, OPEN_SUFFIX
    from tlv_jax.data.templates import SYSTEM, build_prompt, get_template, split_conversation

    if (out_dir / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out_dir))
    tmpl = get_template(template)
    corpus = []
    for r in records:
        questions, answers = split_conversation(r["conversations"])
        corpus.append(build_prompt(questions, answers, tmpl).replace("<image>", " "))
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Replace("\n", "\n ")
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([EOS])
    bpe.add_tokens([AddedToken(text, normalized=False) for text in (SYSTEM, MC_SUFFIX, OPEN_SUFFIX, " ASSISTANT:")])
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=EOS, model_max_length=4096)
    tok.save_pretrained(str(out_dir))
    return tok


def preprocess_all(records: list[dict], loader_cfg: Any, queries: int, video_dir: Path) -> list[dict]:
    """Every sample decoded, preprocessed and tokenised once by the pipeline's own transform (2 threads)."""
    from tlv_jax.data.pipeline import ProcessSample, sample_id

    elements = [{"record": r, "video_dir": str(video_dir), "id": sample_id(r, i), "sample_index": i}
                for i, r in enumerate(records)]
    ds = grain.MapDataset.source(elements).map(ProcessSample(loader_cfg, queries))
    samples = list(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=256)))
    bad = [s["bad"] for s in samples if "bad" in s]
    if bad:
        raise RuntimeError(f"{len(bad)} demo samples could not be used, e.g. {bad[0]}")
    return samples


class Collate:
    """A list of processed samples -> one padded batch (the pipeline's collator, fixed width)."""

    def __init__(self, pad_id: int, eos_id: int, width: int):
        self.pad_id, self.eos_id, self.width = pad_id, eos_id, width

    def __call__(self, samples: Sequence[dict]) -> dict[str, np.ndarray]:
        from tlv_jax.data.templates import collate

        text = collate([s["input_ids"] for s in samples], [s["labels"] for s in samples], self.pad_id, self.eos_id,
                       pad_to=self.width)
        return {**text, "pixel_values": np.stack([s["pixel_values"] for s in samples]),
                "frames_mask": np.stack([s["frames_mask"] for s in samples])}


def curriculum_batches(samples: list[dict], types: Sequence[str], curriculum: dict[str, Any], batch_size: int,
                       num_steps: int, collate: Callable[[Sequence[dict]], Any], seed: int) -> grain.MapDataset:
    """The run's batches in order: the first `curriculum['steps']` drawn from samples of
    `curriculum['question_types']` plus enough of the other samples to make them `curriculum['share']` (default 1:
    none) of that part, then (or from the start, without a curriculum) from every sample; each part shuffled epoch
    after epoch. One finite dataset, so the loader's position in it is the whole checkpointed state.

    Why (README "The CPU demo"): among the other types from the start, direction stays at chance; alone for its first
    300 steps it is learned and kept, but then colour, order and colour change stay at 36-46%: whichever the small
    model learns first holds the other back. At a 90% share, the other types' 10% keep their features alive while
    direction is learned, and all four are learned (a 75% share: direction stays at chance)."""
    steps = int(curriculum.get("steps", 0))
    chosen = tuple(curriculum.get("question_types", ()))
    parts = []
    if steps:
        subset = [s for s, t in zip(samples, types) if t in chosen]
        if not subset:
            raise ValueError(f"demo.curriculum.question_types={chosen}: no training question of these types "
                             f"(the set has {sorted(set(types))})")
        share = float(curriculum.get("share", 1.0))
        if not 0.0 < share <= 1.0:
            raise ValueError(f"demo.curriculum.share={share}: the chosen types' share of the first batches must be "
                             "in (0, 1]")
        others = [s for s, t in zip(samples, types) if t not in chosen]
        keep = min(len(others), round(len(subset) * (1 - share) / share))
        subset += [others[i] for i in np.random.default_rng(seed).permutation(len(others))[:keep]]
        parts.append(_batches(subset, -(-steps * batch_size // len(subset)), batch_size, collate, seed)[:steps])
    rest = max(num_steps - steps, 1)
    parts.append(_batches(samples, -(-rest * batch_size // len(samples)) + 1, batch_size, collate, seed))
    return grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]


def _batches(samples: list[dict], epochs: int, batch_size: int, collate: Callable[[Sequence[dict]], Any],
             seed: int) -> grain.MapDataset:
    return (grain.MapDataset.source(samples).shuffle(seed=seed).repeat(epochs)
            .batch(batch_size, drop_remainder=True, batch_fn=collate))


# ---- evaluation ----------------------------------------------------------------------------------------------------

def evaluate(model: Any, records: list[dict], tokenizer: Any, template: str, video_dir: Path, frames: int,
             size: int, batch_size: int = 100) -> dict[str, Any]:
    """Accuracy per question type: the first greedy token after the prompt, read by the original evaluators'
    multiple-choice parser; an answer the parser cannot read (its random fallback) counts as wrong."""
    from flax import nnx

    from tlv_jax.data.pipeline import read_record_frames
    from tlv_jax.data.preprocess import siglip_preprocess
    from tlv_jax.data.templates import eval_prompt_ids
    from tlv_jax.evaluate.answers import parse_multi_choice_response, question_rng
    from tlv_jax.generate import right_pad

    graphdef, state = nnx.split(model)

    @jax.jit
    def first_token(state, ids, mask, pixels):
        logits, _ = nnx.merge(graphdef, state).prefill(ids, mask, pixels, max_new_tokens=1)
        return jnp.argmax(logits, axis=-1)

    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    unreadable = 0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts = [eval_prompt_ids(r["conversations"][0]["value"].replace("<image>\n", "", 1), tokenizer, template)
                   .input_ids for r in chunk]
        ids, mask = right_pad(prompts, max(len(p) for p in prompts), tokenizer.pad_token_id)
        pixels = np.stack([siglip_preprocess(read_record_frames(r, str(video_dir), frames, None), size=size)
                           for r in chunk]).astype(np.float32)
        predicted = np.asarray(first_token(state, ids, mask, pixels))
        for r, tok in zip(chunk, predicted):
            meta = r["meta"]
            choice = parse_multi_choice_response(tokenizer.decode([int(tok)]), list(LETTERS),
                                                 dict(zip(LETTERS, meta["options"])), question_rng(0, r["id"]))
            unreadable += choice.fallback
            total[meta["type"]] = total.get(meta["type"], 0) + 1
            correct[meta["type"]] = correct.get(meta["type"], 0) + int(
                not choice.fallback and choice.letter == meta["answer_letter"])
    per_type = {k: correct[k] / total[k] for k in sorted(total)}
    chance = max(r["meta"]["chance"] for r in records)
    return {"accuracy": per_type, "accuracy_overall": sum(correct.values()) / sum(total.values()),
            "num_heldout": len(records), "num_heldout_per_type": {k: total[k] for k in sorted(total)},
            "chance": chance, "unreadable_answers": unreadable}


def plot_loss(metrics_path: Path, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlv_jax.train.metrics import read_jsonl

    rows = read_jsonl(metrics_path)
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], lw=1.2, label="train loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(textwrap.fill(title, 80), fontsize=10)  # four types' accuracies overrun one line
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# ---- the whole demo ------------------------------------------------------------------------------------------------

def run(config: ml_collections.ConfigDict, workdir: str | Path, peak_tflops: float = 0.0) -> dict[str, Any]:
    from tlv_jax.data.pipeline import TrainLoaderConfig, load_annotations
    from tlv_jax.loading import load_model
    from tlv_jax.train import loop, setup
    from tlv_jax.train.workdir import local_only

    start = psutil.Process().create_time()  # wall time from the process start: imports and compilation included
    workdir = local_only(workdir, "the demo")
    d = config.demo
    data_dir = workdir / "data"
    train_file, test_file = generate(d, data_dir)
    train_records, test_records = load_annotations(str(train_file)), load_annotations(str(test_file))
    tok_dir = workdir / "tokenizer"
    tokenizer = train_tokenizer(train_records, config.data.template, d.vocab_size, tok_dir)
    config.data.tokenizer_dir = str(tok_dir)
    config.model.scratch.llm.vocab_size = len(tokenizer)
    t_data = time.time() - start

    loader_cfg = TrainLoaderConfig(annotation_files=(str(train_file),), video_dirs=(str(data_dir),),
                                   tokenizer_dir=str(tok_dir), template=config.data.template,
                                   num_frames=config.data.num_frames, image_size=d.size,
                                   length_buckets=tuple(config.data.length_buckets),
                                   batch_size=config.train.global_batch)
    queries = setup.model_source(config).config.model.video_tokens(d.frames)
    state = {"samples": None}

    def make_iterator():
        if state["samples"] is None:
            state["samples"] = preprocess_all(train_records, loader_cfg, queries, data_dir)
        longest = max(len(s["input_ids"]) for s in state["samples"])
        width = -(-longest // 8) * 8  # one fixed batch shape: a single compilation
        collate = Collate(tokenizer.pad_token_id, tokenizer.eos_token_id, width)
        ds = curriculum_batches(state["samples"], [r["meta"]["type"] for r in train_records],
                                dict(d.get("curriculum", {})), config.train.global_batch,
                                config.train.num_steps, collate, config.seed)
        # One reader thread, a few batches ahead: the defaults (16 threads, 500 elements) would hold ~3 GB of
        # batches and compete with the train step for the 2 cores.
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

    result = loop.train(config, workdir, data=setup.DataSource(make_iterator, len(train_records)),
                        peak_tflops=peak_tflops)
    if result.stopped != "done":
        raise SystemExit(143)
    t_train = time.time() - start - t_data
    model = load_model(result.model_dir, dtype=config.model.dtype)
    scores = evaluate(model, test_records, tokenizer, config.data.template, data_dir, d.frames, d.size)
    wall = time.time() - start
    t_eval = wall - t_data - t_train
    results = {
        **scores,
        "question_types": list(d.question_types),
        "num_train_videos": len(train_records),
        "steps": result.step,
        "global_batch": config.train.global_batch,
        "wall_time_s": round(wall, 1),  # from the process start: imports, data, compilation, training, evaluation
        "startup_data_tokenizer_s": round(t_data, 1),
        "train_s": round(t_train, 1),  # decoding + tokenising the set once, compiling, training, export
        "eval_s": round(t_eval, 1),
        "resumed_from_step": result.resumed_from,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "cpu_count": os.cpu_count(),
    }
    (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    accs = ", ".join(f"{k} {v:.0%}" for k, v in scores["accuracy"].items())
    plot_loss(workdir / "metrics.jsonl", workdir / "loss.png",
              f"demo: {result.step} steps, held-out accuracy {accs} (chance {scores['chance']:.0%})")
    print(f"held-out accuracy ({scores['num_heldout']} questions, chance {scores['chance']:.0%}): {accs}; "
          f"wall time {wall:.0f} s. Written: {workdir / 'results.json'}, {workdir / 'loss.png'}")
    return results
