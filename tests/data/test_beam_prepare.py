"""`prepare --beam` (TFDS's Apache Beam path, DirectRunner with 2 processes) writes the same records as the pool path
from a set with broken videos and bad conversations mixed in, reports the same bad-sample counts and fails under the
same threshold; a worker that dies on one video costs only that sample; the loader reads and resumes the Beam-built
dataset and mixes it with others."""

import contextlib
import io
import json
import os
import signal

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_datasets as tfds
from apache_beam.testing.util import assert_that, equal_to

from tlv_jax.data.bad_samples import TooManyBadSamples
from tlv_jax.data.beam_prepare import PrepareExamples, bad_sample_counter, pipeline_options
from tlv_jax.data.pipeline import TrainLoaderConfig, make_train_iterator
from tlv_jax.data.prepare import main as prepare_main
from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.synthetic import generate_dataset, write_broken_videos
from tlv_jax.data.tfds_builder import prepare, resolve_prepared_dir

NUM_QUERIES = 16
BROKEN = ("truncated", "missing", "random_bytes", "empty", "audio_only", "directory")
IN_PROCESS = "runner=DirectRunner"  # one process: the tests of the transform itself


@pytest.fixture(scope="module")
def source(tmp_path_factory, fixtures_dir):
    """8 synthetic videos, 6 broken ones and one conversation without '<image>' (15 entries, 7 bad)."""
    root = tmp_path_factory.mktemp("beam_src")
    annotation = generate_dataset(root, 8, seed=5, frames=8, size=32, fps=8, answer_format="mixed")
    broken = write_broken_videos(root / "broken")
    records = json.loads(annotation.read_text())
    talk = records[0]["conversations"]
    records[3:3] = [{"id": f"bad_{name}", "video": f"broken/{broken[name].name}", "conversations": talk}
                    for name in BROKEN]
    records.append({"id": "no_image", "video": records[0]["video"],
                    "conversations": [{**talk[0], "value": talk[0]["value"].replace("<image>", "")}, talk[1]]})
    annotation.write_text(json.dumps(records))
    return PrepareConfig(annotation_file=str(annotation), video_dir=str(root), num_frames=4, image_size=28,
                         tokenizer_dir=str(fixtures_dir / "qwen2-group-f16" / "finetune"))


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    """The same set prepared by the pool path and by `prepare --beam` (2 DirectRunner processes, the default)."""
    pool_dir, pool_counter = prepare(source, str(tmp_path_factory.mktemp("pool")))
    out = tmp_path_factory.mktemp("beam")
    args = ["--annotations", source.annotation_file, "--video-dir", source.video_dir, "--tokenizer",
            source.tokenizer_dir, "--out", str(out), "--num-frames", "4", "--image-size", "28", "--beam",
            "--workers", "2"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert prepare_main(args) == 0
    return {"pool": pool_dir, "pool_counter": pool_counter, "beam": resolve_prepared_dir(str(out)),
            "printed": printed.getvalue()}


def test_beam_and_pool_paths_write_the_same_records_and_counts(built):
    pool, beam_built = (tfds.builder_from_directory(built[k]) for k in ("pool", "beam"))
    assert built["beam"].parent.name == built["pool"].parent.name  # same file and settings: same config name
    a, b = pool.as_data_source(split="train"), beam_built.as_data_source(split="train")
    assert len(a) == len(b) == 8
    for i in range(len(a)):  # same keys, so TFDS shuffles both into the same order
        x, y = a[i], b[i]
        assert x["id"] == y["id"] and x["video"] == y["video"]
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
        assert [bytes(f) for f in x["frames"]] == [bytes(f) for f in y["frames"]]  # PNG: bit-identical frames
    counts = beam_built.info.metadata["bad_samples"]
    assert counts == pool.info.metadata["bad_samples"] == built["pool_counter"].get_state()
    assert counts["good"] == 8 and counts["bad_unreadable_container"] == 3 and counts["bad_no_image"] == 1
    assert counts["bad_missing_video"] == counts["bad_no_video_stream"] == counts["bad_not_a_regular_file"] == 1
    assert f"prepared {built['pool_counter'].summary()} -> {built['beam']}" in built["printed"]


def _loader_config(dirs, **overrides):
    base = dict(prepared_dirs=tuple(map(str, dirs)), tokenizer_dir=str(overrides.pop("tokenizer_dir")), num_frames=4,
                image_size=28, length_buckets=(216, 256, 316), batch_size=2, seed=0)
    return TrainLoaderConfig(**{**base, **overrides})


def _take(config, n, state=None):
    it = make_train_iterator(config, NUM_QUERIES, process_index=0, process_count=1)
    try:
        if state is not None:
            it.set_state(state)
        return [next(it) for _ in range(n)], it.get_state()
    finally:
        it.close()


def test_the_loader_resumes_a_beam_built_dataset_exactly(built, source):
    config = _loader_config([built["beam"]], tokenizer_dir=source.tokenizer_dir)  # repeats: crosses an epoch
    whole, _ = _take(config, 7)
    _, state = _take(config, 4)
    resumed, _ = _take(config, 3, state=json.loads(json.dumps(state)))
    for a, b in zip(whole[4:], resumed):
        for name in ("input_ids", "labels", "pixel_values", "frames_mask", "sample_index"):
            np.testing.assert_array_equal(a[name], b[name])


def test_beam_built_and_pool_built_datasets_mix_with_weights(built, source):
    config = _loader_config([built["beam"], built["pool"]], tokenizer_dir=source.tokenizer_dir, weights=(3.0, 1.0),
                            num_epochs=1)
    batches, _ = _take(config, 4)
    index = np.concatenate([b["sample_index"] for b in batches])
    assert ((index < 8).sum(), (index >= 8).sum()) == (6, 2)  # the second source's indices follow the first's


def test_the_same_threshold_fails_both_paths_with_the_same_report(source, tmp_path):
    """Two good entries, then two bad: the pool path, which checks as it goes, passes the threshold at the last one,
    so both paths report the same totals and the same first example of each reason."""
    records = json.loads(open(source.annotation_file).read())
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps([records[0], records[1], records[3], records[-1]]))  # 2 good, truncated, no image
    config = PrepareConfig(**{**vars(source), "annotation_file": str(subset), "max_bad_fraction": 0.4,
                              "min_samples_for_bad_check": 4})
    with pytest.raises(TooManyBadSamples) as pool_error:
        prepare(config, str(tmp_path / "pool"))
    with pytest.raises(TooManyBadSamples) as beam_error:
        prepare(config, str(tmp_path / "beam"), beam_options=pipeline_options(IN_PROCESS))
    assert str(beam_error.value) == str(pool_error.value)
    assert "2 of 4 samples were unusable (50.00% > 40.00%)" in str(beam_error.value)
    assert "unreadable_container=1, no_image=1" in str(beam_error.value)
    with pytest.raises(ValueError, match="found 0"):  # neither left a dataset behind
        resolve_prepared_dir(str(tmp_path / "beam"))


