"""Bad input never takes the live server down: each gets its status and an OpenAI error body naming the problem,
is counted by kind in /metrics, and the next good request is answered."""

from __future__ import annotations

import base64

import httpx
import pytest
from openai import BadRequestError, OpenAI

from tlv_jax.data.synthetic import write_broken_videos

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def broken(media_root):
    paths = write_broken_videos(media_root / "broken")
    outside = media_root.parent / "outside.mp4"
    outside.write_bytes((media_root / "a.mp4").read_bytes())
    (media_root / "link_out.mp4").symlink_to(outside)
    return paths


def chat(video: dict | None, text: str = "What is this?", **options) -> dict:
    content = ([video] if video else []) + [{"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], **options}


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_bad_input_gets_its_status_and_the_server_stays_healthy(server, media_root, broken):
    clip = (media_root / "a.mp4").as_uri()
    cases = [  # (body, status, error code)
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        ({"messages": "hello"}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": clip}}]}]}, 400,
         "invalid_request"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_request"),
        (chat(None), 400, "no_video"),
        ({"messages": [{"role": "user", "content": [video(clip), video(clip)]}]}, 400, "invalid_request"),
        (chat(video(clip), "Look at <image> twice"), 400, "invalid_request"),
        (chat(video(clip), temperature=7), 400, "invalid_request"),
        (chat(video("https://example.com/v.mp4")), 400, "unsupported_url"),
        (chat(video("ftp://example.com/v.mp4")), 400, "unsupported_url"),
        (chat(video("file:///etc/hostname")), 400, "media_outside_root"),
        (chat(video((media_root / "link_out.mp4").as_uri())), 400, "media_outside_root"),
        (chat(video((media_root / "nothing.mp4").as_uri())), 400, "missing_video"),
        (chat(video(broken["directory"].as_uri())), 400, "not_a_regular_file"),
        (chat(video(broken["empty"].as_uri())), 400, "unreadable_container"),
        (chat(video(broken["random_bytes"].as_uri())), 400, "unreadable_container"),
        (chat(video(broken["truncated"].as_uri())), 400, "unreadable_container"),
        (chat(video(broken["audio_only"].as_uri())), 400, "no_video_stream"),
        (chat(video("data:video/mp4;base64," + b64(broken["audio_only"].read_bytes()))), 400, "no_video_stream"),
        (chat(video("data:video/mp4;base64,@@not base64@@")), 400, "invalid_data_url"),
        (chat(video("data:text/plain;base64," + b64(b"hello"))), 400, "invalid_data_url"),
        (chat(video("data:video/mp4;base64," + b64(b"\x00" * 4096))), 400, "unreadable_container"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + b64(b"not a png")}}]}]}, 400, "unreadable_image"),
        (chat(video(clip), max_tokens=100_000), 400, "context_length_exceeded"),
        (chat(video(clip), text="word " * 4000, max_tokens=4), 400, "context_length_exceeded"),
    ]
    for body, status, code in cases:
        before = server.metric(f'tlv_errors_total{{kind="{code}"}}')
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(server.url + CHAT, headers={"Content-Type": "application/json"}, timeout=60, **kw)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body if isinstance(body, bytes)
                                                                              else str(body)[:200], r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "code"} and error["message"] and "\n" not in error["message"]
        assert server.metric(f'tlv_errors_total{{kind="{code}"}}') == before + 1
        assert httpx.get(server.url + "/health").status_code == 200
    good = httpx.post(server.url + CHAT, json=chat(video(clip), max_tokens=3), timeout=60)
    assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_openai_client_sees_a_bad_request(server, broken):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError, match="no video stream|video"):
        client.chat.completions.create(model="finetune", messages=chat(video(broken["audio_only"].as_uri()))[
            "messages"])
