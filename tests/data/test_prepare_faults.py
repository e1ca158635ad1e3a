"""`python -m tlv_jax.data.prepare` adds each dataset to --out whole or not at all: killed when the dataset is written
(TFDS has even renamed its own files into place) it leaves nothing the loader could mistake for a finished dataset,
and the next run removes the leftover; an existing dataset of the same file and settings is replaced only with
--force, while another annotation file or frame setting gets its own dataset beside the first."""

import json

import pytest

from tests import fault_at
from tlv_jax.data.prepare import main as prepare_main
from tlv_jax.data.prepared_example import PrepareConfig
from tlv_jax.data.synthetic import generate_dataset
from tlv_jax.data.tfds_builder import config_name, prepare, resolve_prepared_dir


@pytest.fixture
def config(tmp_path, fixtures_dir):
    """Two synthetic videos, four 28x28 frames each."""
    annotation = generate_dataset(tmp_path / "src", 2, seed=3, frames=8, size=32, fps=8)
    return PrepareConfig(annotation_file=str(annotation), video_dir=str(tmp_path / "src"), num_frames=4,
                         tokenizer_dir=str(fixtures_dir / "qwen2-group-f16" / "finetune"), image_size=28)


def test_a_killed_prepare_leaves_no_dataset_and_the_next_run_cleans_up(tmp_path, config):
    out, marker, log = tmp_path / "prepared", tmp_path / "m", tmp_path / "log"
    args = ["--annotations", config.annotation_file, "--video-dir", config.video_dir, "--tokenizer",
            config.tokenizer_dir, "--out", str(out), "--num-frames", "4", "--image-size", "28"]
    command = ["-m", "tlv_jax.data.prepare", *args]
    proc = fault_at.start("stall", marker, "tlv_jax.convert.atomic:_commit", 1, command, log)
    fault_at.kill_at_marker(proc, marker, log)  # everything written, only the rename into place left
    config_dir = out / "tlv_video_qa" / config_name(config)
    (left,) = [p for p in config_dir.iterdir() if ".tmp-" in p.name]
    assert left.name.startswith(".1.0.0.tmp-") and resolve_prepared_dir(str(left))  # complete, but not in place
    with pytest.raises(ValueError, match="expected one prepared dataset .* found 0"):
        resolve_prepared_dir(str(out))

    assert prepare_main(args) == 0
    assert resolve_prepared_dir(str(out)) == config_dir / "1.0.0"
    assert [p.name for p in config_dir.iterdir()] == ["1.0.0"]


def test_an_existing_dataset_is_replaced_only_with_force(tmp_path, config):
    out = tmp_path / "prepared"
    directory, _ = prepare(config, str(out))
    with pytest.raises(FileExistsError, match=f"{directory}: already exists"):
        prepare(config, str(out))
    directory_again, counter = prepare(config, str(out), force=True)
    assert directory_again == directory == resolve_prepared_dir(str(out)) and counter.good == 2


def test_another_annotation_file_or_frame_setting_is_a_new_dataset_beside_the_first(tmp_path, config):
    out = tmp_path / "prepared"
    first, _ = prepare(config, str(out))
    second_file = tmp_path / "src" / "train_b.json"
    second_file.write_text(json.dumps(json.loads(open(config.annotation_file).read())[:1]))
    second, counter = prepare(PrepareConfig(**{**vars(config), "annotation_file": str(second_file)}), str(out))
    third, _ = prepare(PrepareConfig(**{**vars(config), "num_frames": 2}), str(out))
    assert counter.good == 1 and len({first, second, third}) == 3
    assert first.name == second.name == third.name == "1.0.0"  # one version, a config per file and settings
    assert first.parent.name.startswith("train.f4.s28.png.qwen2_base.")
    assert second.parent.name.startswith("train_b.f4.s28.png.qwen2_base.")
    assert third.parent.name.startswith("train.f2.s28.png.qwen2_base.")
    with pytest.raises(ValueError, match="found 3"):
        resolve_prepared_dir(str(out))
    assert resolve_prepared_dir(str(second.parent)) == second
