"""`python -m tlv_jax.evaluate --benchmark NAME --model DIR --data DIR`: run or resume one benchmark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlv_jax import cli_errors
from tlv_jax.evaluate import benchmark, build_answerer, evaluate, format_table

NAMES = ("videomme", "mvbench", "longvideobench", "mlvu", "mmvu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tlv_jax.evaluate", description=__doc__)
    parser.add_argument("--benchmark", required=True, choices=NAMES)
    parser.add_argument("--model", required=True, help="our checkpoint or a PyTorch TinyLLaVA-Video directory")
    parser.add_argument("--data", required=True, help="the benchmark's folder in its official layout")
    parser.add_argument("--out", help="predictions.jsonl + summary.json go here (default: eval/<benchmark>-<model>)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per video; -1 = 1 fps capped at --max-frames")
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback guess for unparseable answers")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype (the original evaluated in float32)")
    parser.add_argument("--max-batch", type=int, default=8, help="questions on one video answered together, at most")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark the arguments name; returns its summary."""
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    model = Path(args.model).resolve()
    out = Path(args.out) if args.out else Path("eval") / f"{args.benchmark}-{model.name}"
    answerer = build_answerer(model, args.dtype, args.max_batch)
    summary = evaluate(benchmark(args.benchmark), args.data, answerer, out, num_frames=args.num_frames,
                       max_frames=args.max_frames, max_new_tokens=args.max_new_tokens, limit=args.limit,
                       seed=args.seed, model=str(model), progress=not args.no_progress)
    print(format_table(summary))
    print(f"summary: {out / 'summary.json'}")
    return summary


def cli(argv: list[str] | None = None) -> int:
    """`main` for the shell: a model or benchmark folder that cannot be read is one line on stderr, exit status 1
    (`tlv_jax.cli_errors`; a video that cannot be read is counted in the summary instead)."""
    args = parse_args(argv)
    return cli_errors.run(lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(cli())
