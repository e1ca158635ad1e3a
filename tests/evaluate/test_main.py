"""The command line: arguments reach the evaluation, the summary is written and printed."""

import json

import pytest

from tlv_jax.evaluate import __main__ as cli

from .fixtures import ScriptedAnswerer, make_mmvu


def test_cli_runs_a_benchmark(tmp_path, monkeypatch, capsys):
    data = make_mmvu(tmp_path / "mmvu")
    built = []

    def fake_build(model_dir, dtype, max_batch):
        built.append((model_dir, dtype, max_batch))
        return ScriptedAnswerer({"Which reaction": "B", "What gas": "Hydrogen", "painting technique": "A",
                                 "Who painted": "Vincent van Gogh"})

    monkeypatch.setattr(cli, "build_answerer", fake_build)
    out = tmp_path / "out"
    summary = cli.main(["--benchmark", "mmvu", "--model", str(tmp_path / "model"), "--data", str(data),
                        "--out", str(out), "--num-frames", "2", "--max-frames", "2", "--limit", "4",
                        "--max-new-tokens", "8", "--no-progress", "--dtype", "bfloat16"])
    assert built == [((tmp_path / "model").resolve(), "bfloat16", 8)]
    assert summary["questions"] == 4 and summary["scores"]["Avg"] == 100.0
    assert json.loads((out / "summary.json").read_text())["config"] == dict(
        benchmark="mmvu", model=str((tmp_path / "model").resolve()), num_frames=2, max_frames=2, max_new_tokens=8,
        seed=0)
    printed = capsys.readouterr().out
    assert "multiple-choice" in printed and str(out / "summary.json") in printed


def test_cli_reports_an_unreadable_benchmark_folder_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_answerer", lambda *a: ScriptedAnswerer({}))
    (tmp_path / "empty").mkdir()
    assert cli.cli(["--benchmark", "mvbench", "--model", str(tmp_path), "--data", str(tmp_path / "empty"),
                    "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MVBench task file") and str(tmp_path / "empty") in err and "\n" not in err


def test_cli_names_every_absent_benchmark_folder_before_loading_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_answerer", lambda *a: pytest.fail("the model was loaded"))
    make_mmvu(tmp_path / "root" / "MMVU")
    assert cli.cli(["--benchmark", "all", "--model", str(tmp_path), "--data-root", str(tmp_path / "root"),
                    "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no benchmark folder") and "\n" not in err
    assert all(str(tmp_path / "root" / name) in err for name in ("Video-MME", "MVBench", "LongVideoBench", "MLVU"))
    assert "MMVU" not in err
