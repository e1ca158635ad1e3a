"""An lmms-eval model backed by tlv_jax, registered through lmms-eval's `lmms_eval.models` entry points (no fork):

    pip install -e .[lmms]
    python -m lmms_eval --model tlv_jax --model_args pretrained=DIR[,dtype=bfloat16,num_frames=16,max_frames=16] \\
        --tasks TASKS

lmms-eval imports this module only when it builds the registry, so the core package never imports lmms_eval (nor
the torch it pulls in). Every request is one video (a path) or a list of images (the frames of a video, one image
being a one-frame video), answered by `tlv_jax.load(DIR)`: `generate_until` is `LoadedModel.generate` with the
task's generation settings, `loglikelihood` reads the continuation's log-probability off the original forward with
labels, and `generate_until_multi_round` asks the task for each next round until it says stop.

Several processes (one per host or accelerator, started by lmms-eval's launcher: `RANK`, `WORLD_SIZE`,
`MASTER_ADDR`, `MASTER_PORT`) join one `jax.distributed` job whose coordinator listens on MASTER_PORT + 1; rank and
world size are then JAX's process index and count (Cloud TPU and SLURM are detected as in training).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from tlv_jax.data.templates import IMAGE_TOKEN, eval_prompt_ids
from tlv_jax.generate import VideoSampling

MODEL_ID = "tlv_jax"


def manifest() -> ModelManifest:
    """The entry point's payload: `tlv_jax` names `TlvJax`."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.TlvJax")


def join_processes() -> tuple[int, int]:
    """Joins the other lmms-eval processes in one JAX job (see the module docstring); (rank, world size) from JAX."""
    import jax

    from tlv_jax.sharding import distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = distributed.DistributedConfig()
    if world > 1 and os.environ.get("MASTER_ADDR") and not jax.distributed.is_initialized():
        config = distributed.DistributedConfig(
            coordinator_address=f"{os.environ['MASTER_ADDR']}:{int(os.environ.get('MASTER_PORT', '29500')) + 1}",
            num_processes=world, process_id=int(os.environ.get("RANK", "0")))
    if not jax.distributed.is_initialized():
        distributed.initialize(config)
    return jax.process_index(), jax.process_count()


class TlvJax(lmms):
    """`pretrained`: our checkpoint or a PyTorch TinyLLaVA-Video directory; `dtype`: compute and storage dtype;
    `num_frames` / `max_frames`: frame sampling of video files (default: what the checkpoint records).
    `batch_size` (lmms-eval always passes one) is kept for lmms-eval's bookkeeping; requests are answered one at a
    time, as lmms-eval's own video models do: `python -m tlv_jax.evaluate` is the fast, batched path."""

    is_simple = True

    def __init__(self, pretrained: str, dtype: str = "float32", num_frames: Optional[int] = None,
                 max_frames: Optional[int] = None, batch_size: int = 1, **unused: Any):
        super().__init__()
        import tlv_jax

        self._rank, self._world_size = join_processes()
        self.loaded = tlv_jax.load(pretrained, dtype, dtype)
        recorded = self.loaded.sampling
        self.sampling = VideoSampling(int(num_frames) if num_frames is not None else recorded.num_frames,
                                      int(max_frames) if max_frames is not None else recorded.max_frames)
        self.batch_size = int(batch_size)

    # -- requests --

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="tlv_jax generate"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            out.append(self._generate(doc_to_visual(self._doc(task, split, doc_id)), context, gen_kwargs))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """Round 0 answers the request's context; each next round's visuals and context come from the task's
        `doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)` until it signals the end."""
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="tlv_jax multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            visuals, answers, info, round_idx = doc_to_visual(doc), [], None, 0
            while True:
                if round_idx:
                    visuals, context, last, answers, info = doc_to_text(
                        doc, previous_output=list(answers), round_idx=round_idx, previous_round_info=info)
                    answers = list(answers)
                    if last:
                        break
                answers.append(self._generate(visuals, context, dict(gen_kwargs)))
                round_idx += 1
            out.append(tuple(answers))
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | video, context) summed over the continuation's tokens, and whether greedy decoding
        would produce exactly those tokens; from one forward pass with labels on the continuation only."""
        out = []
        for request in tqdm(requests, disable=self.rank != 0, desc="tlv_jax loglikelihood"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            out.append(self._loglikelihood(doc_to_visual(doc), context, str(continuation), task, doc_id))
        return out

    # -- the work --

    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        return self.task_dict[task][split][doc_id]

    def _video(self, visuals: Any) -> Any:
        """A task's visuals -> what `generate` takes: a video path, or a list of images as frames."""
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        paths = [v for v in visuals if isinstance(v, (str, os.PathLike))]
        if not visuals:
            raise ValueError("tlv_jax answers about a video or images; this request has no visual input")
        if paths:
            if len(visuals) > 1:
                raise ValueError(f"one video per request is supported, got {len(visuals)} visuals ({paths[0]}, ...)")
            return str(paths[0])
        return [image.convert("RGB") for image in visuals]

    def _generate(self, visuals: Any, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.get("until") or ()
        temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample", False) else 0.0
        return self.loaded.generate(self._video(visuals), prompt_text(context),
                                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)),
                                    temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0),
                                    stop=[until] if isinstance(until, str) else list(until), sampling=self.sampling)

    def _loglikelihood(self, visuals: Any, context: str, continuation: str, task: str, doc_id: Any
                       ) -> tuple[float, bool]:
        generator = self.loaded.generator
        prompt = eval_prompt_ids(prompt_text(context), generator.tokenizer, generator.template).input_ids
        target = generator.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            raise ValueError(f"{task} doc {doc_id}: the continuation {continuation!r} has no tokens")
        ids = np.concatenate([prompt, target])[None]
        labels = np.concatenate([np.full(len(prompt), -100), target])[None]
        pixels = generator.frames(self._video(visuals), self.sampling)
        result = self.loaded.forward(ids, [pixels], labels=labels)
        n = len(target)
        greedy = np.asarray(result.logits[0, -n - 1:-1]).argmax(-1)  # the positions that predict the continuation
        return -float(result.loss) * n, bool((greedy == np.asarray(target)).all())


def prompt_text(context: str) -> str:
    """A task's context as our prompt: the text that follows the video, so an `<image>` placeholder the task wrote
    is dropped (the template puts the video first, as the original's templates do)."""
    return context.replace(IMAGE_TOKEN, "").strip()
