"""`python -m tlv_jax.train.export`: a workdir without a run or without checkpoints is one clear error naming the
path (exporting a finished multi-process run is covered in tests/sharding/test_multihost.py)."""

import pytest

from tlv_jax.train.config_file import load_config
from tlv_jax.train.export import export_checkpoint, main

from . import tiny_run


def test_a_directory_without_a_run_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/config.json: no run config"):
        export_checkpoint(tmp_path)


def test_a_run_without_checkpoints_exits_with_the_reason(tmp_path, capsys):
    config = load_config(tiny_run.ROOT / "configs" / "base.py")
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    assert main(["--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}/checkpoints: no checkpoint to export"
