"""Prediction shards: each process's own file, a fair split of the videos, merged reads that prefer answers."""

import json

from tlv_jax.evaluate.shards import PREDICTIONS, mine, read_all, read_predictions, shard_files, shard_path


def write(path, *records, torn: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn)


def test_one_process_writes_the_classic_file_and_processes_their_own():
    assert shard_path_names(1) == [PREDICTIONS]
    assert shard_path_names(3) == ["predictions-00000-of-00003.jsonl", "predictions-00001-of-00003.jsonl",
                                   "predictions-00002-of-00003.jsonl"]


def shard_path_names(count):
    from pathlib import Path

    return [shard_path(Path("out"), i, count).name for i in range(count)]


def test_the_split_covers_everything_once_and_is_balanced():
    items = list(range(11))
    shares = [mine(items, i, 3) for i in range(3)]
    assert sorted(x for share in shares for x in share) == items
    assert [len(s) for s in shares] == [4, 4, 3]


def test_merged_reads_prefer_answers_and_leave_other_writers_files_alone(tmp_path):
    ok = dict(id="q1", status="ok", output="A")
    failed = dict(id="q1", status="unreadable", output=None)
    write(tmp_path / "predictions-00000-of-00002.jsonl", ok, dict(id="q2", status="missing"))
    write(tmp_path / "predictions-00001-of-00002.jsonl", failed, dict(id="q3", status="ok"),
          torn='{"id": "q4", "sta')
    write(tmp_path / PREDICTIONS, dict(id="q2", status="ok"))
    other = tmp_path / "predictions-00001-of-00002.jsonl"
    before = other.read_text()

    merged = read_all(tmp_path)
    assert {k: r["status"] for k, r in merged.items()} == {"q1": "ok", "q2": "ok", "q3": "ok"}
    assert merged["q1"]["output"] == "A"  # a failure elsewhere does not undo an answer
    assert other.read_text() == before  # a torn line in another process's shard is skipped, not cut
    read_all(tmp_path, own=other)
    assert other.read_text() == before[:before.rindex("\n") + 1]  # the owner cuts its own torn line
    assert [p.name for p in shard_files(tmp_path)] == sorted(p.name for p in tmp_path.glob("*.jsonl"))


def test_a_later_line_of_one_shard_wins(tmp_path):
    write(tmp_path / PREDICTIONS, dict(id="q1", status="unreadable"), dict(id="q1", status="ok"))
    assert read_predictions(tmp_path / PREDICTIONS)["q1"]["status"] == "ok"
