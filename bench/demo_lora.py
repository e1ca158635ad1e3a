"""LoRA teaches a pretrained demo model a question type it never saw: the CPU demo (configs/demo.py) trained from
scratch on colour and frame-order questions only, then a LoRA run (adapters on every LLM projection, everything else
frozen, <= 2% of the parameters trained) on the 'color_change' questions (what colour a square turns into), scored on
held-out videos with shuffled options, before and after. One run of this takes minutes (it is not a test).

    python bench/demo_lora.py --workdir /tmp/demo_lora [--base-steps 400] [--lora-steps 200] [--rank 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import grain

ROOT = Path(__file__).resolve().parents[1]
NEW_TYPE = "color_change"
# What the base model is pretrained on: two types it learns within --base-steps without the demo's direction
# curriculum (configs/demo.py), which the base run turns off.
BASE_TYPES = ("color", "order")


def finetune_with_lora(config, base_dir: Path, tokenizer_dir: Path, workdir: Path, steps: int, rank: int) -> dict:
    """The LoRA stage: `config` (the demo's) switched to the pretrained base, new-type questions only."""
    from transformers import AutoTokenizer

    from tlv_jax.data.pipeline import TrainLoaderConfig, load_annotations
    from tlv_jax.loading import load_model
    from tlv_jax.train import demo, loop, setup

    d = config.demo
    d.question_types = (NEW_TYPE,)
    train_file, test_file = demo.generate(d, workdir / "data")
    train, test = load_annotations(str(train_file)), load_annotations(str(test_file))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config.model.update(dict(init="pretrained", pretrained_path=str(base_dir)))
    config.data.tokenizer_dir = str(tokenizer_dir)
    config.freeze.update(dict(llm="frozen", vision="frozen", connector="frozen"))
    config.lora.update(dict(rank=rank, alpha=2.0 * rank, base_dtype="float32"))
    config.optim.update(dict(lr=3e-3, warmup_ratio=0.05))
    config.train.num_steps = steps
    loader = TrainLoaderConfig(annotation_files=(str(train_file),), video_dirs=(str(workdir / "data"),),
                               tokenizer_dir=str(tokenizer_dir), template=config.data.template,
                               num_frames=config.data.num_frames, image_size=d.size,
                               length_buckets=tuple(config.data.length_buckets), batch_size=config.train.global_batch)
    queries = setup.model_source(config).config.model.video_tokens(d.frames)
    samples = demo.preprocess_all(train, loader, queries, workdir / "data")
    width = -(-max(len(s["input_ids"]) for s in samples) // 8) * 8

    def batches():
        ds = (grain.MapDataset.source(samples).shuffle(seed=config.seed).repeat(None)
              .batch(config.train.global_batch, drop_remainder=True,
                     batch_fn=demo.Collate(tokenizer.pad_token_id, tokenizer.eos_token_id, width)))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

    before = demo.evaluate(load_model(base_dir), test, tokenizer, config.data.template, workdir / "data", d.frames,
                           d.size)
    result = loop.train(config, workdir, data=setup.DataSource(batches, len(train)))
    after = demo.evaluate(load_model(result.model_dir), test, tokenizer, config.data.template, workdir / "data",
                          d.frames, d.size)
    base_params, trained = _trained_share(config)
    return {"new_type": NEW_TYPE, "held_out": after["num_heldout"], "chance": after["chance"],
            "accuracy_before": before["accuracy"][NEW_TYPE], "accuracy_after": after["accuracy"][NEW_TYPE],
            "trained_params": trained, "model_params": base_params, "trained_share": trained / base_params,
            "lora_steps": result.step, "rank": rank}


def _trained_share(config) -> tuple[int, int]:
    import jax

    from tlv_jax.train import lora_state, setup

    cfg = setup.model_source(config).config.model
    lora = lora_state.spec(config)
    _, params, frozen, _ = setup.split(setup.abstract_model(cfg, lora), lora_state.check_freeze(config.freeze, lora),
                                       lora)
    trained = sum(x.size for x in jax.tree.leaves(params))
    return trained + sum(x.size for x in jax.tree.leaves(frozen)), trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--lora-steps", type=int, default=200)
    ap.add_argument("--rank", type=int, default=2)
    args = ap.parse_args()
    from tlv_jax.train import demo
    from tlv_jax.train.config_file import load_config

    workdir = Path(args.workdir)
    config = load_config(ROOT / "configs" / "demo.py")
    config.demo.question_types = BASE_TYPES
    config.demo.curriculum.steps = 0
    config.train.num_steps = args.base_steps
    config.export.torch = False
    base = demo.run(config, workdir / "base")
    print(f"base model (trained on {', '.join(base['question_types'])}): {base['accuracy']}")
    config = load_config(ROOT / "configs" / "demo.py")
    config.export.torch = False
    out = finetune_with_lora(config, workdir / "base" / "model", workdir / "base" / "tokenizer", workdir / "lora",
                             args.lora_steps, args.rank)
    (workdir / "lora_results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"LoRA r={out['rank']}, {out['trained_params']:,} of {out['model_params']:,} parameters trained "
          f"({out['trained_share']:.2%}), {out['lora_steps']} steps: held-out {NEW_TYPE} accuracy "
          f"{out['accuracy_before']:.1%} -> {out['accuracy_after']:.1%} ({out['held_out']} questions, chance "
          f"{out['chance']:.0%})")


if __name__ == "__main__":
    main()
