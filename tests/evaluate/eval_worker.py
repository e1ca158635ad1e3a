"""One process of a multi-process evaluation test: the real `python -m tlv_jax.evaluate` command line, which this
process SIGKILLs itself in when about to answer its batch number `--die-after` (counting from 0; -1: never), so a
test can stop one process mid-run at a known point.

    python eval_worker.py --die-after N -- <evaluate arguments>
"""

from __future__ import annotations

import os
import signal
import sys

from tlv_jax.evaluate import __main__ as cli


def dying(build, die_after: int):
    def build_answerer(*args, **kwargs):
        answerer = build(*args, **kwargs)
        answer_videos, batches = answerer.answer_videos, [0]

        def answer_then_die(*a, **k):
            if batches[0] == die_after:
                os.kill(os.getpid(), signal.SIGKILL)
            batches[0] += 1
            return answer_videos(*a, **k)

        answerer.answer_videos = answer_then_die
        return answerer

    return build_answerer


if __name__ == "__main__":
    split = sys.argv.index("--")
    die_after = int(sys.argv[sys.argv.index("--die-after") + 1]) if "--die-after" in sys.argv[:split] else -1
    cli.build_answerer = dying(cli.build_answerer, die_after)
    sys.exit(cli.cli(sys.argv[split + 1:]))
