"""Generation: a video (file, frames or PIL images) and one or more prompts -> text.

The prompt goes through the original eval template (`"<SYS> USER: <image>\\n{prompt} ASSISTANT:"`), the video through
the original frame sampling and SigLIP preprocessing. Compiled pieces, each reused across calls:
- `encode`: frames -> video tokens; the vision tower stops at the layer the model reads. Questions on the same video
  share one encoding. Frame counts are padded to a few buckets (1 fps videos), with a frames mask.
- `prefill`: the spliced prompt into a fresh KV cache; logits only at each sample's last real position. Prompt
  lengths are padded to buckets so a few compilations serve every prompt.
- `decode`: a `lax.while_loop` of cached steps (greedy, or temperature + top-p sampling) that stops when every
  sample has produced EOS; or, when streaming or stop strings are asked for, one compiled step per token driven from
  Python so text can be handed out (and cut) as it comes.

    python -m tlv_jax.generate --model DIR --video FILE --prompt "What happens in the video?"
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax import cli_errors
from tlv_jax.convert import orbax_io
from tlv_jax.data.frames import read_frames
from tlv_jax.data.preprocess import siglip_preprocess
from tlv_jax.data.records import load_tokenizer
from tlv_jax.data.templates import eval_prompt_ids
from tlv_jax.inference import encode
from tlv_jax.loading import load_model
from tlv_jax.models import families
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.models.tinyllava import TinyLlavaVideo

PROMPT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
FRAME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class VideoSampling:
    """How a video file becomes frames: `num_frames` uniform, or -1 for 1 fps capped at `max_frames`."""

    num_frames: int = 16
    max_frames: Optional[int] = 16


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (n itself beyond the largest)."""
    return next((b for b in buckets if b >= n), n)


