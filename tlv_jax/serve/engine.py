"""Continuous batching: a fixed number of decode slots, each a row of one KV cache array, run by one thread.

At every step boundary the scheduler admits waiting requests into free slots, prefilling them together (a few rows
per compiled call, grouped by padded shape), then runs one decode step for the whole batch; a request leaves its slot
as soon as it has finished (EOS, a stop string, its token limit) or its client has gone, and the next waiting request
takes the slot at the next boundary. The computed prompt up to the end of the video (system line, earlier turns,
the video) is kept per video and text in a bounded LRU: a follow-up question about the same video, or several
questions arriving together, prefill only their own text. Text is handed to each request's `emit` as it is decoded,
cut at EOS and stop strings the way `Generator.generate` cuts it, so the streamed pieces add up to the final
answer."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Callable, Optional, Union

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tlv_jax.generate import Generator, bucket, cut_at_stop
from tlv_jax.models.layers.kv_cache import KVCache
from tlv_jax.serve.errors import ApiError, bad_request, internal, queue_full
from tlv_jax.serve.metrics import Metrics
from tlv_jax.serve.prefill import Joining, Prefiller
from tlv_jax.serve.steps import decode_step, move_row
from tlv_jax.serve.video_cache import Encoded

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class Delta:
    text: str


@dataclasses.dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


Event = Union[Delta, Finished, ApiError]


@dataclasses.dataclass
class Job:
    """One request as the engine runs it. `emit` is called from the engine thread (it must be thread-safe);
    setting `cancelled` frees the slot at the next step boundary."""

    ids: np.ndarray
    video: Encoded
    prompt_tokens: int
    max_tokens: int
    emit: Callable[[Event], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class _Running:
    job: Job
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: str = ""


class Engine:
    """Owns the model's decode slots. `budget` checks a request against the context, `enter_queue` against the
    queue; `submit` hands it to the scheduler thread (started by `start`). `prefix_cache`: prompt prefixes kept
    (each a slot row's keys and values up to the end of the video; 0 turns reuse off)."""

    def __init__(self, generator: Generator, metrics: Metrics, max_batch: int = 8, max_queue: int = 64,
                 max_context: Optional[int] = None, prefix_cache: int = 16):
        cfg = generator.model.cfg
        limit = min(cfg.tokenizer_model_max_length, cfg.llm.max_position_embeddings)
        self.context = min(max_context or limit, limit)
        self.gen, self.metrics = generator, metrics
        self.max_batch, self.max_queue = max_batch, max_queue
        self.graphdef, self.state = nnx.split(generator.model)
        self.prefiller = Prefiller(generator, metrics, self.context, max_batch, prefix_cache)
        self.cache = self._fresh_cache()
        self.slots: list[Optional[_Running]] = [None] * max_batch
        self.tokens = np.zeros(max_batch, np.int32)
        self.seeds = np.zeros(max_batch, np.uint32)
        self.steps = np.zeros(max_batch, np.int32)
        self.temperature = np.zeros(max_batch, np.float32)
        self.top_p = np.ones(max_batch, np.float32)
        self.row_buckets = tuple(sorted({min(2 ** i, max_batch) for i in range(max_batch.bit_length() + 1)}))
        self.waiting: collections.deque[Job] = collections.deque()
        self.queued = 0  # accepted requests not yet in a slot (media being read included)
        self._compiling: list[tuple[np.ndarray, Encoded, threading.Event]] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tlv-engine", daemon=True)

    def _fresh_cache(self) -> KVCache:
        return self.gen.model.llm.init_cache(self.max_batch, self.context)

    # ---- the request side (event loop) ----

    def enter_queue(self) -> None:
        """Counts a request as waiting, or refuses it (429) when `max_queue` already wait."""
        with self._cv:
            if self.queued >= self.max_queue:
                raise queue_full(self.max_queue)
            self.queued += 1
            self.metrics.queue.set(self.queued)

    def leave_queue(self) -> None:
        with self._cv:
            self.queued -= 1
            self.metrics.queue.set(self.queued)

    def budget(self, ids: np.ndarray, video: Encoded, max_tokens: Optional[int]) -> tuple[int, int]:
        """(prompt tokens, max new tokens) for a prompt, or a 400 when they do not fit the context."""
        has_video = bool((ids == self.gen.model.cfg.image_token_index).any())
        prompt = len(ids) - has_video + (video.num_tokens if has_video else 0)
        padded = self.prefiller.width(len(ids), video) - 1 + video.tokens.shape[1]
        room = self.context - prompt
        if room < 1 or padded > self.context:
            raise bad_request(f"the prompt is {prompt} tokens (video included); the context holds {self.context}",
                              "context_length_exceeded")
        if max_tokens is None:
            return prompt, min(DEFAULT_MAX_TOKENS, room)
        if max_tokens > room:
            raise bad_request(f"the prompt ({prompt} tokens, video included) plus max_tokens ({max_tokens}) exceeds "
                              f"the context of {self.context} tokens", "context_length_exceeded")
        return prompt, max_tokens

    def submit(self, job: Job) -> None:
        with self._cv:
            self.waiting.append(job)
            self._cv.notify()

    def compile(self, ids: np.ndarray, video: Encoded) -> None:
        """Blocks until the scheduler thread has compiled every prefill call for prompts shaped like this one (the
        warm-up's), between two steps."""
        done = threading.Event()
        with self._cv:
            self._compiling.append((ids, video, done))
            self._cv.notify()
        done.wait()

    # ---- the scheduler thread ----

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()  # at most the step in flight: a thread killed inside XLA aborts the process

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        for rows in self.row_buckets:  # compile every batch size now rather than while requests wait
            if self._stopping:
                return
            self._decode(rows)
        self.cache = move_row(self.cache, jnp.int32(0), jnp.int32(0))
        while True:
            with self._cv:
                self._cv.wait_for(lambda: (self._stopping or self.waiting or self._compiling
                                           or self._running() > 0))
                if self._stopping:
                    return
                compiling, self._compiling = self._compiling, []
                joining = []
                for slot in range(self.max_batch):
                    while self.slots[slot] is None and self.waiting:
                        job = self.waiting.popleft()
                        self.queued -= 1
                        if not job.cancelled.is_set():
                            joining.append((slot, job))
                            self.slots[slot] = _Running(job)
                self.metrics.queue.set(self.queued)
            try:
                self._compile(compiling)
                if joining:
                    self._admit(joining)
                if self._running() > 0:
                    self._step()
            except Exception as e:  # a bug or an exhausted device: fail the running requests, keep serving
                log.exception("engine step failed")
                self._fail_all(internal(e))

    def _compile(self, requests: list[tuple[np.ndarray, Encoded, threading.Event]]) -> None:
        try:
            for ids, video, _ in requests:
                self.cache = self.prefiller.compile(self.cache, ids, video)
        finally:  # a failure is logged by the loop; the waiting warm-up goes on and meets it again
            for *_, done in requests:
                done.set()

    def _admit(self, joining: list[tuple[int, Job]]) -> None:
        """Prefills the joining requests into their slots together, then hands out their first tokens."""
        for slot, job in joining:
            self.seeds[slot] = job.seed % 2 ** 32
            self.temperature[slot], self.top_p[slot] = job.temperature, job.top_p
            self.steps[slot] = 1
        self.cache, first = self.prefiller.prefill(self.cache, [Joining(slot, job.ids, job.video)
                                                                for slot, job in joining],
                                                   self.seeds, self.temperature, self.top_p)
        self.metrics.prompt_tokens.inc(sum(job.prompt_tokens for _, job in joining))
        self.metrics.active.set(self._running())
        self.metrics.step(self._running(), self.max_batch, len(joining))
        for slot, _ in joining:
            self.tokens[slot] = first[slot]
        self._release([slot for slot, _ in joining if self._accept(slot, first[slot])])

    def _running(self) -> int:
        return sum(s is not None for s in self.slots)

    def _decode(self, rows: int) -> np.ndarray:
        """One decode step of the first `rows` slots; their next tokens."""
        active = np.array([s is not None for s in self.slots[:rows]])
        nxt, self.cache = decode_step(self.graphdef, self.state, self.tokens[:rows], self.cache, active,
                                      self.seeds[:rows], self.steps[:rows], self.temperature[:rows],
                                      self.top_p[:rows], rows=rows)
        return np.asarray(nxt)

    def _step(self) -> None:
        n = self._running()  # the running requests hold slots 0..n-1 (`_release` keeps them there)
        nxt = self._decode(bucket(n, self.row_buckets))
        self.metrics.step(n, self.max_batch, n)
        self.steps[:n] += 1
        self.tokens[:n] = nxt[:n]
        self._release([slot for slot in range(n) if self._accept(slot, int(nxt[slot]))])

    def _accept(self, slot: int, token: int) -> bool:
        """Records a slot's new token and hands out its new text; True when the request is over."""
        run = self.slots[slot]
        job = run.job
        if job.cancelled.is_set():
            return True
        eos = token == self.gen.eos
        if not eos:
            run.tokens.append(token)
        raw = self.gen.tokenizer.decode(run.tokens, skip_special_tokens=True)
        stopped = any(s and s in raw for s in job.stop)
        text = cut_at_stop(raw, job.stop).strip()
        done = eos or stopped or len(run.tokens) >= job.max_tokens
        # A character split across tokens decodes as U+FFFD until its last byte comes: hold it back till then.
        if len(text) > len(run.sent) and (done or not text.endswith("\ufffd")):
            job.emit(Delta(text[len(run.sent):]))
            run.sent = text
        if done:
            reason = "length" if not (eos or stopped) else "stop"
            self.metrics.completed.labels(reason).inc()
            job.emit(Finished(reason, job.prompt_tokens, len(run.tokens)))
        return done

    def _release(self, slots: list[int]) -> None:
        """Frees the slots, then moves the last running requests into the holes, keeping them in the first rows."""
        for slot in slots:
            self.slots[slot] = None
        while True:
            holes = [i for i, s in enumerate(self.slots) if s is None]
            last = max((i for i, s in enumerate(self.slots) if s is not None), default=-1)
            if not holes or holes[0] > last:
                break
            dst = holes[0]
            self.cache = move_row(self.cache, jnp.int32(last), jnp.int32(dst))
            for arr in (self.tokens, self.seeds, self.steps, self.temperature, self.top_p):
                arr[dst] = arr[last]
            self.slots[dst], self.slots[last] = self.slots[last], None
        self.metrics.active.set(self._running())

    def _fail_all(self, error: ApiError) -> None:
        for run in self.slots:
            if run is not None:
                run.job.emit(error)
        self.slots = [None] * self.max_batch
        self.metrics.active.set(0)
        self.cache = self._fresh_cache()  # the failed call may have consumed the donated cache
