"""The Grain training loader on real synthetic mp4s and real broken files: batch format, bucketed padding, 1 fps frame
padding, weighted mixing, process sharding, bad-sample accounting (each skip counted as it happens, so an all-bad
stream stops) and exact state restore (with and without workers, between any two elements)."""

import json
import logging
import time

import numpy as np
import pytest

from tlv_jax.data.bad_samples import TooManyBadSamples
from tlv_jax.data.frames import read_frames
from tlv_jax.data.pipeline import TrainLoaderConfig, _BucketBatchIterator, make_train_iterator, text_lengths
from tlv_jax.data.preprocess import siglip_preprocess
from tlv_jax.data.synthetic import generate_dataset, write_broken_videos
from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, encode_conversation

NUM_QUERIES = 16
BUCKETS = (216, 256, 316)  # text widths 201, 241, 301 with 16 video tokens
ARRAYS = ("input_ids", "labels", "attention_mask", "pixel_values", "frames_mask", "sample_index")
EXPECTED_BAD = {"missing_video": 1, "not_a_regular_file": 1, "unresolvable_path": 1, "unreadable_container": 3,
                "no_image": 1, "malformed_conversation": 1, "too_long": 1, "tokenization_mismatch": 1}


@pytest.fixture(scope="module")
def tokenizer_dir(fixtures_dir):
    return str(fixtures_dir / "qwen2-group-f16" / "finetune")  # the tiny fixture model's Qwen2 tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 good videos (1 s, 8 frames) + 6 long ones (6 s) + every kind of bad sample, with real broken files."""
    root = tmp_path_factory.mktemp("videos")
    good = generate_dataset(root, 12, seed=0, frames=8, size=32, fps=8, answer_format="mixed")
    long = generate_dataset(root, 6, seed=1, frames=24, size=32, fps=4, split="long")
    broken = write_broken_videos(root / "broken")
    records = json.loads(good.read_text())
    video, question = records[0]["video"], records[0]["conversations"]
    bad = [{"id": f"bad_{name}", "video": f"broken/{broken[name].name}", "conversations": question}
           for name in ("missing", "directory", "symlink_loop", "empty", "truncated", "random_bytes")]
    bad += [
        {"id": "bad_no_image", "video": video, "conversations": [{"from": "human", "value": "Hi?"},
                                                                 {"from": "gpt", "value": "Hello."}]},
        {"id": "bad_malformed", "video": video, "conversations": question[:1]},
        {"id": "bad_too_long", "video": video, "conversations": [{"from": "human", "value": "<image>\n" + "x " * 200},
                                                                 {"from": "gpt", "value": "y"}]},
        {"id": "bad_mismatch", "video": video, "conversations": [
            {"from": "human", "value": "<image>\nRepeat ' ASSISTANT: ' please."}, {"from": "gpt", "value": "No."}]},
    ]
    with_bad = root / "with_bad.json"
    with_bad.write_text(json.dumps(records + bad))
    all_bad = root / "all_bad.json"
    all_bad.write_text(json.dumps([{**r, "video": f"broken/{broken['random_bytes'].name}"} for r in records]))
    return {"root": root, "good": good, "long": long, "with_bad": with_bad, "all_bad": all_bad, "records": records}


def _config(data, tokenizer_dir, annotations=("with_bad",), **overrides):
    kwargs = dict(annotation_files=tuple(str(data[a]) for a in annotations), video_dirs=(str(data["root"]),),
                  tokenizer_dir=tokenizer_dir, num_frames=4, image_size=28, length_buckets=BUCKETS, batch_size=2,
                  seed=0, min_samples_for_bad_check=1000)
    return TrainLoaderConfig(**{**kwargs, **overrides})


def _take(config, n, state=None, **kwargs):
    it = make_train_iterator(config, NUM_QUERIES, process_index=kwargs.pop("process_index", 0),
                             process_count=kwargs.pop("process_count", 1))
    try:
        if state is not None:
            it.set_state(state)
        batches = [next(it) for _ in range(n)]
        return batches, it.get_state(), it.bad_samples
    finally:
        it.close()


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ARRAYS) and len(a) == len(b)


