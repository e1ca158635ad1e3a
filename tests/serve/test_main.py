"""`python -m tlv_jax.serve`: --help, and a model or media root that cannot be used stops it in one line."""

from __future__ import annotations

import pytest

from tlv_jax.serve.__main__ import main


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--media-root" in capsys.readouterr().out


def test_unusable_model_or_media_root_is_one_error_line(tmp_path, model_dir, capsys):
    assert main(["--model", str(model_dir), "--media-root", str(tmp_path / "nowhere")]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"error: --media-root {tmp_path / 'nowhere'}: not a directory"
    assert main(["--model", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing'}")
    for flag, value in [("--max-batch", "0"), ("--prefix-cache", "-1")]:
        with pytest.raises(SystemExit) as e:
            main(["--model", str(model_dir), flag, value])
        assert e.value.code == 2
