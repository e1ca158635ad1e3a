"""Runs in a bare interpreter (`python -I`, another working directory), never imported by the tests: loads exports
with transformers alone (`trust_remote_code=True`) and writes what they compute for the tests to compare.

tlv_jax, the original `tinyllava` package and torchvision are made unimportable first: the claim is "transformers and
torch alone" (and this environment's torchvision build does not match its torch). tlv_jax's editable install is
found through an import hook, not sys.path, hence the block; sys.path itself is checked to hold neither.

    python -I remote_checks.py JOBS.json

JOBS is a list of {"dir": export, "out": npz to write, "max_new_tokens", and "inputs" (an npz of fixture inputs) for
the forward and generation checks and/or "video" + "questions" for the processor check}.
"""

import json
import sys

for name in ("tlv_jax", "tinyllava", "torchvision"):
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoProcessor  # noqa: E402


def run(job: dict) -> None:
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True).eval()
    out = {}
    if "inputs" in job:
        out.update(forward_and_generate(model, job["inputs"], job["max_new_tokens"]))
    if "questions" in job:
        processor = AutoProcessor.from_pretrained(job["dir"], trust_remote_code=True)
        inputs = processor(text=job["questions"], videos=job["video"])
        new = model.generate(**inputs, do_sample=False, max_new_tokens=job["max_new_tokens"], output_logits=True,
                             return_dict_in_generate=True)
        out["answers"] = np.array([a.strip() for a in processor.batch_decode(new.sequences, skip_special_tokens=True)])
        out["first_logits"] = new.logits[0].numpy()
        out.update({k: np.stack([np.asarray(v) for v in inputs[k]]) for k in ("input_ids", "attention_mask", "video")})
        out["errors"] = np.array(refusals(model, processor, job["video"]))
    np.savez(job["out"], **out)


def refusals(model, processor, video: str) -> list[str]:
    """The one-line errors for two videos given to three questions and for two placeholders in one sample."""
    messages = []
    try:
        processor(text=["a", "b", "c"], videos=[video, video])
    except ValueError as e:
        messages.append(str(e))
    ids = torch.tensor([[1, -200, 2, -200]])
    try:
        model(input_ids=ids, video=torch.zeros(1, 1, 3, 56, 56))
    except ValueError as e:
        messages.append(str(e))
    return messages


def forward_and_generate(model, inputs: str, max_new_tokens: int) -> dict[str, np.ndarray]:
    """The original's forward on one sample and on a padded batch of two videos with different frame counts (a list),
    and greedy generation from the eval prompt."""
    x = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
    with torch.no_grad():
        single = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=x["labels"],
                       video=x["pixel_values"])
        batch = model(input_ids=x["batch_input_ids"], attention_mask=x["batch_attention_mask"],
                      labels=x["batch_labels"], video=[x["pixel_values"][0], x["batch_pixel_values_1"]])
    tokens = model.generate(input_ids=x["gen_input_ids"], video=x["pixel_values"], do_sample=False,
                            max_new_tokens=max_new_tokens)
    return {"logits": single.logits.numpy(), "loss": single.loss.numpy(), "batch_logits": batch.logits.numpy(),
            "batch_loss": batch.loss.numpy(), "gen_output_ids": tokens.numpy()}


if __name__ == "__main__":
    from pathlib import Path

    if any((Path(entry) / name).exists() for entry in sys.path for name in ("tlv_jax", "tinyllava")):
        raise SystemExit(f"tlv_jax or tinyllava lies on sys.path {sys.path}: the check would prove nothing")
    try:
        import tlv_jax  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("tlv_jax is importable: the check would prove nothing")
    for job in json.loads(open(sys.argv[1]).read()):
        run(job)
