"""`python -m tlv_jax.evaluate --benchmark NAME|all --model DIR --data DIR|--data-root DIR`: run or resume benchmarks.

`--benchmark all` runs the five benchmarks from `--data-root/{Video-MME,MVBench,LongVideoBench,MLVU,MMVU}` and writes
the parity report (`report.md`, `report.json`: our score beside the published one). Every local device answers
(data parallel); several processes (hosts) split the videos between them, started like training: auto-detected on
Cloud TPU and SLURM, else `--coordinator_address host:port --num_processes N --process_id i` on each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from tlv_jax import cli_errors
from tlv_jax.evaluate import benchmark, build_answerer, evaluate, format_table, parity

NAMES = parity.BENCHMARKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tlv_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=NAMES + ("all",))
    parser.add_argument("--model", required=True, help="our checkpoint or a PyTorch TinyLLaVA-Video directory")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="the benchmark's folder in its official layout (one benchmark)")
    data.add_argument("--data-root", help="a folder holding " + ", ".join(parity.TITLES.values()))
    parser.add_argument("--out", help="predictions shards + summary.json go here (default: eval/<benchmark>-<model>; "
                                      "with all: eval/<model>/<benchmark> and the report in eval/<model>)")
    parser.add_argument("--published-as", choices=sorted(parity.PUBLISHED),
                        help="compare with this released model's published scores (default: by the model's name)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per video; -1 = 1 fps capped at --max-frames")
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback guess for unparseable answers")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype (the original evaluated in float32)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="questions answered together, across videos (rounded up to a power of two and a "
                             "multiple of the local device count)")
    parser.add_argument("--workers", type=int, default=4, help="threads reading and preparing the next videos")
    parser.add_argument("--coordinator_address", default="", help="host:port of process 0 (multi-process runs JAX "
                                                                  "cannot auto-detect; Cloud TPU and SLURM need nothing)")
    parser.add_argument("--num_processes", type=int, default=1, help="processes taking part")
    parser.add_argument("--process_id", type=int, default=0, help="this process's index")
    parser.add_argument("--distributed_timeout_s", type=int, default=300,
                        help="seconds to wait for every process to join before failing")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs what the arguments name; returns the summary (one benchmark) or the parity report (all)."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    process, barrier = start_processes(args)
    model = Path(args.model).resolve()
    names = NAMES if args.benchmark == "all" else (args.benchmark,)
    data = {name: Path(args.data) if args.data else Path(args.data_root) / parity.TITLES[name] for name in names}
    absent = [str(path) for path in data.values() if not path.is_dir()]
    if absent:
        raise FileNotFoundError(f"no benchmark folder {', '.join(absent)}")
    root = Path(args.out) if args.out else Path("eval") / (model.name if args.benchmark == "all"
                                                            else f"{args.benchmark}-{model.name}")
    answerer = build_answerer(model, args.dtype, args.max_batch)
    settings = dict(num_frames=args.num_frames, max_frames=args.max_frames, max_new_tokens=args.max_new_tokens,
                    limit=args.limit, seed=args.seed)
    show = process[0] == 0
    rows, summary = [], {}
    published_as = args.published_as or parity.released_name(str(model))
    for name in names:
        out = root / name if args.benchmark == "all" else root
        start = time.perf_counter()
        summary = evaluate(benchmark(name), data[name], answerer, out, model=str(model), workers=args.workers,
                           progress=show and not args.no_progress, process=process, barrier=barrier(name),
                           **settings)
        rows.append(parity.row(name, summary, time.perf_counter() - start, parity.PUBLISHED.get(published_as)))
        if show:
            print(format_table(summary))
            print(f"summary: {out / 'summary.json'}")
    if args.benchmark != "all":
        return summary
    report = parity.report(str(model), published_as, rows, settings)
    if show:
        paths = parity.write(root, report)
        print(parity.markdown(report))
        print("report: " + ", ".join(map(str, paths)))
    return report


def start_processes(args: argparse.Namespace) -> tuple[tuple[int, int], Callable[[str], Callable[[], None]]]:
    """Joins the other processes when there are any (`tlv_jax.sharding.distributed`, as training); returns
    (index, count) and a maker of named barriers, checking first that every process runs the same command."""
    import jax

    from tlv_jax.sharding import distributed

    distributed.initialize(distributed.DistributedConfig(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id,
        initialization_timeout_s=args.distributed_timeout_s))
    count = jax.process_count()
    if count == 1:
        return (0, 1), lambda name: lambda: None
    from jax.experimental import multihost_utils

    shared = {k: v for k, v in vars(args).items() if k not in ("process_id", "no_progress", "verbose")}
    distributed.assert_same_across_processes(
        command=distributed.fingerprint(json.dumps(shared, sort_keys=True, default=str)))
    return (jax.process_index(), count), lambda name: lambda: multihost_utils.sync_global_devices(
        f"tlv_jax.evaluate:{name}")


def cli(argv: list[str] | None = None) -> int:
    """`main` for the shell: a model or benchmark folder that cannot be read is one line on stderr, exit status 1
    (`tlv_jax.cli_errors`; a video that cannot be read is counted in the summary instead)."""
    args = parse_args(argv)
    return cli_errors.run(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(cli())
