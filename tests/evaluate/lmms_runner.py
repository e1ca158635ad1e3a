"""`python -m lmms_eval ARGS` for the plugin tests, run as `python lmms_runner.py ARGS`, with two shims for this
environment's package versions (the plugin needs neither; a machine with matching versions gets none):

- lmms-eval 0.7.3 patches `filelock._api.FileLockMeta`, a module filelock 4 split into `filelock._core`: the old
  name is pointed at the new classes.
- where torchvision is installed but cannot load (the PyPI wheel of torchvision 0.28 is a CUDA build: next to a CPU-only
torch its operators fail to register and `import torchvision` raises), it is hidden, so that transformers, which
  lmms-eval imports, treats it as absent, as on a machine without it.
"""

from __future__ import annotations

import runpy
import sys


def hide_broken_torchvision() -> None:
    """A None entry in sys.modules makes `find_spec` answer None and `import` raise ImportError: absent."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken binary raises RuntimeError or OSError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None


def alias_filelock_api() -> None:
    try:
        import filelock._api  # noqa: F401
    except ImportError:
        import types

        from filelock._core import _lock, _singleton

        shim = types.ModuleType("filelock._api")
        shim.FileLockMeta, shim.BaseFileLock = _singleton.FileLockMeta, _lock.BaseFileLock
        sys.modules["filelock._api"] = shim


if __name__ == "__main__":
    hide_broken_torchvision()
    alias_filelock_api()
    sys.argv = ["lmms_eval", *sys.argv[1:]]
    runpy.run_module("lmms_eval", run_name="__main__", alter_sys=True)
