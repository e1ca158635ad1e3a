"""An annotation entry becomes the same stored example wherever its files are: a bucket (gs://, as Beam workers on
Dataflow read it; stood in for here by a local folder behind etils.epath) holding the annotation file, the videos and
the tokenizer gives what the local folder gives, and a missing or broken object is a bad sample that names it."""

import json
import os
import shutil

import pytest
from etils.epath.testing import mock_epath

from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.records import load_annotations
from tlv_jax.data.synthetic import generate_dataset, write_broken_videos

BUCKET = "gs://bucket"


@pytest.fixture(scope="module")
def local(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("bucket")
    annotation = generate_dataset(root, 2, seed=1, frames=8, size=32, fps=8)
    broken = write_broken_videos(root / "broken")
    records = json.loads(annotation.read_text())
    talk = records[0]["conversations"]
    records += [{"id": "cut", "video": f"broken/{broken['truncated'].name}", "conversations": talk},
                {"id": "gone", "video": "broken/not_there.mp4", "conversations": talk}]
    annotation.write_text(json.dumps(records))
    shutil.copytree(fixtures_dir / "qwen2-group-f16" / "finetune", root / "model")  # weights and all
    return PrepareConfig(annotation_file=str(annotation), video_dir=str(root), num_frames=4, image_size=28,
                         tokenizer_dir=str(fixtures_dir / "qwen2-group-f16" / "finetune"))


def _bucket_is(root):
    """epath reads gs://bucket/... from the local folder `root` (every other path as usual)."""
    def at(path):
        return os.fspath(path).replace(BUCKET, str(root))

    def one(original, path, *args, **kwargs):
        return original(at(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
        return original(at(path), at(dst), *args, **kwargs)

    return mock_epath(open=one, exists=one, isdir=one, listdir=one, stat=one, glob=one, copy=two)


def test_entries_in_a_bucket_make_the_same_examples_and_name_the_objects(local):
    records = load_annotations(local.annotation_file)
    maker = ExampleMaker(local)
    expected = [maker(i, r) for i, r in enumerate(records)]
    in_bucket = PrepareConfig(**{**vars(local), "annotation_file": f"{BUCKET}/train.json", "video_dir": BUCKET,
                                 "tokenizer_dir": f"{BUCKET}/model"})
    with _bucket_is(local.video_dir):
        assert load_annotations(in_bucket.annotation_file) == records
        bucket_maker = ExampleMaker(in_bucket)
        got = [bucket_maker(i, r) for i, r in enumerate(records)]
    copied = sorted(os.listdir(bucket_maker.tokenizer.name_or_path))  # the tokenizer's files only, not the weights
    assert copied == ["added_tokens.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json",
                      "vocab.json"]
    for want, have in zip(expected[:2], got[:2]):
        assert have["id"] == want["id"] and have["frames"] == want["frames"]
        assert (have["input_ids"] == want["input_ids"]).all() and (have["labels"] == want["labels"]).all()
    (cut_reason, _, cut_detail), (gone_reason, _, gone_detail) = got[2]["bad"], got[3]["bad"]
    assert (cut_reason, gone_reason) == (expected[2]["bad"][0], "missing_video") == ("unreadable_container",
                                                                                       "missing_video")
    assert f"{BUCKET}/broken/truncated.mp4" in cut_detail and "tlv-video-" not in cut_detail
    assert gone_detail == f"cannot read video {BUCKET}/broken/not_there.mp4: missing (no such object)"
