"""Config files (`--config configs/NAME.py`) are loaded by path, not imported: `configs/` is not a package, so a
recipe reaches the shared defaults next to it the same way (`load_module(Path(__file__).with_name("base.py"))`),
from any working directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any


def load_module(path: str | Path) -> ModuleType:
    """Executes the Python file at `path` as a fresh module."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_tlv_config_{path.stem}", str(path))
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str | Path) -> Any:
    """`get_config()` of a config file: what `--config` reads, for use from Python."""
    return load_module(path).get_config()
