"""Video-MME: the hub parquet, PyAV PTS-seek frames, accuracy per duration and overall.

The original runs one duration per invocation and prints its accuracy; here all durations present run together and the
overall score is the micro average (equal to the mean of the three when, as in the release, each has 900 questions).
"""

from __future__ import annotations

from pathlib import Path

from tlv_jax.data import frames
from tlv_jax.evaluate.common import LETTER_INSTRUCTION, Benchmark, Clip, Question, VideoRef, accuracy, \
    accuracy_by_group, query_text

PARQUET = Path("videomme") / "test-00000-of-00001.parquet"
VIDEOS = Path("data")
DURATIONS = ("short", "medium", "long")


def load(data_dir: Path) -> list[Question]:
    """Questions of `<data>/videomme/test-00000-of-00001.parquet`, videos `<data>/data/{videoID}.mp4`."""
    import pyarrow.parquet as pq

    path = data_dir / PARQUET
    if not path.exists():
        raise FileNotFoundError(f"Video-MME: no question file {path} (expected the hub layout videomme/*.parquet)")
    return [_question(row, data_dir, path) for row in pq.read_table(path).to_pylist()]


def _question(row: dict, data_dir: Path, source: Path) -> Question:
    options = list(row["options"])
    try:
        # the original's option parsing: letter before the first ".", text after the first ". " minus its last char
        choices = tuple(opt.split(".")[0] for opt in options)
        index2ans = {opt.split(".")[0]: opt.split(". ")[1][:-1] for opt in options}
    except IndexError:
        raise ValueError(f"{source}: question {row['question_id']}: options {options} are not 'X. text'") from None
    text = "<image>" + "\n" + row["question"] + "\n" + "\n".join(options) + "\n" + LETTER_INSTRUCTION
    return Question(
        qid=row["question_id"],
        video=VideoRef(str(data_dir / VIDEOS / f"{row['videoID']}.mp4"), "pts"),
        prompt=query_text(text),
        answer=row["answer"],
        group=row["duration"],
        choices=choices,
        index2ans=index2ans,
    )


def read(ref: VideoRef, num_frames: int, max_frames: int) -> Clip:
    return Clip(frames.read_frames_pts(ref.path, num_frames, max_frames))


def aggregate(records: list[dict]) -> dict[str, float]:
    return {**accuracy_by_group(records, DURATIONS), "Overall": accuracy(records)}


BENCHMARK = Benchmark("videomme", load, read, aggregate)
