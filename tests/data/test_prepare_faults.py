"""`python -m tlv_jax.data.prepare` writes --out whole or not at all: killed when the dataset is written (TFDS has
even renamed its own files into place) it leaves no --out for the loader to mistake for a finished dataset, and the
next run removes the leftover; an existing --out is replaced only with --force."""

import pytest

from tests import fault_at
from tlv_jax.data.prepare import main as prepare_main
from tlv_jax.data.synthetic import generate_dataset
from tlv_jax.data.tfds_builder import PrepareConfig, prepare, resolve_prepared_dir


@pytest.fixture
def config(tmp_path, fixtures_dir):
    """Two synthetic videos, four 28x28 frames each."""
    annotation = generate_dataset(tmp_path / "src", 2, seed=3, frames=8, size=32, fps=8)
    return PrepareConfig(annotation_file=str(annotation), video_dir=str(tmp_path / "src"), num_frames=4,
                         tokenizer_dir=str(fixtures_dir / "qwen2-group-f16" / "finetune"), image_size=28)


def test_a_killed_prepare_leaves_no_output_and_the_next_run_cleans_up(tmp_path, config):
    out, marker, log = tmp_path / "prepared", tmp_path / "m", tmp_path / "log"
    args = ["--annotations", config.annotation_file, "--video-dir", config.video_dir, "--tokenizer",
            config.tokenizer_dir, "--out", str(out), "--num-frames", "4", "--image-size", "28"]
    command = ["-m", "tlv_jax.data.prepare", *args]
    proc = fault_at.start("stall", marker, "tlv_jax.convert.atomic:_commit", 1, command, log)
    fault_at.kill_at_marker(proc, marker, log)  # everything written, only the rename into place left
    (left,) = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert not out.exists() and left.name.startswith(".prepared.tmp-") and resolve_prepared_dir(str(left))

    assert prepare_main(args) == 0
    assert resolve_prepared_dir(str(out)).is_relative_to(out)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_an_existing_output_is_replaced_only_with_force(tmp_path, config):
    out = tmp_path / "prepared"
    out.mkdir()
    prepare(config, str(out))  # an empty --out (made beforehand) is no dataset to lose
    with pytest.raises(FileExistsError, match=f"{out}: already exists"):
        prepare(config, str(out))
    directory, counter = prepare(config, str(out), force=True)
    assert directory == resolve_prepared_dir(str(out)) and counter.good == 2
