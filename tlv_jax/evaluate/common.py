"""The evaluation loop every benchmark shares: read videos ahead, answer in batches, score, resume, summarise.

A benchmark module supplies a `Benchmark`: how to load its questions from the official files, how to read one video's
frames with the original's sampling, and how the original aggregates. This module does the rest: questions sharing a
video (and sampling) are asked after one read of its frames, and the videos read next (by a thread pool, `prefetch`)
wait while the answerer answers several videos' questions in one batch when it can (`batching`). Each answer is
appended to this process's predictions shard as soon as its batch is done, and a rerun skips the ids answered in any
shard (`shards`); videos that are missing or cannot be decoded are recorded, counted and scored as wrong instead of
stopping the run (and tried again by a rerun, so a video fixed in the meantime gets its answers).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from tlv_jax.evaluate import shards
from tlv_jax.evaluate.answers import open_ended_match, parse_multi_choice_response, question_rng
from tlv_jax.evaluate.prefetch import prefetched
from tlv_jax.evaluate.shards import PREDICTIONS, read_predictions

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
RUN_CONFIG = "run.json"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IMAGE_TOKEN = "<image>"


class Answerer(Protocol):
    """What the evaluation calls: greedy answers to several questions about one video."""

    def answer(self, frames: np.ndarray, prompts: list[str], max_new_tokens: int) -> list[str]:
        """frames: uint8 (F, H, W, 3); prompts: the texts that follow "<image>\\n" in the user turn.

        Returns one decoded continuation per prompt (special tokens skipped, not stripped, as the original evaluators
        receive them from `batch_decode`).
        """
        ...


@dataclass(frozen=True)
class VideoRef:
    """Where a question's frames come from and how they are sampled; questions with equal refs share one read."""

    path: str
    recipe: str  # the benchmark's name for its reader ("pts", "decord", "frames", ...)
    bound: tuple[float, float] | None = None  # (start, end) seconds, where the recipe uses them
    duration: float | None = None  # from the annotation, where the recipe uses it