class _DiesOnTheThirdVideo(ExampleMaker):
    """A decoder that kills its process (a segfault) on one video, as a broken FFmpeg build might."""

    def __call__(self, index, record):
        if index == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().__call__(index, record)


def test_a_worker_dying_on_one_video_costs_only_that_sample(source, tmp_path):
    records = [r for r in json.loads(open(source.annotation_file).read()) if r["id"].startswith("train_")][:4]
    config = PrepareConfig(**{**vars(source), "annotation_file": str(tmp_path / "four.json")})
    (tmp_path / "four.json").write_text(json.dumps(records))
    first_bad = tmp_path / "first_bad.json"
    pipeline = beam.Pipeline(options=pipeline_options(IN_PROCESS))
    examples = pipeline | PrepareExamples(config, str(first_bad), maker_factory=_DiesOnTheThirdVideo)
    assert_that(examples | beam.Map(lambda kv: (kv[0], kv[1]["id"])),
                equal_to([(i, r["id"]) for i, r in enumerate(records) if i != 2]))
    counter = bad_sample_counter(pipeline.run(), str(first_bad), config)
    assert counter.good == 3 and counter.counts["decode_error"] == 1 and counter.bad == 1
    assert not first_bad.exists()  # read and removed


def test_pipeline_options_default_to_local_processes_and_take_tfds_style_pairs():
    local = pipeline_options("", workers=2).get_all_options()
    assert (local["runner"], local["direct_running_mode"], local["direct_num_workers"]) == (
        "DirectRunner", "multi_processing", 2)
    flink = pipeline_options("runner=FlinkRunner,flink_master=host:8081,environment_type=LOOPBACK").get_all_options()
    assert (flink["runner"], flink["flink_master"], flink["environment_type"]) == ("FlinkRunner", "host:8081",
                                                                                  "LOOPBACK")
