"""`prepare` writes a TFDS ArrayRecord dataset (no TensorFlow) that the loader reads to exactly the same batches as the
annotation path; bad entries are skipped and counted at prepare time; settings mismatches are refused."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tlv_jax.data.pipeline import TrainLoaderConfig, load_tokenizer, make_train_iterator
from tlv_jax.data.prepare import main as prepare_main
from tlv_jax.data.synthetic import generate_dataset, write_broken_videos
from tlv_jax.data.prepared_example import encode_frames
from tlv_jax.data.tfds_builder import decode_frames, open_prepared, resolve_prepared_dir

NUM_QUERIES = 16


@pytest.fixture(scope="module")
def source(tmp_path_factory, fixtures_dir):
    """6 synthetic videos + one truncated file, and the fixture model's tokenizer."""
    root = tmp_path_factory.mktemp("tfds_src")
    annotation = generate_dataset(root, 6, seed=3, frames=8, size=32, fps=8, answer_format="mixed")
    broken = write_broken_videos(root / "broken")
    records = json.loads(annotation.read_text())
    records.append({"id": "cut", "video": f"broken/{broken['truncated'].name}", "conversations":
                    records[0]["conversations"]})
    annotation.write_text(json.dumps(records))
    return {"root": root, "annotation": annotation, "tokenizer": str(fixtures_dir / "qwen2-group-f16" / "finetune")}


def _prepare(source, out, *extra):
    args = ["--annotations", str(source["annotation"]), "--video-dir", str(source["root"]), "--tokenizer",
            source["tokenizer"], "--out", str(out), "--num-frames", "4", "--image-size", "28", *extra]
    assert prepare_main(args) == 0
    return resolve_prepared_dir(str(out))


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    return _prepare(source, tmp_path_factory.mktemp("tfds_out"), "--workers", "1")  # decoding in a spawned process


def _loader_config(source, **overrides):
    base = dict(tokenizer_dir=source["tokenizer"], num_frames=4, image_size=28, length_buckets=(216, 256, 316),
                batch_size=1, num_epochs=1)
    return TrainLoaderConfig(**{**base, **overrides})


def _by_text(config):
    it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
    try:
        return {tuple(b["input_ids"][0]): b for b in it}, it.bad_samples
    finally:
        it.close()


def test_prepare_writes_metadata_and_counts_bad_entries(prepared, capsys):
    builder = tfds.builder_from_directory(prepared)
    meta = builder.info.metadata
    assert meta["template"] == "qwen2_base" and meta["num_frames"] == 4 and meta["image_size"] == 28
    assert meta["bad_samples"]["good"] == 6 and meta["bad_samples"]["bad_unreadable_container"] == 1
    source = builder.as_data_source(split="train")
    assert len(source) == 6
    example = source[0]
    assert example["input_ids"].dtype == np.int32 and (example["input_ids"] == -200).sum() == 1
    assert decode_frames(example["frames"]).shape == (4, 28, 28, 3)


def test_prepared_batches_equal_annotation_batches(source, prepared):
    direct, _ = _by_text(_loader_config(source, annotation_files=(str(source["annotation"]),),
                                        video_dirs=(str(source["root"]),)))
    stored, counter = _by_text(_loader_config(source, prepared_dirs=(str(prepared.parent.parent),), num_workers=1))
    assert direct.keys() == stored.keys() and len(stored) == 6 and counter.bad == 0  # the cut video was left out
    for key, batch in direct.items():
        for name in ("labels", "attention_mask", "pixel_values", "frames_mask"):
            np.testing.assert_array_equal(stored[key][name], batch[name])  # PNG: bit-identical pixels


def test_prepared_settings_must_match_the_loader(source, prepared):
    tokenizer = load_tokenizer(source["tokenizer"])
    with pytest.raises(ValueError, match=r"num_frames: prepared 4 vs loader 8.*run prepare again"):
        open_prepared(str(prepared), _loader_config(source, prepared_dirs=(str(prepared),), num_frames=8), tokenizer)
    with pytest.raises(ValueError, match="expected one prepared dataset"):
        resolve_prepared_dir(str(source["root"]))


def test_png_is_lossless_and_jpeg_close():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_frames(encode_frames(noise, "png")), noise)
    ramp = np.linspace(0, 175, 28)[None, None, :, None] + np.array([0, 40, 80])  # smooth, one shift per channel
    smooth = np.ascontiguousarray(np.broadcast_to(ramp, (2, 28, 28, 3)).astype(np.uint8))
    jpeg = decode_frames(encode_frames(smooth, "jpeg", jpeg_quality=95))
    assert jpeg.shape == smooth.shape and np.abs(jpeg.astype(int) - smooth).max() <= 4
