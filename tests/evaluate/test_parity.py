"""The parity report: `--benchmark all` over a data root runs the five benchmarks and writes one table (Markdown and
JSON) with our headline score, the published one for the model, the difference and the run's counts."""

import json

import pytest

from tlv_jax.evaluate import __main__ as cli
from tlv_jax.evaluate import parity

from .fixtures import MAKERS, ScriptedAnswerer
from .test_data_parallel import FOLDERS

# Every fixture question's text -> an answer (right for some, wrong or unparseable for others).
SCRIPT = {
    "first frame": "A", "sky in the video": "C", "the car": "C", "How many people": "D", "Where does the story": "B",
    "do first": "(B)", "after sitting": "B", "Which pose": "A", "action in the video": "B", "Sheldon upset": "A",
    "enters the room": "Hmm", "metal objects": "A",
    "said first": "A", "last frame": "B", "has an offset": "A",
    "girl in red": "B", "dog at the end": "D", "appears briefly": "B", "what order": "A", "main topic": "A",
    "Which reaction": "B", "What gas": "Hydrogen", "painting technique": "C", "Who painted": "Vincent van Gogh",
}


@pytest.fixture
def data_root(tmp_path):
    for name, make in MAKERS.items():
        make(tmp_path / "data" / FOLDERS[name])
    return tmp_path / "data"


def test_all_five_benchmarks_make_one_report(tmp_path, monkeypatch, data_root, capsys):
    monkeypatch.setattr(cli, "build_answerer", lambda *a: ScriptedAnswerer(SCRIPT))
    model = tmp_path / "TinyLLaVA-Video-Qwen2.5-3B-Group-16-512"
    report = cli.main(["--benchmark", "all", "--model", str(model), "--data-root", str(data_root),
                       "--out", str(tmp_path / "out"), "--num-frames", "2", "--max-frames", "2", "--no-progress"])

    assert report["published_as"] == "TinyLLaVA-Video-Qwen2.5-3B-Group-16-512"
    assert report == json.loads((tmp_path / "out" / "report.json").read_text())
    rows = {r["benchmark"]: r for r in report["rows"]}
    assert list(rows) == list(parity.BENCHMARKS)
    for name, row in rows.items():
        summary = json.loads((tmp_path / "out" / name / "summary.json").read_text())
        metric, ours = list(summary["scores"].items())[-1]
        assert (row["metric"], row["ours"]) == (metric, round(ours, 2))
        assert row["published"] == parity.PUBLISHED[report["published_as"]][name]
        assert row["difference"] == round(ours - row["published"], 2)
        assert (row["questions"], row["fallbacks"]) == (summary["questions"], summary["fallbacks"])
        assert (row["unreadable_videos"], row["missing_videos"]) == (summary["unreadable"]["videos"],
                                                                     summary["missing"]["videos"])
        assert row["seconds"] >= 0
    assert (rows["mvbench"]["fallbacks"], rows["videomme"]["unreadable_videos"]) == (1, 1)
    assert [rows[n]["metric"] for n in parity.BENCHMARKS] == ["Overall", "Avg", "Overall", "M-Avg", "Avg"]

    table = (tmp_path / "out" / "report.md").read_text()
    assert table == parity.markdown(report) and table in capsys.readouterr().out
    mvbench = next(line for line in table.splitlines() if line.startswith("| MVBench |"))
    assert f"| {rows['mvbench']['ours']:.1f} | 45.5 | {rows['mvbench']['difference']:+.1f} | 9 |" in mvbench


def test_other_models_have_no_published_numbers_unless_named(tmp_path, monkeypatch, data_root):
    monkeypatch.setattr(cli, "build_answerer", lambda *a: ScriptedAnswerer(SCRIPT))
    args = ["--benchmark", "all", "--model", str(tmp_path / "my-run"), "--data-root", str(data_root), "--num-frames",
            "2", "--max-frames", "2", "--no-progress"]
    report = cli.main(args + ["--out", str(tmp_path / "a")])
    assert report["published_as"] is None and {r["published"] for r in report["rows"]} == {None}
    assert "no published numbers for this model" in (tmp_path / "a" / "report.md").read_text()
    named = cli.main(args + ["--out", str(tmp_path / "b"), "--published-as", "TinyLLaVA-Video-Phi2-Naive-16-512"])
    assert [r["published"] for r in named["rows"]] == [42.7, 42.0, 42.2, 46.5, 31.6]


def test_released_names_are_found_in_paths_and_hub_ids():
    assert parity.released_name("ckpt/tinyllava-video-qwen2.5-3b-group-1fps-512/") == \
        "TinyLLaVA-Video-Qwen2.5-3B-Group-1fps-512"
    assert parity.released_name("Zhang199/TinyLLaVA-Video-Qwen2.5-3B-Naive-16-512") == \
        "TinyLLaVA-Video-Qwen2.5-3B-Naive-16-512"
    assert parity.released_name("workdir/demo/model") is None
