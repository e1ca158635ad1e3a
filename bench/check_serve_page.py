"""The page at `/` in headless Chromium: pick a video file, ask, wait for the streamed answer, screenshot it.

Starts the server in this process (`--model`, default the tiny Qwen2 test fixture, random weights: its answers are
gibberish) with the video's folder as media root, drives Debian's `chromium` over the DevTools protocol (the file is
set on the page's file input as a user's pick would, the question typed, Ask clicked), checks that the answer the
page shows is the one the API gives for the same video and question, and saves the screenshot.

    python bench/check_serve_page.py [--model DIR] [--video FILE] [--out docs/serve_page.png]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from openai import OpenAI  # noqa: E402

from tlv_jax.data.synthetic import write_video  # noqa: E402
from tlv_jax.serve.__main__ import build_service  # noqa: E402
from tlv_jax.serve.background import serve_in_thread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What colour is the square?"


def moving_square(path: Path) -> Path:
    """A 2-second clip: a red square crossing a grey background."""
    frames = np.full((16, 96, 128, 3), 90, np.uint8)
    for t in range(16):
        frames[t, 30:62, 6 * t:6 * t + 32] = (220, 40, 40)
    return write_video(path, frames)


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        await self.ws.send_json({"id": i, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == i:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("DevTools connection closed")

    async def js(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return out["result"].get("value")


async def drive(page_url: str, port: int, video: Path, out: Path, timeout_s: float) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
        target = next(t for t in json.load(r) if t["type"] == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(target["webSocketDebuggerUrl"],
                                                                      max_msg_size=0) as ws:
        dt = DevTools(ws)
        await dt.call("Emulation.setDeviceMetricsOverride", width=900, height=760, deviceScaleFactor=1, mobile=False)
        await dt.call("Page.enable")
        await dt.call("Page.navigate", url=page_url)
        deadline = time.monotonic() + timeout_s
        while await dt.js("document.readyState") != "complete" or not await dt.js(
                "document.getElementById('model').textContent"):
            assert time.monotonic() < deadline, "the page did not load"
            await asyncio.sleep(0.2)
        root = await dt.call("DOM.getDocument")
        node = await dt.call("DOM.querySelector", nodeId=root["root"]["nodeId"], selector="#file")
        await dt.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(video)])
        while "ready" not in (await dt.js("document.getElementById('status').textContent") or ""):
            assert time.monotonic() < deadline, "the page did not read the video file"
            await asyncio.sleep(0.2)
        await dt.js(f"document.getElementById('question').value = {json.dumps(QUESTION)}; "
                    "document.getElementById('ask').click(); true")
        while not (await dt.js("document.getElementById('status').textContent") or "").startswith("done"):
            error = await dt.js("(document.querySelector('.error') || {}).textContent")
            assert not error, f"the page shows an error: {error}"
            assert time.monotonic() < deadline, "no streamed answer"
            await asyncio.sleep(0.2)
        answer = await dt.js("document.querySelector('.assistant').textContent")
        shot = await dt.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))
        return answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "tests/fixtures/upstream/qwen2-group-f16/finetune"))
    ap.add_argument("--video", default=None, help="video file to pick (default: a generated clip)")
    ap.add_argument("--out", default=str(ROOT / "docs/serve_page.png"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve_page_"))
    video = Path(args.video).resolve() if args.video else moving_square(work / "square.mp4")
    service = build_service(args.model, media_root=video.parent)
    with serve_in_thread(service) as url:
        port = 9222 + (int(time.time()) % 500)
        browser = subprocess.Popen([args.chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                    f"--remote-debugging-port={port}", f"--user-data-dir={work / 'profile'}",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version").close()
                    break
                except OSError:
                    time.sleep(0.2)
            shown = asyncio.run(drive(url + "/", port, video, Path(args.out), args.timeout))
        finally:
            browser.terminate()
            browser.wait(30)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        content = [{"type": "video_url", "video_url": {"url": video.as_uri()}}, {"type": "text", "text": QUESTION}]
        api = client.chat.completions.create(model=service.model_id, max_tokens=256,
                                             messages=[{"role": "user", "content": content}])
    expected = api.choices[0].message.content
    if shown != expected:
        raise SystemExit(f"the page shows {shown!r}, the API answers {expected!r}")
    print(f"page ok: picked {video.name}, asked {QUESTION!r}, streamed answer ({len(shown)} chars) equals the API's; "
          f"screenshot {args.out}")


if __name__ == "__main__":
    main()
