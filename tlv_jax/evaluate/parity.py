"""The parity report: our score on each benchmark beside the score the original published for the same model.

The released models' published numbers (the original's README and model cards, in percent) are kept in one table,
keyed by the model's released name. Each benchmark's headline score is the last entry of its summary's scores
(Video-MME and LongVideoBench: Overall, MVBench and MMVU: Avg, MLVU: M-Avg), the figure those numbers report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

BENCHMARKS = ("videomme", "mvbench", "longvideobench", "mlvu", "mmvu")
TITLES = dict(videomme="Video-MME", mvbench="MVBench", longvideobench="LongVideoBench", mlvu="MLVU", mmvu="MMVU")


def _scores(*values: float) -> dict[str, float]:
    return dict(zip(BENCHMARKS, values))


# Released model -> benchmark -> published score (%). 16 uniform frames and 512 video tokens, except the 1fps model
# (one frame per second). The Naive models' numbers predate the original's change of Video-MME and MLVU frame reading
# to timestamp seeking, which our readers follow.
PUBLISHED: dict[str, dict[str, float]] = {
    "TinyLLaVA-Video-Qwen2.5-3B-Group-16-512": _scores(47.0, 45.5, 42.4, 52.5, 34.3),
    "TinyLLaVA-Video-Qwen2.5-3B-Group-1fps-512": _scores(47.7, 47.0, 42.0, 52.6, 36.0),
    "TinyLLaVA-Video-Qwen2.5-3B-Naive-16-512": _scores(44.7, 42.5, 37.6, 48.1, 34.1),
    "TinyLLaVA-Video-Phi2-Naive-16-512": _scores(42.7, 42.0, 42.2, 46.5, 31.6),
}


def released_name(model: str) -> Optional[str]:
    """The released model a name or path stands for (its last part, letter case ignored); None for any other."""
    key = Path(str(model).rstrip("/")).name.lower()
    return next((name for name in PUBLISHED if name.lower() == key), None)


def headline(summary: Mapping) -> tuple[str, float]:
    """(name, value) of a summary's headline score."""
    name, value = list(summary["scores"].items())[-1]
    return name, float(value)


def row(benchmark: str, summary: Mapping, seconds: float, published: Optional[Mapping[str, float]]) -> dict:
    """One benchmark's line of the report."""
    name, ours = headline(summary)
    theirs = None if published is None else published.get(benchmark)
    return dict(benchmark=benchmark, title=TITLES[benchmark], metric=name, ours=round(ours, 2), published=theirs,
                difference=None if theirs is None else round(ours - theirs, 2), questions=summary["questions"],
                answered=summary["answered"], fallbacks=summary["fallbacks"],
                unreadable_videos=summary["unreadable"]["videos"], missing_videos=summary["missing"]["videos"],
                seconds=round(seconds, 1))


def report(model: str, published_as: Optional[str], rows: Sequence[dict], settings: Mapping) -> dict:
    """The whole report (what `report.json` holds)."""
    return dict(model=model, published_as=published_as, settings=dict(settings), rows=list(rows))


def markdown(rep: Mapping) -> str:
    """The report as a Markdown table (what `report.md` holds)."""
    def num(value: Optional[float], signed: bool = False) -> str:
        return "–" if value is None else (f"{value:+.1f}" if signed else f"{value:.1f}")

    source = rep["published_as"] or "no published numbers for this model"
    lines = [f"# Parity report: {rep['model']}", "",
             f"Published scores: {source}. Settings: " + ", ".join(f"{k}={v}" for k, v in rep["settings"].items()),
             "", "| benchmark | metric | ours | published | difference | questions | answered | fallbacks | "
                 "unreadable videos | missing videos | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['title']} | {r['metric']} | {num(r['ours'])} | {num(r['published'])} | "
                     f"{num(r['difference'], True)} | {r['questions']} | {r['answered']} | {r['fallbacks']} | "
                     f"{r['unreadable_videos']} | {r['missing_videos']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write(out: Path, rep: Mapping) -> tuple[Path, Path]:
    """`report.json` and `report.md` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(rep), encoding="utf-8")
    return out / "report.json", out / "report.md"
