"""`python -m tlv_jax.data.prepare`: decode, sample, resize and tokenise an annotation file once into a TFDS
ArrayRecord dataset that the training loader reads with `TrainLoaderConfig(prepared_dirs=(<printed dir>,))`.
With --beam the work runs as an Apache Beam pipeline (local processes by default; Dataflow, Flink or Spark through
--beam_pipeline_options); each annotation file and frame setting gets its own dataset under --out."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import tensorflow_datasets as tfds

from tlv_jax import cli_errors
from tlv_jax.data.prepared_example import FRAME_FORMATS, PrepareConfig
from tlv_jax.data.tfds_builder import prepare
from tlv_jax.data.templates import TEMPLATES


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tlv_jax.data.prepare", description=__doc__)
    p.add_argument("--annotations", required=True,
                   help="LLaVA-Video-178K style JSON list (id, video, conversations); local or gs://")
    p.add_argument("--video-dir", required=True, help="folder the entries' 'video' paths are relative to; local or gs://")
    p.add_argument("--tokenizer", required=True, help="folder with the LLM's tokenizer files; local or gs://")
    p.add_argument("--out", required=True, help="TFDS data_dir (local or gs://) the dataset is added to")
    p.add_argument("--force", action="store_true",
                   help="replace an existing dataset of the same file and settings (once the new one is complete)")
    p.add_argument("--template", default="qwen2_base", choices=sorted(TEMPLATES))
    p.add_argument("--num-frames", type=int, default=16, help="uniform frames per video, or -1 for 1 fps")
    p.add_argument("--max-frames", type=int, default=None, help="cap on the 1 fps frame count (required with -1)")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--frame-format", default="png", choices=FRAME_FORMATS, help="png is lossless (exact batches)")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--workers", type=int, default=0,
                   help="decoding processes (0: this process; with --beam and no options: 0 = one per core)")
    p.add_argument("--beam", action="store_true", help="make the examples in an Apache Beam pipeline")
    p.add_argument("--beam_pipeline_options", "--beam-pipeline-options", default="",
                   help="comma-separated key=value Beam options, e.g. 'runner=DataflowRunner,project=P,region=R,"
                        "temp_location=gs://B/tmp' (default: DirectRunner, multi_processing, --workers processes)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    p.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    return p.parse_args(argv)


def prepare_config(a: argparse.Namespace) -> PrepareConfig:
    """The arguments as a `PrepareConfig` (which refuses impossible combinations with a ValueError)."""
    return PrepareConfig(
        annotation_file=a.annotations, video_dir=a.video_dir, tokenizer_dir=a.tokenizer, template=a.template,
        num_frames=a.num_frames, max_frames=a.max_frames, image_size=a.image_size, frame_format=a.frame_format,
        jpeg_quality=a.jpeg_quality, workers=a.workers, max_bad_fraction=a.max_bad_fraction)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Status 0, or a failure (a missing annotation file, too many bad samples) as one line: `tlv_jax.cli_errors`."""
    args = parse_args(argv)
    tfds.disable_progress_bar()  # ours counts videos and skipped samples

    def run() -> None:
        options = None
        if args.beam or args.beam_pipeline_options:
            from tlv_jax.data.beam_prepare import pipeline_options

            options = pipeline_options(args.beam_pipeline_options, args.workers)
        directory, counter = prepare(prepare_config(args), args.out, args.force, options)
        print(f"prepared {counter.summary()} -> {directory}")

    return cli_errors.run(run, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
