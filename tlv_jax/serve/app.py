"""The HTTP routes: `/` (the page), `/health`, `/v1/models`, `/v1/chat/completions` (plain, or streamed as OpenAI
chunks over server-sent events), `/metrics`.

A route only parses, checks and waits: media go to the encoder's worker pool, generation to the engine thread, so
the event loop stays free for other clients. Every refusal is an `ApiError` answered as an OpenAI error body and
counted in `tlv_errors{kind=...}`; a client that goes away before its answer is complete has its request cancelled,
which frees its slot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from tlv_jax.data.templates import eval_prompt_ids
from tlv_jax.generate import Generator
from tlv_jax.serve import protocol
from tlv_jax.serve.engine import Delta, Engine, Event, Finished, Job
from tlv_jax.serve.errors import ApiError, bad_request, internal
from tlv_jax.serve.metrics import CONTENT_TYPE, Metrics
from tlv_jax.serve.page import PAGE
from tlv_jax.serve.video_cache import VideoEncoder

DISCONNECT_POLL_S = 0.5
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Service:
    """Everything the routes use. `ready` is set once a first request has compiled every piece (`warm_up`)."""

    model_id: str
    generator: Generator
    engine: Engine
    encoder: VideoEncoder
    metrics: Metrics
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    failure: str = ""  # why the warm-up failed (then /health stays 503 and says so)

    def warm_up(self) -> None:
        try:
            self._warm_up()
        except Exception as e:  # e.g. a --max-context too small for one video: say so instead of loading forever
            log.exception("warm-up failed")
            self.failure = f"{type(e).__name__}: {e}"

    def _warm_up(self) -> None:
        """One short request on a blank video through the vision tower, a prefill and a decode step."""
        gen = self.generator
        s = gen.sampling
        size = gen.model.cfg.vision.image_size
        frames = np.zeros((s.num_frames if s.num_frames > 0 else (s.max_frames or 1), size, size, 3), np.uint8)
        video = self.encoder.encode_frames(frames)
        ids = eval_prompt_ids("Warm up.", gen.tokenizer, gen.template).input_ids.astype(np.int32)
        prompt, _ = self.engine.budget(ids, video, 2)
        self.engine.compile(ids, video)
        done = threading.Event()
        self.engine.enter_queue()
        self.engine.submit(Job(ids, video, prompt, 2, lambda e: None if isinstance(e, Delta) else done.set()))
        done.wait()
        self.ready.set()

    def close(self) -> None:
        self.engine.stop()
        self.encoder.close()


def create_app(service: Service) -> FastAPI:
    """The FastAPI app. Its lifespan starts the engine thread and the warm-up; /health is 503 until that is done."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        threading.Thread(target=service.warm_up, name="tlv-warm-up", daemon=True).start()
        yield
        service.close()

    app = FastAPI(title="tlv_jax video chat", lifespan=lifespan)
    m = service.metrics

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        err = internal(exc)
        m.errors.labels(err.code).inc()
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.failure:
            return JSONResponse({"status": "failed", "error": service.failure}, status_code=503)
        ok = service.ready.is_set() and service.engine.alive()
        return JSONResponse({"status": "ok" if ok else "loading"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "tlv_jax"}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(m.text(), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        m.requests.inc()
        try:
            req, job, events = await _start(service, request)
        except ApiError as e:
            m.errors.labels(e.code).inc()
            return JSONResponse(e.body(), status_code=e.status)
        reply = _Reply(service.model_id, req)
        if req.stream:
            return StreamingResponse(_stream(reply, job, events, m), media_type="text/event-stream")
        return await _whole(reply, job, events, request, m)

    return app


async def _start(service: Service, request: Request) -> tuple[protocol.ChatRequest, Job, asyncio.Queue]:
    """Parses and checks a request, encodes its video, and hands it to the engine; ApiError for bad input."""
    try:
        body = json.loads(await request.body())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise bad_request(f"the body is not valid JSON ({e})", "invalid_json") from None
    req = protocol.parse(body)
    if not service.ready.is_set():
        raise ApiError(503, "the model is still loading; retry once /health answers 200", "loading", "server_error")
    turns, system, media = protocol.conversation(req.messages)
    if not media:
        raise bad_request("no video: add a video_url part (or image_url parts, the frames of one video) to a user "
                          "message", "no_video")
    gen = service.generator
    ids = protocol.prompt_ids(turns, system, gen.tokenizer, gen.template)
    engine = service.engine
    engine.enter_queue()
    try:
        video = await service.encoder.encode(media)
        prompt, max_tokens = engine.budget(ids, video, req.token_limit)
    except BaseException:
        engine.leave_queue()
        raise
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(ids, video, prompt, max_tokens, _sink(events), temperature=req.temperature, top_p=req.top_p,
              seed=secrets.randbits(32) if req.seed is None else req.seed, stop=req.stop_strings)
    engine.submit(job)
    return req, job, events


def _sink(events: asyncio.Queue) -> Callable[[Event], None]:
    """A thread-safe `emit` for the engine that puts events on this event loop's queue."""
    loop = asyncio.get_running_loop()

    def emit(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has shut down: nobody is listening
            loop.call_soon_threadsafe(events.put_nowait, event)

    return emit


class _Reply:
    """The OpenAI response shapes for one request."""

    def __init__(self, model_id: str, req: protocol.ChatRequest):
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model_id
        self.include_usage = bool(req.stream_options and req.stream_options.include_usage)

    @staticmethod
    def usage(done: Finished) -> dict[str, int]:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens}

    def completion(self, text: str, done: Finished) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": done.finish_reason, "logprobs": None}],
                "usage": self.usage(done)}

    def chunk(self, delta: dict[str, str] | None, finish_reason: str | None = None,
              usage: dict[str, int] | None = None) -> str:
        """One server-sent event; `delta` None gives the usage-only chunk (no choices) that ends a stream."""
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": [] if delta is None else [
                                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"


async def _stream(reply: _Reply, job: Job, events: asyncio.Queue, m: Metrics) -> AsyncIterator[str]:
    finished = False
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            event = await events.get()
            if isinstance(event, Delta):
                yield reply.chunk({"content": event.text})
                continue
            if isinstance(event, ApiError):
                m.errors.labels(event.code).inc()
                yield f"data: {json.dumps(event.body())}\n\n"
            else:
                yield reply.chunk({}, event.finish_reason)
                if reply.include_usage:
                    yield reply.chunk(None, usage=reply.usage(event))
            finished = True
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:  # the client went away (the server cancels this generator): free the slot
            job.cancelled.set()
            m.errors.labels("client_disconnected").inc()


async def _whole(reply: _Reply, job: Job, events: asyncio.Queue, request: Request, m: Metrics) -> Response:
    text = ""
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    m.errors.labels("client_disconnected").inc()
                    return Response(status_code=499)
                continue
            if isinstance(event, Delta):
                text += event.text
            elif isinstance(event, ApiError):
                m.errors.labels(event.code).inc()
                return JSONResponse(event.body(), status_code=event.status)
            else:
                return JSONResponse(reply.completion(text, event))
    except asyncio.CancelledError:
        job.cancelled.set()
        raise
    except Exception as e:  # a bug here must not leave the request's slot running
        job.cancelled.set()
        err = internal(e)
        m.errors.labels(err.code).inc()
        return JSONResponse(err.body(), status_code=err.status)
