"""Self-contained PyTorch code that every PyTorch export carries, so that transformers alone loads it:

    AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True)
    AutoProcessor.from_pretrained(export_dir, trust_remote_code=True)

The modules beside this one (configuration, connector, modeling, processing) are what a PyTorch user reads: they
import torch, numpy and transformers only, never tlv_jax. This module, on our side, copies them into an export and
writes what points transformers at them: the `auto_map` of config.json and the processor's settings (frame
sampling, prompt) taken from the same sources `tlv_jax.generate` uses.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from tlv_jax.data.templates import IMAGE_TOKEN, build_prompt, get_template

FILES = ("configuration_tinyllava.py", "connector_tinyllava.py", "modeling_tinyllava.py", "processing_tinyllava.py")
AUTO_MAP = {"AutoConfig": "configuration_tinyllava.TinyLlavaConfig",
            "AutoModelForCausalLM": "modeling_tinyllava.TinyLlavaForConditionalGeneration"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_tinyllava.TinyLlavaProcessor"}
#: Where the processor puts the question in `prompt_format` (`processing_tinyllava.QUESTION`).
QUESTION = "{question}"


def prompt_format(template: str) -> str:
    """The generation prompt of `template` with QUESTION where the question goes, as `eval_prompt_ids` builds it."""
    return build_prompt([IMAGE_TOKEN + "\n" + QUESTION], [None], get_template(template))


def write_remote_code(dst: Path, *, template: str, num_frames: int, max_frames: Optional[int],
                      image_size: int) -> dict[str, str]:
    """Writes the modeling files and the processor's two JSON files into `dst`; returns config.json's auto_map."""
    package = resources.files(__name__)
    for name in FILES:
        (dst / name).write_bytes(package.joinpath(name).read_bytes())
    _write_json(dst / "processor_config.json", {
        "auto_map": PROCESSOR_AUTO_MAP, "num_frames": num_frames, "max_frames": max_frames,
        "prompt_format": prompt_format(template)})
    # SigLIP's preprocessing as tlv_jax.data.preprocess does it: PIL bicubic squash to the tower's size, (x/255-.5)/.5.
    _write_json(dst / "preprocessor_config.json", {
        "image_processor_type": "SiglipImageProcessorPil", "do_resize": True,
        "size": {"height": image_size, "width": image_size}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    return dict(AUTO_MAP)


def _write_json(path: Path, d: dict[str, Any]) -> None:
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