def right_pad(rows: Sequence[Sequence[int]], width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows right padded with `pad` to `width` (int32), and their attention mask."""
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, True
    return ids, mask


# ---- compiled pieces ------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _prefill(graphdef: Any, state: Any, ids: jax.Array, mask: jax.Array, video_tokens: jax.Array,
             video_lengths: Optional[jax.Array], max_new_tokens: int) -> tuple[jax.Array, KVCache]:
    logits, cache = nnx.merge(graphdef, state).prefill_tokens(ids, mask, video_tokens, video_lengths,
                                                              max_new_tokens=max_new_tokens)
    return logits.astype(jnp.float32), cache


@jax.jit
def sample(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Greedy when temperature <= 0, else temperature-scaled nucleus sampling; logits (B, V) -> tokens (B,).

    Jitted so the first token (sampled outside the compiled loops) does not retrace and recompile both branches
    on every call, which costs about a second with a 150k vocabulary. A `lax.cond`, not a select of both results:
    the nucleus path sorts and draws over the whole vocabulary, which on CPU costs more than the decode step itself
    (150k vocab), and greedy decoding must not pay for it."""

    def greedy(logits: jax.Array) -> jax.Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def nucleus(logits: jax.Array) -> jax.Array:
        scaled = logits / jnp.maximum(temperature, 1e-6)
        order = jnp.argsort(-scaled, axis=-1)
        sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the most likely token always stays
        choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    return jax.lax.cond(temperature > 0, nucleus, greedy, logits)


def _step(model: TinyLlavaVideo, token: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    logits, cache = model.decode(token, cache)
    return logits.astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _decode_one(graphdef: Any, state: Any, token: jax.Array, cache: KVCache, key: jax.Array, temperature: jax.Array,
                top_p: jax.Array) -> tuple[jax.Array, KVCache]:
    logits, cache = _step(nnx.merge(graphdef, state), token, cache)
    return sample(logits, key, temperature, top_p), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _decode_all(graphdef: Any, state: Any, first: jax.Array, cache: KVCache, key: jax.Array, eos: jax.Array,
                temperature: jax.Array, top_p: jax.Array, max_new_tokens: int) -> jax.Array:
    """Tokens (B, max_new_tokens), `first` at column 0; after a sample's EOS its row holds EOS.

    The body reads the weights through a barrier tied to the step counter, so XLA sees them as changing each step
    and hoists no conversion of a whole weight out of the loop: on CPU a bf16 token lookup is otherwise rewritten as
    a lookup in a float32 copy of the embedding table, held for the whole loop (1.2 GB at a 151936 x 2048 vocab)."""
    b = first.shape[0]
    out = jnp.full((b, max_new_tokens), eos, jnp.int32).at[:, 0].set(first)

    def cond(carry: tuple) -> jax.Array:
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry: tuple) -> tuple:
        i, token, cache, done, out = carry
        _, weights = jax.lax.optimization_barrier((i, state))
        logits, cache = _step(nnx.merge(graphdef, weights), token, cache)
        nxt = sample(logits, jax.random.fold_in(key, i), temperature, top_p)
        nxt = jnp.where(done, eos, nxt)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        return i + 1, nxt, cache, done | (nxt == eos), out

    init = (jnp.int32(1), first, cache, first == eos, out)
    return jax.lax.while_loop(cond, body, init)[-1]


# ---- the generator --------------------------------------------------------------------------------------------------

class Generator:
    """Binds a model to its tokenizer, template and frame sampling; `generate` and `stream` do the work."""

    def __init__(self, model: TinyLlavaVideo, tokenizer: Any, template: Optional[str] = None,
                 sampling: VideoSampling = VideoSampling(), prompt_buckets: Sequence[int] = PROMPT_BUCKETS,
                 frame_buckets: Sequence[int] = FRAME_BUCKETS):
        self.model = model
        self.tokenizer = tokenizer
        self.template = template or families.get(model.cfg.llm.family).chat_template
        self.sampling = sampling
        self.prompt_buckets = tuple(prompt_buckets)
        self.frame_buckets = tuple(frame_buckets)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.cfg.llm.eos_token_id
        if eos is None:
            raise ValueError("neither the tokenizer nor the LLM config names an EOS token")
        self.eos = int(eos)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32", param_dtype: Optional[str] = None,
                        **kwargs: Any) -> "Generator":
        """The model in `path` with its tokenizer and the template / frame sampling its checkpoint records;
        `kwargs` override the other constructor arguments. Parameters are stored in the compute dtype unless
        `param_dtype` says otherwise (see `tlv_jax.loading.load_model`)."""
        model = load_model(path, dtype, param_dtype or dtype)
        return cls(model, load_tokenizer(str(path)), **{**recorded_defaults(path), **kwargs})

    # -- inputs --

    def frames(self, video: Any, sampling: Optional[VideoSampling] = None) -> np.ndarray:
        """A path, uint8 frames (F, H, W, 3) or a list of PIL images -> preprocessed float32 (F, S, S, 3)."""
        s = sampling or self.sampling
        if isinstance(video, (str, Path)):
            video = read_frames(video, s.num_frames, s.max_frames)
        elif isinstance(video, np.ndarray) and video.dtype != np.uint8:
            raise ValueError(f"frame arrays must be uint8 (F, H, W, 3) as decoded, got {video.dtype}")
        return siglip_preprocess(video, self.model.cfg.vision.image_size)

    def encode(self, videos: Sequence[Any], sampling: Optional[VideoSampling] = None
               ) -> tuple[jax.Array, Optional[jax.Array]]:
        """Video tokens (N, Q, D) for N videos (frames padded to a bucket), and per-video token counts (mlp only)."""
        batch, mask = self.pad_frames([self.frames(v, sampling) for v in videos])
        graphdef, state = nnx.split(self.model)
        tokens = encode(graphdef, state, batch, mask)
        counts = self.model.video_token_counts(jnp.asarray(mask))
        return tokens, counts

    def pad_frames(self, pixels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, F, S, S, 3) frames zero-padded to a frame bucket (one compilation per bucket), and the (N, F) mask
        of real frames."""
        f = bucket(max(len(p) for p in pixels), self.frame_buckets)
        size = self.model.cfg.vision.image_size
        batch = np.zeros((len(pixels), f, size, size, 3), np.float32)
        mask = np.zeros((len(pixels), f), bool)
        for i, p in enumerate(pixels):
            batch[i, :len(p)], mask[i, :len(p)] = p, True
        return batch, mask

    def prompt_ids(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Eval-template ids (with -200) right padded to a length bucket, and the attention mask."""
        rows = [eval_prompt_ids(p, self.tokenizer, self.template).input_ids for p in prompts]
        return right_pad(rows, bucket(max(len(r) for r in rows), self.prompt_buckets), self.pad)

    def _start(self, video: Any, prompts: Sequence[str], max_new_tokens: int,
               sampling: Optional[VideoSampling]) -> tuple[jax.Array, KVCache]:
        videos = list(video) if isinstance(video, (list, tuple)) and not _is_pil_list(video) else [video]
        if len(videos) not in (1, len(prompts)):
            raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts: give one video, or one per prompt")
        tokens, counts = self.encode(videos, sampling)
        if len(videos) == 1 and len(prompts) > 1:  # questions on one video share its encoding
            tokens = jnp.broadcast_to(tokens, (len(prompts), *tokens.shape[1:]))
            counts = None if counts is None else jnp.broadcast_to(counts, (len(prompts),))
        ids, mask = self.prompt_ids(prompts)
        graphdef, state = nnx.split(self.model)
        return _prefill(graphdef, state, ids, mask, tokens, counts, max_new_tokens)

    # -- outputs --

    def _text(self, tokens: Sequence[int], stop: Sequence[str]) -> str:
        tokens = list(tokens)
        if self.eos in tokens:
            tokens = tokens[:tokens.index(self.eos)]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return cut_at_stop(text, stop).strip()

    def _begin(self, video: Any, prompts: Sequence[str], max_new_tokens: int, temperature: float, top_p: float,
               seed: int, sampling: Optional[VideoSampling]) -> tuple:
        """Encode + prefill + the first sampled token: (first, cache, key, temperature, top_p)."""
        if not prompts:
            raise ValueError("no prompt given")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        logits, cache = self._start(video, prompts, max_new_tokens, sampling)
        key = jax.random.key(seed)
        temp, topp = jnp.float32(temperature), jnp.float32(top_p)
        return sample(logits, jax.random.fold_in(key, 0), temp, topp), cache, key, temp, topp

    def generate_tokens(self, video: Any, prompts: Sequence[str], *, max_new_tokens: int = 512,
                        temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                        sampling: Optional[VideoSampling] = None) -> np.ndarray:
        """New token ids (B, max_new_tokens), fully compiled decode loop; rows end with EOS padding once done."""
        first, cache, key, temp, topp = self._begin(video, prompts, max_new_tokens, temperature, top_p, seed,
                                                    sampling)
        graphdef, state = nnx.split(self.model)
        return np.asarray(_decode_all(graphdef, state, first, cache, key, jnp.int32(self.eos), temp, topp,
                                      max_new_tokens))

    def generate(self, video: Any, prompt: str | Sequence[str], *, max_new_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
                 sampling: Optional[VideoSampling] = None,
                 on_text: Optional[Callable[[int, str], None]] = None) -> str | list[str]:
        """Answers `prompt` (a string, or a list sharing `video` or with one video each) about `video`.

        Greedy by default (the original's evaluation); `temperature > 0` samples with nucleus `top_p`. Stops at EOS,
        at `max_new_tokens`, or at the first stop string (cut from the text). `on_text(i, delta)` streams the new
        text of prompt i as it is generated.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        opts = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, sampling=sampling)
        if on_text is None and not stop:
            texts = [self._text(row, ()) for row in self.generate_tokens(video, prompts, **opts)]
        else:
            sent = [""] * len(prompts)
            for sent_now in self._steps(video, prompts, stop=tuple(stop), **opts):
                if on_text is not None:
                    for i, t in enumerate(sent_now):
                        if len(t) > len(sent[i]):
                            on_text(i, t[len(sent[i]):])
                sent = sent_now
            texts = sent
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, video: Any, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
               sampling: Optional[VideoSampling] = None) -> Iterator[str]:
        """Yields the answer's text piece by piece (one compiled decode step per token)."""
        sent = ""
        for (text,) in self._steps(video, [prompt], max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed, sampling=sampling, stop=tuple(stop)):
            if len(text) > len(sent):
                yield text[len(sent):]
                sent = text

    def _steps(self, video: Any, prompts: Sequence[str], *, max_new_tokens: int, temperature: float, top_p: float,
               seed: int, sampling: Optional[VideoSampling], stop: Sequence[str]) -> Iterator[list[str]]:
        """Yields every prompt's text so far after each token (cut at EOS and at stop strings)."""
        token, cache, key, temp, topp = self._begin(video, prompts, max_new_tokens, temperature, top_p, seed,
                                                    sampling)
        graphdef, state = nnx.split(self.model)
        n = len(prompts)
        rows: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for i in range(max_new_tokens):
            host = np.asarray(token)
            for r in range(n):
                if not done[r]:
                    rows[r].append(int(host[r]))
                    text = self.tokenizer.decode(rows[r], skip_special_tokens=True)
                    done[r] = bool(host[r] == self.eos) or any(s and s in text for s in stop)
            yield [self._text(r, stop) for r in rows]
            if all(done) or i + 1 == max_new_tokens:
                return
            token, cache = _decode_one(graphdef, state, token, cache, jax.random.fold_in(key, i + 1), temp, topp)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string."""
    cut = min((text.index(s) for s in stop if s and s in text), default=len(text))
    return text[:cut]


def _is_pil_list(video: Sequence[Any]) -> bool:
    return bool(video) and type(video[0]).__module__.startswith("PIL")


def recorded_defaults(path: str | Path) -> dict[str, Any]:
    """The `template` and `sampling` arguments our checkpoint's tlv_jax.json records (a PyTorch directory records
    none: the family's chat template and 16 uniform frames)."""
    defaults = (orbax_io.read_meta(path).get("defaults") or {}) if orbax_io.is_checkpoint(path) else {}
    return {"template": defaults.get("template"),
            "sampling": VideoSampling(int(defaults.get("num_frames", 16)), defaults.get("max_frames", 16))}


