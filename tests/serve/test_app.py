"""The server, live on a localhost port, through the official `openai` client: its greedy answers are
`tlv_jax.load(...).generate(...)`'s for the same video and prompt (file, data URL or image frames; alone, streamed,
or with 15 other clients at once), follow-up questions reuse the video's encoding, /health and /v1/models."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from PIL import Image

import tlv_jax
from tlv_jax.serve.__main__ import build_service
from tlv_jax.serve.app import create_app


@pytest.fixture(scope="module")
def reference(model_dir):
    return tlv_jax.load(model_dir)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def ask(client, video: dict | list[dict], question: str, **options):
    parts = video if isinstance(video, list) else [video]
    return client.chat.completions.create(model="finetune", messages=[
        {"role": "user", "content": [*parts, {"type": "text", "text": question}]}], **options)


def test_greedy_answers_equal_generate(client, reference, media_root):
    clip = media_root / "a.mp4"
    data_url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    for video, question, n in [(video_part(clip.as_uri()), "What is happening in the video?", 8),
                               (video_part(data_url), "Describe the colours.", 8)]:
        out = ask(client, video, question, max_tokens=n)
        choice = out.choices[0]
        assert choice.message.content == reference.generate(video=str(clip), prompt=question, max_new_tokens=n)
        assert choice.finish_reason in ("stop", "length") and out.usage.completion_tokens <= n
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
        assert (choice.finish_reason == "length") == (out.usage.completion_tokens == n)


def test_image_parts_are_the_frames_of_one_video(client, reference):
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]

    def url(im: Image.Image) -> str:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    parts = [{"type": "image_url", "image_url": {"url": url(im)}} for im in frames]
    out = ask(client, parts, "What changes?", max_tokens=8)
    assert out.choices[0].message.content == reference.generate(video=frames, prompt="What changes?",
                                                                max_new_tokens=8)


def test_stream_chunks_add_up_to_the_answer(client, server, media_root):
    video = video_part((media_root / "b.mp4").as_uri())
    whole = ask(client, video, "What is happening in the video?", max_tokens=12).choices[0].message.content
    chunks = list(ask(client, video, "What is happening in the video?", max_tokens=12, stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole and sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 1 and not chunks[-1].choices
    body = {"messages": [{"role": "user", "content": [video, {"type": "text", "text": "Why?"}]}], "max_tokens": 3,
            "stream": True}
    raw = httpx.post(server.url + "/v1/chat/completions", json=body).text
    assert raw.startswith("data: {") and raw.endswith("data: [DONE]\n\n")


def test_sixteen_concurrent_clients_get_their_own_answers(client, reference, media_root):
    """Three videos, sixteen questions, all sent at once to four decode slots: requests wait, join the batch as
    slots free up and leave it, and each answer is what `generate` gives that request alone."""
    requests = [(media_root / f"{'abc'[i % 3]}.mp4", f"Question {i}: what do you see?", 8) for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: ask(client, video_part(r[0].as_uri()), r[1], max_tokens=r[2]), requests))
    expected = [reference.generate(video=str(clip), prompt=q, max_new_tokens=n) for clip, q, n in requests]
    assert [out.choices[0].message.content for out in answers] == expected


def test_follow_up_question_hits_the_video_cache(client, server, media_root):
    video = video_part((media_root / "c.mp4").as_uri())
    first = ask(client, video, "What is in the video?", max_tokens=5)
    hits, misses = server.metric("tlv_video_cache_hits_total"), server.metric("tlv_video_cache_misses_total")
    follow_up = client.chat.completions.create(model="finetune", max_tokens=5, messages=[
        {"role": "user", "content": [video, {"type": "text", "text": "What is in the video?"}]},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what happens next?"}])
    assert follow_up.usage.prompt_tokens > first.usage.prompt_tokens
    assert server.metric("tlv_video_cache_hits_total") == hits + 1
    assert server.metric("tlv_video_cache_misses_total") == misses


def test_health_models_and_metrics(client, server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["finetune"]
    page = httpx.get(server.url + "/metrics").text
    for name in ("tlv_requests_total", "tlv_errors_total", "tlv_queue_length", "tlv_tokens_per_second",
                 "tlv_batch_occupancy_bucket", "tlv_active_slots"):
        assert name in page
    assert "<input type=\"file\"" in httpx.get(server.url + "/").text


def test_not_ready_until_warmed_up(model_dir, media_root):
    """Before the lifespan has warmed the model up, /health is 503 and chat requests are refused with 503."""
    app = create_app(build_service(model_dir, media_root=media_root))
    plain = TestClient(app)  # not entered: the lifespan (engine, warm-up) does not run
    assert plain.get("/health").status_code == 503
    r = plain.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "loading"


def test_a_failed_warm_up_is_reported_by_health(model_dir, media_root):
    """A context too small for one video cannot serve anything: /health says why instead of loading forever."""
    with TestClient(create_app(build_service(model_dir, media_root=media_root, max_batch=1, max_context=32))) as c:
        deadline = time.monotonic() + 120
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "the context holds 32" in r.json()["error"]