@dataclass(frozen=True)
class Clip:
    """Frames read for one video: uint8 (F, H, W, 3), and their times in seconds where the prompt needs them."""

    frames: np.ndarray
    timestamps: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class Question:
    """One benchmark question. `choices` empty = open-ended (scored by `open_ended_match`)."""

    qid: str
    video: VideoRef
    prompt: str | Callable[[Clip], str]  # a callable when the prompt depends on the frames read (LongVideoBench)
    answer: str
    group: str  # the aggregation key: task, duration or question type
    choices: tuple[str, ...] = ()
    index2ans: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as the loop needs it (one instance per module, named `BENCHMARK`)."""

    name: str
    load: Callable[[Path], list[Question]]  # data dir -> questions in the original's order
    read: Callable[[VideoRef, int, int], Clip]  # (ref, num_frames, max_frames) -> frames
    aggregate: Callable[[list[dict]], dict[str, float]]  # prediction records -> scores (percent), in report order


def read_json_file(path: Path, what: str) -> list:
    """A benchmark's JSON annotation list; a missing file names the benchmark and what was expected there."""
    if not path.exists():
        raise FileNotFoundError(f"{what}: no file {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def query_text(text: str) -> str:
    """What the template keeps of a user message once `<image>` is moved to the front: removed, stripped."""
    return text.replace(IMAGE_TOKEN, "").strip()


def answer_letter(candidates: Sequence[str], answer: str) -> str:
    """The letter of the last candidate equal to `answer`; "@" when none is (the original's `chr(ord('A') - 1)`)."""
    matches = [i for i, option in enumerate(candidates) if option == answer]
    return chr(ord("A") + (matches[-1] if matches else -1))


def candidates_question(question: str, candidates: Sequence[str], answer: str) -> dict:
    """Question fields of the MVBench / MLVU style: "(A) c0" lines, the letter instruction, the answer's letter."""
    index2ans = {chr(ord("A") + i): text for i, text in enumerate(candidates)}
    text = (f"{question}\n" + "".join(f"({letter}) {option}\n" for letter, option in index2ans.items())).rstrip()
    return dict(prompt=query_text("<image>" + "\n" + text + "\n" + LETTER_INSTRUCTION),
                answer=answer_letter(candidates, answer), choices=tuple(index2ans), index2ans=index2ans)


def accuracy(records: Iterable[dict]) -> float:
    """Percent of records scored correct (missing / unreadable ones count as wrong); 0 for none."""
    records = list(records)
    return 100.0 * sum(r["correct"] for r in records) / len(records) if records else 0.0


def accuracy_by_group(records: Sequence[dict], order: Sequence[str] = ()) -> dict[str, float]:
    """Accuracy per `group`, groups in `order` first, then in first-seen order; only groups that have records."""
    groups: dict[str, list[dict]] = {}
    for name in order:
        groups[name] = []
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    return {name: accuracy(rs) for name, rs in groups.items() if rs}


def evaluate(
    benchmark: Benchmark,
    data_dir: str | os.PathLike,
    answerer: Answerer,
    out_dir: str | os.PathLike,
    *,
    num_frames: int = 16,
    max_frames: int = 16,
    max_new_tokens: int = 1024,
    limit: int | None = None,
    seed: int = 0,
    model: str = "",
    progress: bool = True,
    workers: int = 4,
    process: tuple[int, int] = (0, 1),
    barrier: Callable[[], None] = lambda: None,
) -> dict:
    """Runs (or resumes) one benchmark and returns its summary (also written to `out_dir/summary.json`).

    `process` = (index, count): this process answers its share of the videos (`shards.mine`) into its own shard;
    `barrier` returns once every process has written its share, then the summary is made from all shards (written
    by process 0). `workers` threads read and prepare the next videos while the model answers.
    """
    index, count = process
    questions = benchmark.load(Path(data_dir))
    if limit is not None:
        questions = questions[:limit]
    _check_unique(questions, benchmark.name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(benchmark=benchmark.name, model=model, num_frames=num_frames, max_frames=max_frames,
                  max_new_tokens=max_new_tokens, seed=seed)
    _check_run_config(out / RUN_CONFIG, config)

    own = shards.shard_path(out, index, count)
    done = shards.read_all(out, own)
    assigned = shards.mine(list(group_by_video(questions).items()), index, count)
    todo = [(ref, [q for q in group if done.get(q.qid, {}).get("status") != "ok"])  # failed videos are retried
            for ref, group in assigned]
    todo = [(ref, group) for ref, group in todo if group]
    total = sum(len(group) for _, group in assigned)
    prepare = getattr(answerer, "prepare", None)
    batch_size = getattr(answerer, "max_batch", 1)

    def read(item: tuple[VideoRef, list[Question]]) -> VideoRead:
        return read_video(benchmark, item[0], item[1], num_frames, max_frames, prepare)

    with open(own, "a", encoding="utf-8") as sink, tqdm(
        total=total, initial=total - sum(len(group) for _, group in todo), desc=benchmark.name, unit="q",
        disable=not progress
    ) as bar:
        def flush(reads: list[VideoRead]) -> None:
            for record in answer_reads(answerer, reads, max_new_tokens, seed):
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(sum(len(r.questions) for r in reads))

        pending: list[VideoRead] = []
        for item in prefetched(read, todo, workers, ahead=2 * max(workers, 1)):
            if pending and _asked(pending) + len(item.prompts) > batch_size:
                flush(pending)
                pending = []
            pending.append(item)
        if pending:
            flush(pending)

    barrier()
    done = shards.read_all(out)
    summary = summarize(benchmark, [done[q.qid] for q in questions], config)
    if index == 0:
        _write_atomic(out / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def group_by_video(questions: Iterable[Question]) -> dict[VideoRef, list[Question]]:
    """Questions grouped by video and sampling, videos in first-appearance order."""
    groups: dict[VideoRef, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.video, []).append(q)
    return groups


@dataclass(frozen=True)
class VideoRead:
    """One video's questions once its frames are read: what the answerer takes (frames, or what its `prepare`
    made of them) and the prompts; or, when the video could not be read, the failure records."""

    questions: list[Question]
    video: object = None
    prompts: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


def read_video(benchmark: Benchmark, ref: VideoRef, questions: Sequence[Question], num_frames: int, max_frames: int,
               prepare: Callable[[np.ndarray], object] | None = None) -> VideoRead:
    """Reads one video once for all its questions (in a reader thread); a video that cannot be read gives failures.

    Reading errors (`VideoDecodeError` and other ValueError / OSError, e.g. a missing subtitle file) are recorded;
    anything else is a bug and propagates.
    """
    try:
        if not os.path.exists(ref.path):
            raise FileNotFoundError(f"no such file: {ref.path}")
        clip = benchmark.read(ref, num_frames, max_frames)
        if clip.frames.ndim != 4 or clip.frames.shape[0] == 0:
            raise ValueError(f"{ref.path}: decoded frames have shape {clip.frames.shape}")
        prompts = [q.prompt(clip) if callable(q.prompt) else q.prompt for q in questions]
        video = prepare(clip.frames) if prepare is not None else clip.frames
    except (ValueError, OSError) as err:  # VideoDecodeError is a ValueError; a bad video must not stop a long run
        status = "missing" if not os.path.exists(ref.path) else "unreadable"
        log.warning("%s video %s: %s", status, ref.path, err)
        return VideoRead(list(questions), failures=[_failure(q, status, f"{type(err).__name__}: {err}")
                                                    for q in questions])
    return VideoRead(list(questions), video, prompts)


def answer_reads(answerer: Answerer, reads: Sequence[VideoRead], max_new_tokens: int, seed: int) -> list[dict]:
    """The records of several read videos, in order: the readable ones answered together when the answerer batches
    across videos (`answer_videos`), else one call per video."""
    ok = [r for r in reads if not r.failures]
    if hasattr(answerer, "answer_videos"):
        outputs = answerer.answer_videos([r.video for r in ok], [r.prompts for r in ok], max_new_tokens)
    else:
        outputs = [answerer.answer(r.video, r.prompts, max_new_tokens) for r in ok]
    answers = iter(outputs)
    records = []
    for r in reads:
        if r.failures:
            records += r.failures
            continue
        texts = next(answers)
        if len(texts) != len(r.prompts):
            raise RuntimeError(f"answerer returned {len(texts)} outputs for {len(r.prompts)} prompts "
                               f"({r.questions[0].video.path})")
        records += [score(q, p, o, seed) for q, p, o in zip(r.questions, r.prompts, texts)]
    return records


def _asked(reads: Sequence[VideoRead]) -> int:
    return sum(len(r.prompts) for r in reads)


def score(question: Question, prompt: str, output: str, seed: int) -> dict:
    """The prediction record of one answered question."""
    if question.choices:
        choice = parse_multi_choice_response(output, question.choices, question.index2ans,
                                             question_rng(seed, question.qid))
        pred, fallback = choice.letter, choice.fallback
        correct = pred == question.answer
    else:
        pred, fallback = output, False
        correct = open_ended_match(output, question.answer)
    return _record(question, "ok", prompt=prompt, output=output, pred=pred, correct=correct, fallback=fallback)


def _failure(question: Question, status: str, error: str) -> dict:
    return _record(question, status, prompt=None, output=None, pred=None, correct=False, fallback=False, error=error)


def _record(question: Question, status: str, **fields) -> dict:
    return dict(id=question.qid, group=question.group, video=question.video.path, status=status,
                answer=question.answer, **fields)


def summarize(benchmark: Benchmark, records: list[dict], config: dict) -> dict:
    """Scores as the original aggregates them, plus what went wrong: missing/unreadable videos, fallback guesses."""
    failures = {}
    for status in ("missing", "unreadable"):
        bad = [r for r in records if r["status"] == status]
        videos = sorted({r["video"] for r in bad})
        failures[status] = dict(videos=len(videos), questions=len(bad), paths=videos)
        if status == "unreadable":
            failures[status]["errors"] = {r["video"]: r["error"] for r in bad}
    answered = [r for r in records if r["status"] == "ok"]
    return dict(
        benchmark=benchmark.name,
        scores=benchmark.aggregate(records),
        questions=len(records),
        answered=len(answered),
        correct=sum(r["correct"] for r in records),
        fallbacks=sum(r["fallback"] for r in answered),
        empty_outputs=sum(not r["output"].strip() for r in answered),
        **failures,
        config=config,
    )


def format_table(summary: dict) -> str:
    """The summary as a small text table: one score per line, then the counts."""
    scores = summary["scores"]
    width = max([len(k) for k in scores] + [len("unreadable videos (questions)")])
    lines = [f"{summary['benchmark']}", "-" * (width + 10)]
    lines += [f"{name:<{width}} {value:8.2f}" for name, value in scores.items()]
    lines.append("-" * (width + 10))
    lines += [f"{name:<{width}} {summary[name]:8d}" for name in ("questions", "answered", "correct", "fallbacks",
                                                                   "empty_outputs")]
    for status in ("missing", "unreadable"):
        info = summary[status]
        lines.append(f"{status + ' videos (questions)':<{width}} {info['videos']:8d} ({info['questions']})")
    return "\n".join(lines)


def _check_unique(questions: Sequence[Question], name: str) -> None:
    counts = Counter(q.qid for q in questions)
    repeated = [qid for qid, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"{name}: question ids are not unique (e.g. {repeated[:3]}); resuming needs unique ids")


def _check_run_config(path: Path, config: dict) -> None:
    """Resuming with other settings would mix incomparable answers: refuse, naming the differences."""
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in config.items() if previous.get(k) != v}
        if changed:
            raise ValueError(f"{path}: this output folder holds a run with other settings {changed}; use another --out")
        return
    _write_atomic(path, json.dumps(config, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    """Written whole or not at all; processes writing the same text at once cannot interleave."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_answerer(model_dir: str | os.PathLike, dtype: str = "float32", max_batch: int = 8) -> Answerer:
    """Loads a checkpoint (ours or PyTorch) with its tokenizer into a `batching.BatchedAnswerer` over this process's
    devices; imported here so the evaluation code (and its tests) does not need the model code. The original
    evaluated in float32."""
    from tlv_jax.evaluate.batching import BatchedAnswerer
    from tlv_jax.generate import Generator

    return BatchedAnswerer(Generator.from_pretrained(model_dir, dtype), max_batch)