# ---- CLI --------------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tlv_jax.generate",
                                description="Answer a prompt about a video with a TinyLLaVA-Video model.")
    p.add_argument("--model", required=True, help="our checkpoint dir or a PyTorch TinyLLaVA-Video dir")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--prompt", required=True, action="append", help="question (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=None, help="uniform frames, or -1 for 1 fps")
    p.add_argument("--max-frames", type=int, default=None, help="cap for 1 fps")
    p.add_argument("--stop", action="append", default=["<|endoftext|>"], help="stop string (repeatable)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt)")
    p.add_argument("--verbose", action="store_true", help=cli_errors.VERBOSE_HELP)
    args = p.parse_args(argv)
    # An unreadable model or video (CheckpointError, VideoDecodeError) or a bad option is one line, status 1.
    return cli_errors.run(lambda: _run_cli(args), verbose=args.verbose)


def _run_cli(args: argparse.Namespace) -> None:
    gen = Generator.from_pretrained(args.model, args.dtype)
    sampling = gen.sampling
    if args.num_frames is not None or args.max_frames is not None:
        sampling = VideoSampling(args.num_frames if args.num_frames is not None else sampling.num_frames,
                                 args.max_frames if args.max_frames is not None else sampling.max_frames)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                stop=tuple(args.stop), sampling=sampling)
    if args.stream and len(args.prompt) == 1:
        for piece in gen.stream(args.video, args.prompt[0], **opts):
            print(piece, end="", flush=True)
        print()
    else:
        for answer in gen.generate(args.video, args.prompt, **opts):
            print(answer)


if __name__ == "__main__":
    sys.exit(main())
