"""An `ExampleMaker` in a child process that its parent supervises: a video that kills the decoding process (a
segfault or abort inside FFmpeg, the OOM killer) or never finishes decoding costs only its own entry, reported as a
`decode_error`, and a fresh child takes the next one.

A Beam worker that died instead would make the runner retry the bundle on another worker, meet the same video and,
after a few tries, fail the whole job. The child is spawned (never forked: the parent runs gRPC threads).
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from tlv_jax.data.bad_samples import DECODE_ERROR
from tlv_jax.data.prepared_example import ExampleMaker, PrepareConfig
from tlv_jax.data.records import sample_id

MakerFactory = Callable[[PrepareConfig], ExampleMaker]


def _serve(conn: Connection, factory: MakerFactory, config: PrepareConfig) -> None:
    """The child: ('ready', None) once its maker is built, then (index, entry) in, ('ok', example) or ('error',
    traceback) out, until the pipe closes."""
    try:
        maker = factory(config)
    except Exception:  # noqa: BLE001 (e.g. no tokenizer there: the parent raises it)
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            index, record = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", maker(index, record)))
        except Exception:  # noqa: BLE001 (a bug, not a video: the parent raises it)
            conn.send(("error", traceback.format_exc()))


class SupervisedMaker:
    """Callable like `ExampleMaker`; `close()` ends the child."""

    def __init__(self, config: PrepareConfig, factory: MakerFactory = ExampleMaker, timeout_s: float = 900.0):
        self._config, self._factory, self._timeout_s = config, factory, timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child_conn = self._ctx.Pipe()
        self._child = self._ctx.Process(target=_serve, args=(child_conn, self._factory, self._config), daemon=True)
        self._child.start()
        child_conn.close()
        try:  # the start-up (imports, tokenizer) is not part of any video's time
            status, value = self._conn.recv()
        except EOFError:
            status, value = "error", f"exit code {self.close()}"
        if status == "error":
            raise RuntimeError(f"the example-making worker process did not start:\n{value}")

    def __call__(self, index: int, record: Any) -> dict:
        self._conn.send((index, record))
        video = record.get("video") if isinstance(record, dict) else None
        try:
            if not self._conn.poll(self._timeout_s):
                self._restart()
                return self._bad(index, record, f"decoding {video!r} took over {self._timeout_s:g} s (stopped)")
            status, value = self._conn.recv()
        except (EOFError, ConnectionError):
            code = self._restart()
            return self._bad(index, record, f"the worker process died (exit code {code}) on this entry's video "
                                            f"{video!r}")
        if status == "error":
            raise RuntimeError(f"making the example of entry {index} failed in the worker process:\n{value}")
        return value

    def _bad(self, index: int, record: Any, detail: str) -> dict:
        return {"bad": (DECODE_ERROR, sample_id(record, index), detail)}

    def _restart(self) -> int | None:
        """Ends the child (busy or dead) and starts a new one; the old one's exit code (-11: a segfault)."""
        self._child.kill()
        code = self.close()
        self._start()
        return code

    def close(self) -> int | None:
        """Ends the child (an idle one on its own, once its pipe closes) and returns its exit code."""
        self._conn.close()
        self._child.join(timeout=5)
        if self._child.is_alive():
            self._child.kill()
            self._child.join()
        return self._child.exitcode
