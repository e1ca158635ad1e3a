"""The engine's limits on a live server with one decode slot and room for one waiting request: a request beyond the
queue gets 429, a client that disconnects mid-stream frees its slot for the one waiting, and the server goes on."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest

from tests.serve.live import live_server

CHAT = "/v1/chat/completions"


LONG = 2800


@pytest.fixture(scope="module")
def one_slot(model_dir, media_root, tmp_path_factory):
    """The fixture model with room for long answers (its config allows 512 positions; RoPE has no such limit), so
    that a request is still decoding when the test acts."""
    roomy = tmp_path_factory.mktemp("roomy") / "finetune"
    shutil.copytree(model_dir, roomy)
    config = json.loads((roomy / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 4096
    (roomy / "config.json").write_text(json.dumps(config))
    with live_server(roomy, media_root, max_batch=1, max_queue=1) as live:
        yield live


def long_answer(media_root) -> dict:
    """A request that would decode LONG tokens (the tiny model does not stop by itself on it)."""
    video = {"type": "video_url", "video_url": {"url": (media_root / "a.mp4").as_uri()}}
    return {"messages": [{"role": "user", "content": [video, {"type": "text", "text": "Tell me everything."}]}],
            "max_tokens": LONG, "stream": True}


def first_text(lines) -> str:
    """The first streamed piece of answer (the role chunk before it comes before any generation)."""
    for line in lines:
        if line.startswith("data: {"):
            delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
            if delta.get("content"):
                return delta["content"]
    raise AssertionError("the stream ended without text")


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_full_queue_is_429_and_a_disconnect_frees_the_slot(one_slot, media_root):
    s = one_slot
    generated = s.metric("tlv_generated_tokens_total")
    gone = s.metric('tlv_errors_total{kind="client_disconnected"}')
    release = threading.Event()
    waiting_lines: list[str] = []

    def waiting_client() -> None:
        with httpx.stream("POST", s.url + CHAT, json=long_answer(media_root), timeout=60) as r:
            lines = r.iter_lines()  # kept: closing the iterator closes the connection
            waiting_lines.append(first_text(lines))  # comes only once it holds the slot
            release.wait(60)

    with httpx.stream("POST", s.url + CHAT, json=long_answer(media_root), timeout=60) as first:
        lines = first.iter_lines()
        assert first.status_code == 200 and first_text(lines)
        assert s.metric("tlv_active_slots") == 1
        waiter = threading.Thread(target=waiting_client)
        waiter.start()
        wait_for(lambda: s.metric("tlv_queue_length") == 1)
        refused = httpx.post(s.url + CHAT, json={**long_answer(media_root), "stream": False}, timeout=60)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        assert s.metric('tlv_errors_total{kind="queue_full"}') == 1
    # The first client has gone: its slot goes to the waiting request.
    wait_for(lambda: bool(waiting_lines))
    assert s.metric("tlv_queue_length") == 0
    release.set()
    waiter.join(60)
    wait_for(lambda: s.metric("tlv_active_slots") == 0)
    assert s.metric('tlv_errors_total{kind="client_disconnected"}') == gone + 2
    assert s.metric("tlv_generated_tokens_total") - generated < 2 * LONG  # neither ran to its limit
    ok = httpx.post(s.url + CHAT, json={**long_answer(media_root), "stream": False, "max_tokens": 4}, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4
    assert httpx.get(s.url + "/health").status_code == 200
