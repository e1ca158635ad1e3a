"""`python convert_weights.py torch2jax|jax2torch SRC DST`: help, exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convert_weights
from convert import copy_fixture, edit_flat, leftovers  # the tests/convert helpers (tests/ is on sys.path)
from tlv_jax.convert.safetensors_io import open_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    rc = convert_weights.main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_documents_both_commands(capsys):
    top = subprocess.run([sys.executable, "convert_weights.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert top.returncode == 0
    for word in ("torch2jax", "jax2torch", "pretrain-stage", "published", "SRC", "DST"):
        assert word in top.stdout
    for command, options in (("torch2jax", ("--component", "--dtype", "--force", "--num-frames")),
                             ("jax2torch", ("--max-shard-size", "--layout", "--dtype", "--force"))):
        with pytest.raises(SystemExit) as exit_info:
            convert_weights.main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(o in text for o in options + ("SRC", "DST")), command


def test_both_directions_from_the_command_line(fixtures_dir, tmp_path, capsys):
    rc, out, _ = _run(["torch2jax", str(fixtures_dir / "phi-naive-f4" / "pretrain"), str(tmp_path / "ours")], capsys)
    assert rc == 0 and "wrote" in out
    rc, _, _ = _run(["jax2torch", str(tmp_path / "ours"), str(tmp_path / "torch"), "--max-shard-size", "500KB"],
                    capsys)
    assert rc == 0
    assert len(list((tmp_path / "torch").glob("model-*-of-*.safetensors"))) >= 2
    ref, got = open_checkpoint(fixtures_dir / "phi-naive-f4" / "finetune"), open_checkpoint(tmp_path / "torch")
    assert sorted(ref.keys()) == sorted(got.keys())
    assert all(ref.get(k).tobytes() == got.get(k).tobytes() for k in ref.keys())


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.pop("vision_tower._vision_tower.vision_model.head.probe"), "vision_tower._vision_tower.vision_model.head.probe"),
    (lambda t: t.__setitem__("language_model.model.layers.9.mlp.fc1.weight", np.zeros((2, 2), np.float32)),
     "language_model.model.layers.9.mlp.fc1.weight"),
    (lambda t: t.__setitem__("language_model.lm_head.bias", np.zeros(3, np.float32)), "language_model.lm_head.bias"),
], ids=["missing", "unexpected", "shape"])
def test_bad_input_exits_non_zero_with_one_line(fixtures_dir, tmp_path, capsys, edit, key):
    src = copy_fixture(fixtures_dir, "phi-naive-f4", "finetune", tmp_path / "src")
    edit_flat(src, edit)
    rc, out, err = _run(["torch2jax", str(src), str(tmp_path / "dst")], capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(key) in lines[0]
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_existing_destination_and_missing_source(fixtures_dir, tmp_path, capsys):
    (tmp_path / "dst").mkdir()
    rc, _, err = _run(["torch2jax", str(fixtures_dir / "phi-naive-f4" / "finetune"), str(tmp_path / "dst")], capsys)
    assert rc == 1 and "already exists (pass --force" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(["jax2torch", str(tmp_path / "nowhere"), str(tmp_path / "out")], capsys)
    assert rc == 1 and "not a tlv_jax checkpoint" in err and not (tmp_path / "out").exists()
    rc, _, err = _run(["jax2torch", str(tmp_path / "dst"), str(tmp_path / "out"), "--max-shard-size", "huge"],
                      capsys)
    assert rc == 1 and "bad size 'huge'" in err


def test_script_runs_as_a_subprocess(fixtures_dir, tmp_path):
    """The real entry point, as a user runs it (fresh interpreter, progress bar on stderr)."""
    proc = subprocess.run([sys.executable, "convert_weights.py", "torch2jax",
                           str(fixtures_dir / "qwen2-group-f16" / "finetune"), str(tmp_path / "ours")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ours" / "tlv_jax.json").read_text())["kind"] == "tinyllava"
