"""The synthetic video-QA dataset: LLaVA-Video-178K format, real mp4s that decord reads, answers recoverable from the
decoded pixels (so colours survive the encoding and motion/order/count/colour change are really in the video),
shuffled multiple-choice options, determinism, and the broken-file helper."""

import json
from collections import Counter

import numpy as np
import pytest

from tlv_jax.data.frames import read_frames, video_info
from tlv_jax.data.synthetic import (AWKWARD, BROKEN, COLORS, LETTERS, MC_SUFFIX, QUESTION_TYPES, generate_dataset,
                                    write_broken_videos)

FRAMES, SIZE = 8, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    path = generate_dataset(root, 60, seed=0, frames=FRAMES, size=SIZE)
    return root, path, json.loads(path.read_text())


def colour_masks(video: np.ndarray, min_pixels: int) -> list[dict[str, np.ndarray]]:
    """Per frame: colour name -> boolean mask of its pixels. The background noise is < 48 and the colours are
    saturated, so thresholding each channel at 128 names a pixel's colour; stray edge pixels (chroma subsampling)
    are ignored by requiring `min_pixels`."""
    names = {tuple(int(c > 128) for c in rgb): name for name, rgb in COLORS.items()}
    bits = video > 128
    out = []
    for frame in bits:
        masks = {}
        for key, name in names.items():
            mask = np.all(frame == np.array(key, bool), axis=-1)
            if mask.sum() >= min_pixels:
                masks[name] = mask
        out.append(masks)
    return out


def oracle(kind: str, video: np.ndarray) -> str:
    """Answer the question from decoded pixels alone."""
    side = SIZE // 4
    masks = colour_masks(video, (side - 2) ** 2)
    present = [m for m in masks if m]
    if kind == "color":
        return Counter(name for m in present for name in m).most_common(1)[0][0]
    if kind == "direction":
        (first,), (last,) = masks[0].values(), masks[-1].values()
        (y0, x0), (y1, x1) = np.argwhere(first).mean(0), np.argwhere(last).mean(0)
        if abs(x1 - x0) > abs(y1 - y0):
            return "right" if x1 > x0 else "left"
        return "down" if y1 > y0 else "up"
    if kind == "count":
        return str(len({name for m in masks for name in m}))
    if kind == "position":
        y, x = np.argwhere(next(iter(masks[0].values()))).mean(0)
        return f"{'top' if y < SIZE / 2 else 'bottom'} {'left' if x < SIZE / 2 else 'right'}"
    if kind == "order":
        return next(iter(present[0]))
    if kind == "color_change":
        return next(iter(masks[-1]))
    raise AssertionError(kind)


def test_annotation_format(dataset):
    root, path, records = dataset
    assert path == root / "train.json" and len(records) == 60
    for r in records:
        assert set(r) == {"id", "video", "conversations", "meta"}
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        assert (root / r["video"]).is_file() and not r["video"].startswith("/")
    assert len({r["id"] for r in records}) == 60
    assert Counter(r["meta"]["type"] for r in records) == {t: 60 // len(QUESTION_TYPES) for t in QUESTION_TYPES}


def test_multiple_choice_prompts_and_answers(dataset):
    _, _, records = dataset
    letters = Counter()
    for r in records:
        meta, (human, gpt) = r["meta"], r["conversations"]
        options = meta["options"]
        assert meta["format"] == "mc" and len(options) == 4 and len(set(options)) == 4 and meta["chance"] == 0.25
        assert options[LETTERS.index(meta["answer_letter"])] == meta["answer"] and gpt["value"] == meta["answer_letter"]
        listed = "\n".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, options))
        assert human["value"] == f"<image>\n{meta['question']}\n{listed}\n{MC_SUFFIX}"
        letters[meta["answer_letter"]] += 1
    assert set(letters) == set(LETTERS)  # option order is shuffled per question: every letter is an answer


def test_answers_are_in_the_decoded_video(dataset):
    root, _, records = dataset
    for r in records:
        video = read_frames(root / r["video"], FRAMES)
        assert video.shape == (FRAMES, SIZE, SIZE, 3)
        assert oracle(r["meta"]["type"], video) == r["meta"]["answer"], r["id"]
    assert video_info(root / records[0]["video"]) == (FRAMES, 8.0, 1.0)


