"""The pure training step: `train_step(state, batch) -> (state, metrics)`, jitted with explicit shardings.

The model is split once into a static graph definition and three states: trainable parameters (fp32 masters),
frozen parameters (compute dtype) and anything else the modules hold. Each micro-batch merges them back into the
model, whose modules cast parameters to `cfg.dtype` on the fly, so bf16 compute with fp32 masters needs nothing
here. Gradient accumulation runs the k micro-batches of one global batch through `lax.scan`, summing token losses
and gradients; dividing by the total number of target tokens at the end makes k micro-batches equal one batch k
times larger (the mean token cross-entropy over the global batch).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from tlv_jax.sharding.mesh import batch_sharding, replicated
from tlv_jax.train.optim import cast_floating

# loss_fn(model, micro_batch) -> (sum of token losses, number of target tokens), both float32 scalars.
LossFn = Callable[[nnx.Module, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    rest: nnx.State
    opt_state: optax.OptState


def split_model(model: nnx.Module, trainable: Any, frozen_dtype: Any) -> tuple[Any, nnx.State, nnx.State, nnx.State]:
    """(graphdef, trainable params, frozen params cast to `frozen_dtype`, other variables)."""
    graphdef, params, frozen, rest = nnx.split(model, trainable, nnx.Param, ...)
    return graphdef, params, cast_floating(frozen, frozen_dtype), rest


def init_state(params: nnx.State, frozen: nnx.State, rest: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, rest=rest,
                      opt_state=tx.init(params))


def _micro_batches(batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """(B, ...) -> (k, B/k, ...) with micro-batch j = samples j, j+k, j+2k...: every micro-batch spreads over all
    the devices the batch dimension is sharded on."""
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return {name: split(x) for name, x in batch.items()}


def make_train_step(graphdef: Any, tx: optax.GradientTransformation, loss_fn: LossFn, *, accum_steps: int = 1,
                    schedule: Optional[Callable[[jax.Array], jax.Array]] = None
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure step. Metrics: loss (token mean), grad_norm (before clipping), lr (of this update), tokens."""
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")

    def summed_loss(params: nnx.State, frozen: nnx.State, rest: nnx.State, mb: Mapping[str, jax.Array]):
        # Fresh Variable objects for the non-differentiated states: NNX ties a Variable to the trace it was made
        # in, and transforms inside the model (nnx.remat) update them from within this (grad) trace.
        frozen, rest = jax.tree.map(lambda x: x, (frozen, rest))
        model = nnx.merge(graphdef, params, frozen, rest)
        total, count = loss_fn(model, mb)
        return total.astype(jnp.float32), count.astype(jnp.float32)

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
        if accum_steps == 1:
            (total, count), grads = grad_fn(state.params, state.frozen, state.rest, batch)
        else:
            def body(carry, mb):
                g_acc, t_acc, c_acc = carry
                (t, c), g = grad_fn(state.params, state.frozen, state.rest, mb)
                return (jax.tree.map(jnp.add, g_acc, g), t_acc + t, c_acc + c), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, total, count), _ = jax.lax.scan(body, init, _micro_batches(batch, accum_steps))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": total / denom, "grad_norm": grad_norm, "target_tokens": count}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def jit_train_step(step_fn: Callable, state_shardings: Any, mesh: Mesh, batch_ndims: Mapping[str, int], *,
                   compiler_options: Optional[Mapping[str, Any]] = None) -> Callable:
    """The one way a train step is jitted (the loop, the planner, the benchmarks and the tests all use it): the
    state's shardings in and out, the state donated, every batch array (`batch_ndims`: name -> rank) split over
    data x fsdp on its leading axis, the metrics replicated. A fixed set of batch names gives one jitted function
    for the whole run (new shapes recompile inside its cache). `state_shardings`: e.g.
    `tlv_jax.sharding.mesh.tree_shardings(state, mesh, rules)`."""
    batch_sh = {k: batch_sharding(mesh, nd) for k, nd in batch_ndims.items()}
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,), compiler_options=dict(compiler_options) if compiler_options else None)
