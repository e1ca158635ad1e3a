"""Start-up data checks: data that cannot work stops the run with one line naming the file or folder (a `DataError`,
which is a ValueError), before anything is decoded; a few bad files only warn, since training skips and counts them."""

import json
import logging

import pytest

from tlv_jax.data.errors import DataError
from tlv_jax.data.loader_config import TrainLoaderConfig
from tlv_jax.data.preflight import check_data


@pytest.fixture
def folder(tmp_path):
    """8 entries whose videos are small regular files (nothing is decoded at start-up)."""
    (tmp_path / "videos").mkdir()
    records = []
    for i in range(8):
        (tmp_path / "videos" / f"v{i}.mp4").write_bytes(b"\0" * 8)
        records.append({"id": f"v{i}", "video": f"videos/v{i}.mp4", "conversations": []})
    return tmp_path, records


def _check(tmp_path, records, samples=64, video_dir=None, text=None):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records) if text is None else text)
    config = TrainLoaderConfig(annotation_files=(str(path),), video_dirs=(str(video_dir or tmp_path),))
    return check_data(config, samples)


def _one_line(err) -> str:
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    return message


def test_good_data_passes_and_is_counted(folder):
    assert _check(*folder) == 8


@pytest.mark.parametrize("text, problem", [
    ('[{"id": 1,}]', r"train.json: not valid JSON \(Expecting property name enclosed in double quotes: line 1"),
    ('{"id": 1}', "train.json: expected a JSON list of samples, got dict"),
    ("[]", "train.json holds no samples"),
])
def test_an_annotation_file_that_does_not_parse_is_named_with_the_problem(folder, text, problem):
    with pytest.raises(DataError, match=problem) as err:
        _check(*folder, text=text)
    _one_line(err)


def test_a_missing_annotation_file(tmp_path):
    config = TrainLoaderConfig(annotation_files=(str(tmp_path / "tarin.json"),), video_dirs=(str(tmp_path),))
    with pytest.raises(DataError, match=r"annotation file .*tarin.json: cannot be read \(No such file or directory\)"):
        check_data(config)


def test_a_video_folder_typo_is_named(folder):
    tmp_path, records = folder
    with pytest.raises(DataError, match=r"video folder .*/vidoes \(for .*train.json\) does not exist") as err:
        _check(tmp_path, records, video_dir=tmp_path / "vidoes")
    _one_line(err)


def test_paths_relative_to_another_folder_stop_the_run_with_counts_and_an_example(folder):
    tmp_path, records = folder
    with pytest.raises(DataError) as err:
        _check(tmp_path, records, video_dir=tmp_path / "videos")  # the entries already start with videos/
    message = _one_line(err)
    assert message.startswith("8 of the first 8 videos of ") and "(missing_video=8)" in message
    assert "e.g. cannot read video " + str(tmp_path / "videos" / "videos" / "v0.mp4") in message


def test_only_the_first_k_entries_are_checked(folder):
    tmp_path, records = folder
    for i in (4, 5, 6, 7):
        (tmp_path / "videos" / f"v{i}.mp4").unlink()
    assert _check(tmp_path, records, samples=4) == 8
    with pytest.raises(DataError, match="^4 of the first 8 videos"):  # half or more: the run stops
        _check(tmp_path, records, samples=8)
    assert _check(tmp_path, records, samples=0) == 8  # 0: no video is checked


def test_a_few_unreadable_videos_warn_with_their_reasons(folder, caplog):
    tmp_path, records = folder
    (tmp_path / "videos" / "v1.mp4").unlink()
    (tmp_path / "videos" / "v1.mp4").mkdir()  # a directory named like a video
    (tmp_path / "videos" / "v2.mp4").unlink()
    (tmp_path / "videos" / "v2.mp4").symlink_to("v2.mp4")  # a link to itself
    records[3] = {"id": "v3"}  # no video at all
    with caplog.at_level(logging.WARNING, logger="tlv_jax.data.preflight"):
        assert _check(tmp_path, records) == 8
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("3 of the first 8 videos") and "they will be skipped and counted" in warning
    assert "not_a_regular_file=1, unresolvable_path=1, missing_video=1" in warning


def test_prepared_folders_must_hold_a_dataset(tmp_path):
    def check(path):
        return check_data(TrainLoaderConfig(prepared_dirs=(str(path),)))

    with pytest.raises(DataError, match="prepared dataset folder .*/nope does not exist"):
        check(tmp_path / "nope")
    with pytest.raises(DataError, match="expected one prepared dataset .* found 0"):
        check(tmp_path)
    version = tmp_path / "tlv_video_qa" / "1.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError, match=r"has no train split files .* interrupted\?") as err:
        check(tmp_path)
    _one_line(err)
    (version / "tlv_video_qa-train.array_record-00000-of-00001").write_bytes(b"")
    assert check(tmp_path) is None