def test_one_epoch_format_and_bad_sample_accounting(data, tokenizer_dir, caplog):
    config = _config(data, tokenizer_dir, num_epochs=1)
    with caplog.at_level(logging.WARNING, logger="tlv_jax.data.bad_samples"):
        batches = list(make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1))
    seen = np.concatenate([b["sample_index"] for b in batches])
    assert sorted(seen) == list(range(12))  # every good sample once, none of the bad ones (indices 12..21)
    logged = [r.getMessage() for r in caplog.records if r.name == "tlv_jax.data.bad_samples"]
    assert len(logged) == 10 and all(any(f"bad_{n}" in m for m in logged) for n in ("empty", "mismatch", "too_long"))
    assert any("bad_missing (missing_video)" in m and "missing.mp4: missing (no such file)" in m for m in logged)
    assert any("bad_directory (not_a_regular_file)" in m and "(a directory)" in m for m in logged)
    assert any("bad_symlink_loop (unresolvable_path)" in m and "cannot resolve the path" in m for m in logged)

    widths = set(text_lengths(config, NUM_QUERIES))
    for b in batches:
        B, L = b["input_ids"].shape
        assert B == 2 and L in widths and set(ARRAYS) == set(b)
        assert b["input_ids"].dtype == b["labels"].dtype == np.int32 and b["sample_index"].dtype == np.int64
        assert b["pixel_values"].shape == (2, 4, 28, 28, 3) and b["pixel_values"].dtype == np.float32
        assert b["frames_mask"].all() and b["attention_mask"].dtype == bool
        assert ((b["input_ids"] == IMAGE_TOKEN_INDEX).sum(axis=1) == 1).all()
        assert (b["labels"][~b["attention_mask"]] == IGNORE_INDEX).all()
        lengths = b["attention_mask"].sum(axis=1)
        assert (b["attention_mask"] == (np.arange(L) < lengths[:, None])).all()  # right padding, eos kept
        assert max([w for w in widths if w < L], default=0) < max(lengths) <= L  # the smallest width that fits

    # A row equals the text template and the frame reader + SigLIP preprocessing applied directly.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    b = batches[0]
    record = data["records"][int(b["sample_index"][0])]
    enc = encode_conversation(record["conversations"], tok, "qwen2_base")
    n = len(enc.input_ids)
    np.testing.assert_array_equal(b["input_ids"][0, :n], enc.input_ids)
    np.testing.assert_array_equal(b["labels"][0, :n], enc.labels)
    assert (b["input_ids"][0, n:] == tok.pad_token_id).all()
    frames = read_frames(data["root"] / record["video"], num_frames=4)
    np.testing.assert_array_equal(b["pixel_values"][0], siglip_preprocess(frames, size=28))


def test_bad_sample_totals_after_an_epoch(data, tokenizer_dir):
    it = make_train_iterator(_config(data, tokenizer_dir, num_epochs=1), NUM_QUERIES, process_index=0, process_count=1)
    list(it)
    assert {k: v for k, v in it.bad_samples.counts.items() if v} == EXPECTED_BAD
    assert it.bad_samples.good == 12


def test_too_many_bad_samples_stop_the_run(data, tokenizer_dir):
    config = _config(data, tokenizer_dir, max_bad_fraction=0.05, min_samples_for_bad_check=10)
    with pytest.raises(TooManyBadSamples, match=r"samples were unusable.*Check the annotation files"):
        _take(config, 20)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_all_bad_stream_stops_at_the_minimum_within_seconds(data, tokenizer_dir, workers):
    """No batch ever fills, yet every skip reaches the counter at once (from worker processes too)."""
    config = _config(data, tokenizer_dir, annotations=("all_bad",), min_samples_for_bad_check=40, num_workers=workers)
    it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
    try:
        start = time.monotonic()
        with pytest.raises(TooManyBadSamples, match=r"^40 of 40 samples .*unreadable_container=40.*random_bytes.mp4"):
            next(it)
        assert time.monotonic() - start < 60  # worker start-up included; a second or two without workers
    finally:
        it.close()


class _Elements:
    """A stand-in for the per-sample stage: good samples (text of `i + 1` ids) and bad markers, in a fixed order."""

    def __init__(self, kinds: str):
        self.kinds = kinds

    def __len__(self):
        return len(self.kinds)

    def __getitem__(self, i):
        if self.kinds[i] == "x":
            return {"bad": ("no_image", f"s{i}", "")}
        ids = np.arange(i + 1, dtype=np.int32)
        return {"input_ids": ids, "labels": ids, "pixel_values": np.full((1, 2, 2, 3), i, np.float32),
                "frames_mask": np.ones(1, bool), "sample_index": np.int64(i)}


