"""Where training metrics go: a JSONL log and TensorBoard event files in the workdir, and a tqdm bar with ETA.

Only process 0 writes; the others keep a silent writer so the loop needs no branches. The JSONL file is appended
to, so a resumed run continues the same log (a resumed step appears again after its first occurrence).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

BAR_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")


def _plain(v: Any) -> Any:
    """JSON-safe scalars (NaN/inf become strings, which JSON has no literal for)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsWriter:
    def __init__(self, workdir: str | Path, *, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = workdir / "metrics.jsonl"
        self._jsonl = self.jsonl_path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        if progress:
            self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step", dynamic_ncols=True,
                             file=sys.stderr, smoothing=0.1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records the metrics of `step` (the number of updates done, 1-based) everywhere."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items() if v is not None}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{row[k]:.4g}" for k in BAR_KEYS if isinstance(row.get(k), (int, float))},
                                  refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def log(self, message: str) -> None:
        """A line on the terminal that does not break the bar."""
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(message, file=sys.stderr)

    def close(self) -> None:
        for h in (self._bar, self._tb, self._jsonl):
            if h is not None:
                h.close()
        self._bar = self._tb = self._jsonl = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics log; for a resumed run, later rows of a step replace earlier ones."""
    rows: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
