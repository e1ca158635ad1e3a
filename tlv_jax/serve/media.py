"""Video and image URLs -> bytes -> frames. Nothing is fetched from the network: a `file://` URL must name a file
under `--media-root` (after resolving links), and `data:` URLs carry the bytes inline. Every failure is a 400 that
names the URL's kind and why (the frame reader's reason code becomes the error code)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from tlv_jax.data.frames import VideoDecodeError, read_frames
from tlv_jax.generate import VideoSampling
from tlv_jax.serve.errors import bad_request


@dataclasses.dataclass(frozen=True)
class Blob:
    """A medium's bytes and, for a file, its path (decoders read paths; inline bytes go through a temporary file)."""

    data: bytes
    name: str  # how messages call it: the path, or "the data URL"
    path: Optional[Path] = None


def fetch(url: str, media_root: Optional[Path], kind: str) -> Blob:
    """The bytes a `file://` or `data:` URL names; `kind` is 'video' or 'image' (a data URL's MIME type must match)."""
    if url.startswith("data:"):
        return _inline(url, kind)
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise bad_request(f"{kind} URL {url[:80]!r}: only file:// URLs under the media root and data: URLs are "
                          "accepted (the server fetches nothing remote)", "unsupported_url")
    if parsed.netloc not in ("", "localhost"):
        raise bad_request(f"{kind} URL {url[:80]!r}: file URLs name a local path (file:///abs/path)", "unsupported_url")
    if media_root is None:
        raise bad_request(f"{kind} URL {url[:80]!r}: the server was started without --media-root, so it reads no "
                          "files; send the video inline as a data: URL", "media_outside_root")
    path = Path(unquote(parsed.path))
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise bad_request(f"{kind} {path}: no such file", "missing_video") from None
    except (OSError, RuntimeError) as e:  # a link loop, a folder that cannot be entered
        raise bad_request(f"{kind} {path}: cannot resolve the path ({e})", "unresolvable_path") from None
    if not real.is_relative_to(media_root):
        raise bad_request(f"{kind} {path}: outside the media root {media_root}", "media_outside_root")
    if not real.is_file():
        raise bad_request(f"{kind} {path}: not a regular file", "not_a_regular_file")
    try:
        return Blob(real.read_bytes(), str(path), real)
    except OSError as e:
        raise bad_request(f"{kind} {path}: cannot be read ({e.strerror})", "unreadable_container") from None


def _inline(url: str, kind: str) -> Blob:
    header, sep, payload = url.partition(",")
    mime = header[len("data:"):].split(";")[0]
    if not sep or not header.endswith(";base64"):
        raise bad_request(f"{kind} data URL: expected data:<type>;base64,<bytes>", "invalid_data_url")
    if not mime.startswith(kind + "/"):
        raise bad_request(f"{kind} data URL: MIME type {mime!r} is not a {kind} type", "invalid_data_url")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{kind} data URL: the payload is not valid base64", "invalid_data_url") from None
    if not data:
        raise bad_request(f"{kind} data URL: no bytes", "unreadable_container")
    return Blob(data, f"({mime} data URL)")


def video_frames(blob: Blob, sampling: VideoSampling) -> np.ndarray:
    """Decodes the sampled frames, uint8 (F, H, W, 3), as generation reads a video file."""
    if blob.path is not None:
        return _read(blob.path, blob.name, sampling)
    fd, tmp = tempfile.mkstemp(suffix=".video")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob.data)
        return _read(Path(tmp), blob.name, sampling)
    finally:
        os.unlink(tmp)


def _read(path: Path, name: str, sampling: VideoSampling) -> np.ndarray:
    try:
        return read_frames(path, sampling.num_frames, sampling.max_frames)
    except VideoDecodeError as e:
        raise bad_request(f"video {name}: {e.reason.replace(str(path), name)}", e.code) from None


def image_frame(blob: Blob) -> Image.Image:
    """One image part -> an RGB PIL image (one frame of the video the image parts make)."""
    try:
        with Image.open(io.BytesIO(blob.data)) as im:
            return im.convert("RGB")
    except UnidentifiedImageError:
        raise bad_request(f"image {blob.name}: not an image format PIL reads", "unreadable_image") from None
    except (OSError, ValueError) as e:  # a truncated or corrupt image
        raise bad_request(f"image {blob.name}: cannot be decoded ({e})", "unreadable_image") from None

