"""Convert TinyLLaVA-Video weights between PyTorch (Hugging Face) checkpoints and our JAX checkpoint directory.

  python convert_weights.py torch2jax SRC DST   PyTorch -> ours. SRC: a TinyLLaVA-Video checkpoint in the published
                                                 layout (config.json + model*.safetensors [+ index] or pytorch_model.bin)
                                                 or the pretrain-stage layout (language_model/, vision_tower/,
                                                 connector/ subfolders); or a plain HF decoder (Qwen2.5, Qwen3, Phi-2)
                                                 or SigLIP checkpoint (a pretraining starting point; --component
                                                 llm|vision).
  python convert_weights.py jax2torch SRC DST   ours -> PyTorch, the published layout (sharded safetensors + index,
                                                 config.json, generation_config.json, tokenizer files) or, with
                                                 --layout pretrain, the pretrain-stage subfolders.
  python convert_weights.py apply-peft BASE ADAPTER DST
                                                 a PEFT LoRA adapter folder (adapter_config.json +
                                                 adapter_model.safetensors) on top of BASE (either of the above, or
                                                 ours), written in our layout: merged into the weights, or with
                                                 --keep-adapters kept beside them in DST/adapter.

Both stream tensor by tensor (memory: about the largest tensor plus a few hundred MB, never the whole model), check
every key and shape before writing anything, and write into a temporary directory renamed to DST at the end: a
failed or interrupted run leaves no DST.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from tlv_jax import cli_errors

DTYPES = ("bfloat16", "float32", "float16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_weights.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{torch2jax,jax2torch,apply-peft}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("src", metavar="SRC", help="source checkpoint directory")
        p.add_argument("dst", metavar="DST", help="output directory (must not exist unless --force)")
        p.add_argument("--dtype", choices=DTYPES, default=None,
                       help="cast every tensor to this dtype (default: keep each tensor's stored dtype)")
        p.add_argument("--force", action="store_true", help="replace DST if it exists (only once the new one is complete)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)

    t2j = sub.add_parser("torch2jax", help="PyTorch/HF checkpoint -> our JAX checkpoint directory",
                         description="Convert a PyTorch TinyLLaVA-Video checkpoint (published or pretrain-stage "
                                     "layout) or a plain HF Qwen2/Qwen3/Phi-2/SigLIP checkpoint into our directory: "
                                     "config.json, tlv_jax.json, tokenizer files and params/ (Orbax).")
    common(t2j)
    t2j.add_argument("--component", choices=("llm", "vision"), default=None,
                     help="SRC is a plain HF backbone: the LLM (Qwen2/Qwen2.5, Qwen3, Phi-2) or the vision tower (SigLIP); "
                          "detected from config.json when omitted")
    t2j.add_argument("--num-frames", type=int, default=None,
                     help="default frames per video recorded in tlv_jax.json (-1 = 1 fps); inferred when omitted "
                          "(16, or 1 fps for a '1fps' checkpoint)")

    j2t = sub.add_parser("jax2torch", help="our JAX checkpoint directory -> PyTorch/HF checkpoint",
                         description="Convert our checkpoint directory into the published TinyLLaVA-Video layout "
                                     "(same keys, shapes and dtypes as the original; safetensors sharded by size with "
                                     "model.safetensors.index.json) or the pretrain-stage layout.")
    common(j2t)
    j2t.add_argument("--max-shard-size", default="5GB",
                     help="largest safetensors shard, e.g. 5GB (default), 500MB, 2GiB or a byte count")
    j2t.add_argument("--layout", choices=("published", "pretrain"), default="published",
                     help="published: flat HF directory (default); pretrain: language_model/, vision_tower/, "
                          "connector/ subfolders (pytorch_model.bin when torch is installed)")
    peft = sub.add_parser("apply-peft", help="a PEFT LoRA adapter on top of a base -> our checkpoint directory",
                          description="Apply a PEFT LoRA adapter folder (keys base_model.model.<module>.lora_A/B) to "
                                      "BASE (a TinyLLaVA-Video checkpoint in any layout, or a plain HF decoder) and "
                                      "write our directory: the adapters merged into the weights (float32), or kept "
                                      "as an adapter/ folder next to the unchanged base (--keep-adapters).")
    peft.add_argument("src", metavar="BASE", help="the base model directory")
    peft.add_argument("adapter", metavar="ADAPTER", help="the PEFT adapter folder")
    peft.add_argument("dst", metavar="DST", help="output directory (must not exist unless --force)")
    peft.add_argument("--keep-adapters", action="store_true",
                      help="keep the adapters separate (checked against the base) instead of merging them")
    peft.add_argument("--force", action="store_true", help="replace DST if it exists (only once the new one is complete)")
    peft.add_argument("--no-progress", action="store_true", help="no progress bar")
    peft.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Status 0, or a failure (a missing or mismatched checkpoint, an existing DST) as one line, status 1; Ctrl-C is
    130 (`tlv_jax.cli_errors`). Either way DST was not written."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host-only: never grab an accelerator
    return cli_errors.run(lambda: convert(args), verbose=args.verbose)


def convert(args: argparse.Namespace) -> None:
    from tlv_jax.convert import jax2torch, torch2jax

    try:
        if args.command == "apply-peft":
            from tlv_jax.lora import peft_apply

            out = peft_apply.apply(args.src, args.adapter, args.dst, keep_adapters=args.keep_adapters,
                                   force=args.force, progress=not args.no_progress)
        elif args.command == "torch2jax":
            out = torch2jax.convert(args.src, args.dst, component=args.component, dtype=args.dtype,
                                    num_frames=args.num_frames, force=args.force, progress=not args.no_progress)
        else:
            out = jax2torch.convert(args.src, args.dst, dtype=args.dtype,
                                    max_shard_bytes=jax2torch.parse_size(args.max_shard_size), layout=args.layout,
                                    force=args.force, progress=not args.no_progress)
    except KeyboardInterrupt as e:
        raise KeyboardInterrupt(f"{args.dst} was not written") from e
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
