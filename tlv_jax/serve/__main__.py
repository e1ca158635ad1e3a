"""`python -m tlv_jax.serve` / `tlv-serve`: load a model and serve it over HTTP (FastAPI app run by uvicorn)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from tlv_jax import cli_errors

if TYPE_CHECKING:  # the heavy imports wait until a server is built, so --help answers at once
    from tlv_jax.serve.app import Service


def build_service(model: str | Path, *, media_root: Optional[str | Path] = None, max_batch: int = 8,
                  max_queue: int = 64, max_context: Optional[int] = None, cache_size: int = 32, workers: int = 2,
                  dtype: str = "float32", prefix_cache: int = 16) -> "Service":
    """Loads the model directory and wires the engine, the video encoder and the metrics together."""
    from tlv_jax.generate import Generator
    from tlv_jax.serve.app import Service
    from tlv_jax.serve.engine import Engine
    from tlv_jax.serve.metrics import Metrics
    from tlv_jax.serve.video_cache import VideoEncoder

    if media_root is not None and not Path(media_root).is_dir():
        raise ValueError(f"--media-root {media_root}: not a directory")
    gen = Generator.from_pretrained(model, dtype)
    metrics = Metrics(max_batch)
    engine = Engine(gen, metrics, max_batch, max_queue, max_context, prefix_cache)
    return Service(Path(model).resolve().name, gen, engine, VideoEncoder(gen, metrics, media_root, workers, cache_size),
                   metrics)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tlv_jax.serve",
                                description="Serve a TinyLLaVA-Video model as an OpenAI-compatible chat API.")
    p.add_argument("--model", required=True, help="our checkpoint dir or a PyTorch TinyLLaVA-Video dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--media-root", default=None,
                   help="folder whose files file:// video URLs may name (default: none, data: URLs only)")
    p.add_argument("--max-batch", type=int, default=8, help="decode slots (requests generated together)")
    p.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait for a slot; more get 429")
    p.add_argument("--max-context", type=int, default=None,
                   help="tokens per slot, prompt (video included) + answer (default: the model's maximum)")
    p.add_argument("--cache-size", type=int, default=32, help="video encodings kept (LRU)")
    p.add_argument("--prefix-cache", type=int, default=16,
                   help="computed prompt prefixes kept, up to the end of the video (LRU; 0: off)")
    p.add_argument("--workers", type=int, default=2, help="threads decoding and encoding videos")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    args = p.parse_args(argv)
    for flag in ("max_batch", "max_queue", "cache_size", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.prefix_cache < 0:
        p.error("--prefix-cache must be >= 0")
    return cli_errors.run(lambda: _serve(args), verbose=args.verbose)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tlv_jax.serve.app import create_app

    service = build_service(args.model, media_root=args.media_root, max_batch=args.max_batch,
                            max_queue=args.max_queue, max_context=args.max_context, cache_size=args.cache_size,
                            workers=args.workers, dtype=args.dtype,
                            prefix_cache=args.prefix_cache)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    sys.exit(main())