def test_answers_need_more_than_one_frame(dataset):
    """Order, count and colour-change answers are not all visible in any single frame, for some samples at least;
    for colour change the first colour is always among the distractors."""
    root, _, records = dataset
    count_needs_time = []
    for r in records:
        kind, meta = r["meta"]["type"], r["meta"]
        if kind == "count":
            masks = colour_masks(read_frames(root / r["video"], FRAMES), 36)
            count_needs_time.append(max(len(m) for m in masks) < int(meta["answer"]))
        if kind == "color_change":
            first = oracle("color", read_frames(root / r["video"], FRAMES)[:1])
            assert first != meta["answer"] and first in meta["options"]
        if kind == "order":
            masks = colour_masks(read_frames(root / r["video"], FRAMES), 36)
            assert len(masks[0]) <= 1 and len(masks[-1]) == 2  # both present at the end; the first came earlier
    assert any(count_needs_time)


def test_captions_file(dataset):
    root, _, records = dataset
    captions = json.loads((root / "train_caption.json").read_text())
    assert [c["id"] for c in captions] == [r["id"] for r in records]
    for cap, r in zip(captions, records):
        assert cap["video"] == r["video"] and cap["conversations"][0]["value"].startswith("<image>\n")
        assert r["meta"]["answer"] in cap["conversations"][1]["value"].lower() or r["meta"]["type"] == "count"


def test_open_and_mixed_answers(tmp_path):
    records = json.loads(generate_dataset(tmp_path, 10, seed=1, answer_format="open").read_text())
    for r in records:
        assert r["meta"]["format"] == "open" and r["meta"]["options"] is None
        assert r["conversations"][1]["value"] == r["meta"]["answer"] and 0 < r["meta"]["chance"] < 1
    mixed = json.loads(generate_dataset(tmp_path, 20, seed=1, answer_format="mixed", split="mixed").read_text())
    assert {r["meta"]["format"] for r in mixed} == {"mc", "open"}


def test_deterministic_and_seeded(tmp_path, dataset):
    root, path, records = dataset
    again = generate_dataset(tmp_path / "again", 60, seed=0, frames=FRAMES, size=SIZE)
    assert json.loads(again.read_text()) == records
    for r in records[:5]:
        np.testing.assert_array_equal(read_frames(tmp_path / "again" / r["video"], 8), read_frames(root / r["video"], 8))
    other = json.loads(generate_dataset(tmp_path / "other", 60, seed=1, frames=FRAMES, size=SIZE).read_text())
    assert [r["meta"] for r in other] != [r["meta"] for r in records]


def test_worker_processes_give_the_same_dataset(tmp_path):
    serial = generate_dataset(tmp_path / "serial", 256, seed=2, frames=4, size=16, question_types=("color",),
                              workers=1)
    parallel = generate_dataset(tmp_path / "parallel", 256, seed=2, frames=4, size=16, question_types=("color",),
                                workers=2)
    assert serial.read_text() == parallel.read_text()
    assert (tmp_path / "serial" / "videos/train/train_000255.mp4").read_bytes() == \
        (tmp_path / "parallel" / "videos/train/train_000255.mp4").read_bytes()


def test_bigger_squares_keep_every_answer_true(tmp_path):
    """`square=16` (half the frame): the same questions, still answerable from the decoded pixels alone."""
    path = generate_dataset(tmp_path, 12, seed=3, frames=FRAMES, size=SIZE, square=16, workers=1)
    for r in json.loads(path.read_text()):
        video = read_frames(tmp_path / r["video"], FRAMES)
        assert oracle(r["meta"]["type"], video) == r["meta"]["answer"], r["id"]
        assert max(int(m.sum()) for masks in colour_masks(video, 1) for m in masks.values()) >= 14 * 14  # 16x16


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="a square's side must be within 2..16 px"):
        generate_dataset(tmp_path, 1, square=17)
    with pytest.raises(ValueError, match="unknown question types"):
        generate_dataset(tmp_path, 1, question_types=("shape",))
    with pytest.raises(ValueError, match="multiple of 8"):
        generate_dataset(tmp_path, 1, size=30)
    with pytest.raises(ValueError, match="answer_format"):
        generate_dataset(tmp_path, 1, answer_format="free")


def test_write_broken_videos(tmp_path):
    paths = write_broken_videos(tmp_path)
    assert set(BROKEN) <= set(paths) and set(paths) - set(BROKEN) <= set(AWKWARD)
    assert not paths["missing"].exists() and paths["empty"].stat().st_size == 0
    assert 0 < paths["truncated"].stat().st_size < (tmp_path / "valid.mp4").stat().st_size
