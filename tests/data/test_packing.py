"""Packing in the training loader (`data.packing`): every good sample lands once in some row with its own video slot,
positions restart and targets are the sample's own; bad samples still leave at once and are counted (over-long ones
against the row length); a state taken between any two elements restores exactly; prepared (TFDS) data packs to the
same rows as the annotation files."""

import dataclasses
import json

import grain
import numpy as np

from tests.data.test_pipeline import EXPECTED_BAD, NUM_QUERIES, _config, _Elements, data, tokenizer_dir  # noqa: F401
from tests.data.test_tfds_builder import _loader_config, prepared, source  # noqa: F401
from tlv_jax.data.packing import ExpandVideo, pack
from tlv_jax.data.pipeline import make_train_iterator
from tlv_jax.data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX, encode_conversation

LENGTH = 316  # the largest bucket of the loader tests: the row length when packing


def _with_video(element: dict) -> dict:
    """A stand-in sample of `test_pipeline._Elements` with a placeholder in front of its text."""
    if "bad" in element:
        return element
    front = np.array([0, IMAGE_TOKEN_INDEX], np.int32)
    return {**element, "input_ids": np.concatenate([front, element["input_ids"]]),
            "labels": np.concatenate([front, element["labels"]])}


def _packed(kinds: str):
    ds = grain.MapDataset.source(_Elements(kinds)).map(_with_video).map(ExpandVideo(4)).to_iter_dataset()
    return pack(ds, length=24, videos=3, pad_id=0, bins=2).__iter__()


def _describe(element: dict) -> str:
    if "bad" in element:
        return element["bad"][1]
    return str(element["sample_index"].tolist())


def test_markers_leave_at_once_and_a_state_between_any_two_elements_restores_exactly():
    kinds = "gxgxxgggxxgxggggxg"
    whole = [_describe(e) for e in _packed(kinds)]
    assert whole[:3] == ["s1", "s3", "s4"]  # before any row: the packer is still filling its bins
    goods = sorted(int(i) for e in whole if e.startswith("[") for i in json.loads(e) if i >= 0)
    assert goods == [i for i, k in enumerate(kinds) if k == "g"]
    assert sorted(e for e in whole if e.startswith("s")) == sorted(f"s{i}" for i, k in enumerate(kinds) if k == "x")
    for cut in range(len(whole)):
        it = _packed(kinds)
        for _ in range(cut):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        resumed = _packed(kinds)
        resumed.set_state(state)
        assert [_describe(e) for e in resumed] == whole[cut:], cut


def _epoch(config):
    it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
    try:
        return list(it), it.bad_samples
    finally:
        it.close()


def _segments(batch: dict):
    """(row, slot, sample index, positions of its tokens) of every sample in a packed batch."""
    for r, indices in enumerate(batch["sample_index"]):
        for slot, index in enumerate(indices):
            if index >= 0:
                yield r, slot, int(index), np.flatnonzero(batch["segment_ids"][r] == slot + 1)


def test_an_epoch_packs_every_good_sample_once_and_counts_the_bad_ones(data, tokenizer_dir):  # noqa: F811
    config = _config(data, tokenizer_dir, num_epochs=1, packing=True, length_buckets=(LENGTH,), batch_size=2)
    batches, bad = _epoch(config)
    assert {k: v for k, v in bad.counts.items() if v} == EXPECTED_BAD and bad.good == 12
    seen = sorted(index for b in batches for _, _, index, _ in _segments(b))
    assert seen == list(range(12))
    assert np.mean([np.count_nonzero(b["segment_ids"]) / b["segment_ids"].size for b in batches]) > 0.6

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for b in batches:
        assert set(b) == {"input_ids", "labels", "segment_ids", "positions", "pixel_values", "frames_mask",
                          "sample_index"}
        assert b["input_ids"].shape == b["labels"].shape == b["positions"].shape == (2, LENGTH)
        slots = b["sample_index"].shape[1]
        assert b["pixel_values"].shape == (2, slots, 4, 28, 28, 3) and b["frames_mask"].shape == (2, slots, 4)
        assert (b["labels"][b["segment_ids"] == 0] == IGNORE_INDEX).all()
        assert not b["frames_mask"][b["sample_index"] < 0].any() and not b["pixel_values"][b["sample_index"] < 0].any()
        for r, slot, index, where in _segments(b):
            enc = encode_conversation(data["records"][index]["conversations"], tok, "qwen2_base")
            at = int(np.flatnonzero(enc.input_ids == IMAGE_TOKEN_INDEX)[0])
            video = np.full(NUM_QUERIES, IMAGE_TOKEN_INDEX)
            np.testing.assert_array_equal(b["input_ids"][r, where],
                                          np.concatenate([enc.input_ids[:at], video, enc.input_ids[at + 1:]]))
            np.testing.assert_array_equal(b["labels"][r, where], np.concatenate(
                [enc.labels[:at], np.full(NUM_QUERIES, IGNORE_INDEX), enc.labels[at + 1:]]))
            np.testing.assert_array_equal(b["positions"][r, where], np.arange(len(where)))
            assert where[-1] - where[0] + 1 == len(where) and b["frames_mask"][r, slot].all()


def test_packed_state_restores_exactly_without_and_with_workers(data, tokenizer_dir):  # noqa: F811
    for workers in (0, 2):
        config = _config(data, tokenizer_dir, packing=True, length_buckets=(LENGTH,), num_workers=workers)
        it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
        try:
            whole = [next(it) for _ in range(5)]
        finally:
            it.close()
        it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
        try:
            for _ in range(2):
                next(it)
            state = json.loads(json.dumps(it.get_state()))
        finally:
            it.close()
        it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
        try:
            it.set_state(state)
            resumed = [next(it) for _ in range(3)]
        finally:
            it.close()
        for a, b in zip(whole[2:], resumed):
            assert all(np.array_equal(a[k], b[k]) for k in a), workers


def _samples_by_text(batches: list[dict]) -> dict[tuple, tuple]:
    """Every packed sample keyed by its ids: (labels, positions, pixels, frames mask)."""
    out = {}
    for b in batches:
        for r, slot, _, where in _segments(b):
            out[tuple(b["input_ids"][r, where])] = (b["labels"][r, where], b["positions"][r, where],
                                                    b["pixel_values"][r, slot], b["frames_mask"][r, slot])
    return out


def test_prepared_data_packs_to_the_same_samples(source, prepared):  # noqa: F811
    config = _loader_config(source, packing=True, length_buckets=(LENGTH,), batch_size=1)
    from_files, _ = _epoch(dataclasses.replace(config, annotation_files=(str(source["annotation"]),),
                                               video_dirs=(str(source["root"]),)))
    from_prepared, counter = _epoch(dataclasses.replace(config, prepared_dirs=(str(prepared.parent.parent),)))
    direct, stored = _samples_by_text(from_files), _samples_by_text(from_prepared)
    assert set(direct) == set(stored) and len(direct) == counter.good == 6
    for key, arrays in direct.items():
        for a, b in zip(arrays, stored[key]):
            np.testing.assert_array_equal(a, b)  # PNG frames: bit-identical pixels