def _batcher(kinds: str) -> _BucketBatchIterator:
    import grain

    parent = grain.MapDataset.source(_Elements(kinds)).to_iter_dataset().__iter__()
    return _BucketBatchIterator(parent, 3, (16, 32), pad_id=0, eos_id=1)


def _describe(element: dict) -> str:
    if "bad" in element:
        return element["bad"][1]
    if "dropped_remainder" in element:
        return f"dropped {element['dropped_remainder']}"
    return str(element["sample_index"].tolist())


def test_markers_leave_the_batcher_at_once_and_a_state_between_any_two_elements_restores_exactly():
    kinds = "gxgxxgggxxgxgg"  # g: good sample, x: bad marker; batches of 3
    whole = [_describe(e) for e in _batcher(kinds)]
    assert whole == ["s1", "s3", "s4", "[0, 2, 5]", "s8", "s9", "[6, 7, 10]", "s11", "dropped 2"]
    for cut in range(len(whole)):
        it = _batcher(kinds)
        for _ in range(cut):
            next(it)
        state = json.loads(json.dumps(it.get_state()))  # mid-batch too: the pending samples are re-read
        resumed = _batcher(kinds)
        resumed.set_state(state)
        assert [_describe(e) for e in resumed] == whole[cut:], cut


def test_state_restores_exactly_without_workers(data, tokenizer_dir):
    config = _config(data, tokenizer_dir)  # repeats forever, reshuffled each epoch
    first, state, counter = _take(config, 6)
    state = json.loads(json.dumps(state))  # JSON-able, as grain.checkpoint stores it
    resumed, _, resumed_counter = _take(config, 5, state=state)
    whole, _, _ = _take(config, 11)
    assert _same(whole[6:], resumed) and _same(whole[:6], first)
    assert counter.get_state() == _take(config, 0, state=state)[2].get_state()  # totals travel with the state
    assert resumed_counter.good == counter.good + 10
    other_seed, _, _ = _take(_config(data, tokenizer_dir, seed=1), 6)
    assert not _same(first, other_seed)


def test_state_restores_exactly_with_workers(data, tokenizer_dir):
    config = _config(data, tokenizer_dir, num_workers=2)
    whole, _, _ = _take(config, 7)
    _, state, _ = _take(config, 4)
    resumed, _, counter = _take(config, 3, state=json.loads(json.dumps(state)))
    assert _same(whole[4:], resumed)
    assert counter.good == 14 and counter.bad > 0  # bad samples met in the workers are counted in the main process


def test_one_fps_pads_frames_and_mixes_sources(data, tokenizer_dir):
    config = _config(data, tokenizer_dir, annotations=("good", "long"), weights=(1.0, 1.0), num_frames=-1,
                     max_frames=4)
    batches, _, counter = _take(config, 6)
    index = np.concatenate([b["sample_index"] for b in batches])
    counts = np.concatenate([b["frames_mask"].sum(axis=1) for b in batches])
    assert (index < 12).any() and (index >= 12).any()  # both sources; the second's indices follow the first's
    np.testing.assert_array_equal(counts, np.where(index < 12, 1, 4))  # 1 s clips: 1 frame; 6 s clips: capped at 4
    pixels = np.concatenate([b["pixel_values"] for b in batches])
    masks = np.concatenate([b["frames_mask"] for b in batches])
    assert (pixels[~masks] == 0).all() and (np.abs(pixels[masks]).max(axis=(1, 2, 3)) > 0).all()
    assert counter.bad == 0


def test_processes_read_disjoint_shards(data, tokenizer_dir):
    config = _config(data, tokenizer_dir, annotations=("good",), num_epochs=1)
    shards = [np.concatenate([b["sample_index"] for b in _take(config, 3, process_index=p, process_count=2)[0]])
              for p in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and sorted(np.concatenate(shards)) == list(range(12))


@pytest.mark.parametrize("overrides, message", [
    (dict(annotation_files=(), prepared_dirs=()), "either annotation_files"),
    (dict(num_frames=-1), "needs max_frames"),
    (dict(length_buckets=(16,)), "longer than num_queries"),
    (dict(weights=(1.0, 2.0)), "one per source"),
    (dict(video_dirs=("a", "b")), "video_dirs needs 1 folder"),
])
def test_config_errors(overrides, message):
    base = dict(annotation_files=("a.json",), video_dirs=("v",), tokenizer_dir="t")
    config = TrainLoaderConfig(**{**base, **overrides})
    with pytest.raises(ValueError, match=message):
        config.validate(NUM_QUERIES)
