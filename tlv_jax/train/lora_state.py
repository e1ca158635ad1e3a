"""The pieces of a LoRA run (`lora.rank` > 0) that differ from a full or frozen one.

- What trains: the adapters, plus any component `freeze` marks 'full' (e.g. the connector); a component that is
  adapted must not also be 'full'. The optimizer therefore holds moments for exactly these.
- What a checkpoint holds: the train state without its frozen base, plus the base's fingerprint
  (`tlv_jax.lora.fingerprint`); resuming rebuilds the base from the run's config, checks it against the fingerprint
  before any step, and restores the adapters onto it.
- Dropout on the adapters' inputs draws its mask from the batch (seed folded with the batch's token ids), so a
  resumed run draws the masks an uninterrupted one would have.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from tlv_jax.lora import adapters
from tlv_jax.lora import fingerprint as fingerprint_lib
from tlv_jax.lora.spec import LoraSpec, from_config
from tlv_jax.models.tinyllava import TinyLlavaVideo
from tlv_jax.models.tinyllava_config import ModelConfig
from tlv_jax.train import optim


def spec(config: ml_collections.ConfigDict) -> Optional[LoraSpec]:
    """The run's LoRA (None: not a LoRA run); a bad `lora.*` value is a one-line ValueError naming the key."""
    return from_config(config)


def check_freeze(freeze: Mapping[str, str], lora: Optional[LoraSpec]) -> dict[str, str]:
    """`optim.check_freeze`, and something must train: a 'full' component or adapters (then an adapted component
    cannot also be trained in full)."""
    out = optim.check_freeze(freeze)
    if lora is None and all(t == "frozen" for t in out.values()):
        raise ValueError("freeze: every component is frozen, nothing would train")
    if lora is not None:
        for component, tune in out.items():
            if tune == "full" and any(t.startswith(component + "/") or t.startswith(f"({component}")
                                      for t in lora.targets):
                raise ValueError(f"freeze.{component}='full' but lora.targets adapt it: set "
                                 f"--config.freeze.{component}=frozen (its adapters train) or drop its targets")
    return out


def trainable(freeze: Mapping[str, str], lora: Optional[LoraSpec]) -> Callable[[tuple[Any, ...], Any], bool]:
    """The NNX filter of what trains: adapters, and every parameter of a 'full' component."""
    full = optim.trainable_filter(freeze)
    if lora is None:
        return full
    return lambda path, value: adapters.is_adapter(path, value) or full(path, value)


def abstract_model(cfg: ModelConfig, lora: Optional[LoraSpec]) -> TinyLlavaVideo:
    """The model's structure with its adapters (and quantised base), nothing allocated."""
    if lora is None:
        return nnx.eval_shape(lambda: TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)))
    return nnx.eval_shape(lambda: adapters.add_adapters(TinyLlavaVideo(cfg, rngs=nnx.Rngs(0)), lora))


def adapt(base: TinyLlavaVideo, lora: LoraSpec, source: str, seed: int) -> tuple[TinyLlavaVideo, dict[str, Any]]:
    """(the base with fresh adapters, the base's fingerprint), the fingerprint taken before anything changes it.
    `base` is consumed: its buffers are donated to the adapted model.

    qwix creates the adapters (and quantises a QLoRA base) by running each component once. Run eagerly, that is
    hundreds of op-by-op executables that stay cached for the whole run; compiled as one program, with the base's
    buffers donated so that the unchanged weights are not copied, it costs less memory and time (the mid-size
    model of bench/bench_lora.py: +41 MiB RSS instead of +147 MiB, int8 +61 instead of +198, in about half the CPU
    time)."""
    fp = fingerprint_lib.fingerprint(base, lora.to_dict(), source)
    add = nnx.jit(adapters.add_adapters, static_argnames=("spec", "seed"), donate_argnums=0)
    with warnings.catch_warnings():
        # QLoRA: the float kernels it quantises have no output to alias; donated, they are freed all the same.
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return add(base, spec=lora, seed=seed), fp


def saved_part(state: Any) -> Any:
    """What a LoRA run's checkpoint holds of a `TrainState` (or of its shardings): all but the frozen base."""
    return state.replace(frozen=None)


def export_adapters(model: TinyLlavaVideo, lora: LoraSpec, adapter_dir: Path, source: Any) -> TinyLlavaVideo:
    """Writes the LLM's adapters as a PEFT folder in `adapter_dir` (replaced; none when the LLM has no adapters)
    and returns the merged model, which the run exports like any other."""
    from tlv_jax.convert.atomic import atomic_directory
    from tlv_jax.convert.peft_io import write_llm_adapter

    if any(path.startswith("llm/") for path, _ in adapters.adapted_layers(model)):
        with atomic_directory(adapter_dir, force=True) as tmp:
            write_llm_adapter(model, lora, tmp, base_name=source.config.raw.get("llm_model_name_or_path") or "")
    return adapters.merged(model, lora)


def with_dropout_rng(loss_fn: Callable, lora: Optional[LoraSpec], seed: int) -> Callable:
    """`loss_fn` giving qwix the dropout key of each micro-batch (only when `lora.dropout` > 0)."""
    if lora is None or lora.dropout <= 0:
        return loss_fn

    def fn(model: TinyLlavaVideo, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        ids = batch["input_ids"].astype(jnp.uint32)
        weights = jnp.arange(1, ids.shape[-1] + 1, dtype=jnp.uint32)
        key = jax.random.fold_in(jax.random.key(seed), (ids * weights).sum())
        model.set_attributes(qwix_rngs=nnx.Rngs(dropout=key), raise_if_not_found=False)
        return loss_fn(model, batch)

    return fn
