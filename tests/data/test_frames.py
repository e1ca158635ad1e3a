"""Frame sampling and reading: the original's index formulas, decord reading only the sampled frames,
the checked PyAV fallback (upright like decord for rotated videos), the Video-MME/MLVU PTS reader, MVBench jpg
folders, and real broken files, each reported with the reason it cannot be read."""

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from tlv_jax.data import frames
from tlv_jax.data.bad_samples import (DECODE_ERROR, MISSING_VIDEO, NO_VIDEO_STREAM, NOT_A_FILE, UNREADABLE_CONTAINER,
                                      UNRESOLVABLE_PATH, UNSUPPORTED_CODEC)
from tlv_jax.data.frames import (VideoDecodeError, VideoInfo, fps_count, index_pts, lvb_indices, mvbench_indices,
                                 pts_seek_indices, read_frame_files, read_frames, read_frames_at, read_frames_pts,
                                 sample_indices, uniform_indices, video_info)
from tlv_jax.data.synthetic import AWKWARD, BROKEN, write_broken_videos, write_video

NUM, FPS, H, W = 40, 10, 48, 64


def decode_all(path) -> np.ndarray:
    """Reference: every frame, decoded sequentially by PyAV (what the original's full decode keeps)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    clip = write_video(root / "clip.mp4", rng.integers(0, 256, (NUM, H, W, 3), dtype=np.uint8), fps=FPS)
    short = write_video(root / "short.mp4", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=FPS)
    return {"clip": clip, "short": short, "root": root, **write_broken_videos(root / "broken")}


# --- index formulas -------------------------------------------------------------------------------------------------

def test_uniform_indices_is_truncated_linspace_with_repeats():
    np.testing.assert_array_equal(uniform_indices(NUM, 16), np.linspace(0, NUM - 1, 16).astype(int))
    short = uniform_indices(5, 16)
    assert len(short) == 16 and short[0] == 0 and short[-1] == 4 and len(np.unique(short)) == 5
    with pytest.raises(ValueError):
        uniform_indices(0, 16)


def test_fps_count_floors_duration_at_least_one_and_caps():
    assert fps_count(0.4) == 1 and fps_count(37.9) == 37 and fps_count(37.9, 16) == 16 and fps_count(3.0, 64) == 3


def test_sample_indices_uniform_or_one_fps():
    info = VideoInfo(300, 30.0, 10.0)
    np.testing.assert_array_equal(sample_indices(info, 16), uniform_indices(300, 16))
    np.testing.assert_array_equal(sample_indices(info, -1), uniform_indices(300, 10))
    np.testing.assert_array_equal(sample_indices(info, -1, 4), uniform_indices(300, 4))
    with pytest.raises(ValueError):
        sample_indices(info, 0)


def test_pts_seek_indices_are_deduplicated_and_one_fps_capped():
    np.testing.assert_array_equal(pts_seek_indices(5, 16, 0.5, 16), np.arange(5))
    assert len(pts_seek_indices(3000, -1, 100.0, 64)) == 64 and len(pts_seek_indices(3000, -1, 7.9, 64)) == 7


def test_index_pts_matches_the_originals_numpy_expression():
    idx = pts_seek_indices(1000, 16, 0, 16)
    for time_base, rate in [(Fraction(1, 15360), 30.0), (Fraction(1001, 30000), 29.97), (Fraction(1, 90000), 23.976)]:
        original = (idx / time_base / rate).astype(int).tolist()  # object array of Fractions, then float, as upstream
        assert index_pts(idx, time_base, rate) == original


def test_lvb_indices():
    # total = int(30.5 * 30) = 915; 16 frames: step int(915 / 16) = 57; 1 fps: n = min(min(64, 30.5), 30) = 30, step 30
    np.testing.assert_array_equal(lvb_indices(30.5, 30.0, 16, 16), 57 * np.arange(16))
    np.testing.assert_array_equal(lvb_indices(30.5, 30.0, -1, 64), 30 * np.arange(30))
    with pytest.raises(ValueError):
        lvb_indices(0.5, 30.0, 16, 16)


def test_mvbench_indices_segment_centres_with_half_even_rounding():
    # whole clip, max_frame 99, 4 segments of 24.75: int(12.375 + round(24.75 k)) = 12, 37, 62 (round(49.5) = 50), 86
    np.testing.assert_array_equal(mvbench_indices(4, 30.0, 99), [12, 37, 62, 86])
    # bound 1-2 s at 30 fps: [30, 60], seg 7.5: int(33.75 + round(7.5 k)) = 33, 41, 48, 55 (round(22.5) = 22)
    np.testing.assert_array_equal(mvbench_indices(4, 30.0, 1000, (1.0, 2.0), first_idx=1), [33, 41, 48, 55])
    assert mvbench_indices(16, 3.0, 50, None, first_idx=1).min() >= 1


# --- read_frames ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "decord", "av"])
def test_read_frames_keeps_the_originals_frames(videos, backend):
    full = decode_all(videos["clip"])
    got = read_frames(videos["clip"], 16, backend=backend)
    assert got.dtype == np.uint8 and got.shape == (16, H, W, 3)
    np.testing.assert_array_equal(got, full[uniform_indices(NUM, 16)])
    one_fps = read_frames(videos["clip"], -1, backend=backend)  # 40 frames at 10 fps = 4 s
    np.testing.assert_array_equal(one_fps, full[uniform_indices(NUM, 4)])
    np.testing.assert_array_equal(read_frames(videos["clip"], -1, 3, backend=backend), full[uniform_indices(NUM, 3)])


def test_short_clip_repeats_frames(videos):
    got = read_frames(videos["short"], 16)
    np.testing.assert_array_equal(got, decode_all(videos["short"])[uniform_indices(5, 16)])


class WrappedReader:
    """A decord VideoReader whose get_batch a test overrides; the rest passes through."""

    def __init__(self, vr):
        self.vr = vr

    def __len__(self):
        return len(self.vr)

    def get_avg_fps(self):
        return self.vr.get_avg_fps()


def test_decord_is_asked_for_the_sampled_frames_only(videos, monkeypatch):
    asked = []
    real_open = frames._decord_open

    class Recording(WrappedReader):
        def get_batch(self, indices):
            asked.append(list(indices))
            return self.vr.get_batch(indices)

    monkeypatch.setattr(frames, "_decord_open", lambda path, threads: Recording(real_open(path, threads)))
    read_frames(videos["clip"], 8, backend="decord")
    assert asked == [uniform_indices(NUM, 8).tolist()]


def test_video_info(videos):
    for backend in ("auto", "decord", "av"):
        assert video_info(videos["clip"], backend=backend) == (NUM, FPS, NUM / FPS)


def test_read_frames_at_accepts_indices_or_a_function(videos):
    full = decode_all(videos["clip"])
    np.testing.assert_array_equal(read_frames_at(videos["clip"], [39, 0, 0, 7]), full[[39, 0, 0, 7]])
    np.testing.assert_array_equal(read_frames_at(videos["clip"], lambda info: [info.num_frames - 1]), full[[NUM - 1]])
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames_at(videos["clip"], [NUM])
    with pytest.raises(ZeroDivisionError):  # a bug in an index function is not reported as a bad video
        read_frames_at(videos["clip"], lambda info: [info.num_frames // 0])


def test_wrongly_shaped_decord_batch_falls_back_to_pyav(videos, monkeypatch):
    """What decord2 does for some widths: 4 channels. 'auto' must notice and use PyAV; 'decord' must refuse."""
    real_open = frames._decord_open

    class FourChannels(WrappedReader):
        def get_batch(self, indices):
            class Batch:
                def asnumpy(_):
                    rgb = self.vr.get_batch(indices).asnumpy()
                    return np.concatenate([rgb, rgb[..., :1]], axis=-1)
            return Batch()

    monkeypatch.setattr(frames, "_decord_open", lambda path, threads: FourChannels(real_open(path, threads)))
    with pytest.raises(VideoDecodeError, match=r"shape \(16, 48, 64, 4\)"):
        read_frames(videos["clip"], 16, backend="decord")
    np.testing.assert_array_equal(read_frames(videos["clip"], 16), decode_all(videos["clip"])[uniform_indices(NUM, 16)])


@pytest.mark.parametrize("name", BROKEN)
@pytest.mark.parametrize("backend", ["auto", "decord", "av"])
def test_broken_videos_raise_an_error_naming_the_file(videos, name, backend):
    path = videos[name]
    with pytest.raises(VideoDecodeError) as err:
        read_frames(path, 16, backend=backend)
    assert str(path) in str(err.value) and err.value.path == str(path) and isinstance(err.value, ValueError)
    if name == "truncated_faststart" and backend != "decord":
        assert video_info(path, backend=backend).num_frames == 12  # its index is intact; only decoding fails
    else:
        with pytest.raises(VideoDecodeError, match=str(path)):
            video_info(path, backend=backend)


BROKEN_CODES = {"missing": MISSING_VIDEO, "empty": UNREADABLE_CONTAINER, "truncated": UNREADABLE_CONTAINER,
                "truncated_faststart": DECODE_ERROR, "random_bytes": UNREADABLE_CONTAINER, "directory": NOT_A_FILE,
                "symlink_loop": UNRESOLVABLE_PATH, "audio_only": NO_VIDEO_STREAM, "unknown_codec": UNSUPPORTED_CODEC}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_videos_say_why_they_cannot_be_read(videos, name):
    assert set(BROKEN_CODES) == set(BROKEN)
    with pytest.raises(VideoDecodeError) as err:
        read_frames(videos[name], 16)
    assert err.value.code == BROKEN_CODES[name], err.value


@pytest.mark.parametrize("name, message", [("missing", r"missing \(no such file\)"),
                                           ("directory", r"not a regular file \(a directory\)"),
                                           ("symlink_loop", "cannot resolve the path")])
def test_a_path_that_is_not_a_readable_file_is_named_for_what_it_is(videos, name, message):
    """`Path.exists()` is False for a symlink loop and True for a folder: neither is 'missing'."""
    with pytest.raises(VideoDecodeError, match=message):
        frames.check_file(videos[name])


def test_truncated_mp4_is_reported_as_unreadable(videos):
    assert videos["truncated"].stat().st_size > 0
    with pytest.raises(VideoDecodeError, match="decord.*PyAV"):  # both backends tried, both reasons kept
        read_frames(videos["truncated"])
    # PyAV 18 returns the frames before the cut (we count them), PyAV 15 (what lmms-eval pins) raises mid-stream:
    # either way one error naming the file.
    with pytest.raises(VideoDecodeError, match="truncated_faststart.mp4.*(truncated or corrupt: decoded [0-9]+ of "
                                               "12 frames|Invalid data)"):
        read_frames(videos["truncated_faststart"], backend="av")


def test_av1_is_read_through_the_pyav_fallback(videos):
    if "av1" not in videos:
        pytest.skip("PyAV has no AV1 encoder here")
    with pytest.raises(VideoDecodeError, match="decord"):
        read_frames(videos["av1"], 8, backend="decord")
    got = read_frames(videos["av1"], 8)
    assert got.shape == (8, 32, 48, 3)
    np.testing.assert_array_equal(got, decode_all(videos["av1"])[uniform_indices(12, 8)])


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotated_video_is_upright_from_decord_and_from_the_pyav_fallback(tmp_path, degrees):
    """decord turns frames by the display matrix's quarter turn (counter-clockwise degrees); the fallback does the
    same. At 180 decord 0.6 fails, so only the fallback reads the file. (32 x 48: decord's turn also fails for some
    small sizes, 48 x 64 among them, which the fallback then reads.)"""
    h, w = 32, 48
    clip = np.zeros((6, h, w, 3), np.uint8)
    clip[:, :8, :8] = (255, 0, 0)  # a red block at the stored top left
    path = write_video(tmp_path / "turned.mp4", clip, rotation=degrees)
    upright = read_frames(path, 4, backend="av")
    np.testing.assert_array_equal(upright, np.rot90(decode_all(path), degrees // 90, axes=(1, 2))[[0, 1, 3, 5]])
    corner = {90: (-1, 0), -90: (0, -1), 180: (-1, -1)}[degrees]  # where the stored top left is shown
    assert upright.shape == ((4, w, h, 3) if degrees % 180 else (4, h, w, 3))
    assert upright[0, corner[0], corner[1], 0] > 200 and upright[0, -1 - corner[0], -1 - corner[1], 0] < 50
    if degrees % 180:
        np.testing.assert_array_equal(read_frames(path, 4, backend="decord"), upright)
    else:
        with pytest.raises(VideoDecodeError, match="decord"):
            read_frames(path, 4, backend="decord")
    np.testing.assert_array_equal(read_frames(path, 4), upright)


def test_odd_width_video_decodes(videos):
    assert "odd_width" in AWKWARD
    got = read_frames(videos["odd_width"], 16)
    assert got.shape == (16, 24, 33, 3)
    np.testing.assert_array_equal(got, decode_all(videos["odd_width"])[uniform_indices(12, 16)])


# --- Video-MME / MLVU PTS reader --------------------------------------------------------------------------------------

def test_read_frames_pts_constant_rate(videos):
    full = decode_all(videos["clip"])
    np.testing.assert_array_equal(read_frames_pts(videos["clip"], 16, 16), full[pts_seek_indices(NUM, 16, 4.0, 16)])
    np.testing.assert_array_equal(read_frames_pts(videos["clip"], -1, 16), full[uniform_indices(NUM, 4)])
    assert read_frames_pts(videos["short"], 16, 16).shape[0] == 5  # deduplicated


def test_read_frames_pts_variable_rate_uses_the_naive_branch(tmp_path):
    """VFR (average_rate != base_rate): sequential decode keeping decode indices in the linspace; its 1 fps count uses
    stream.duration in time-base units, i.e. max_frames (the original's bug)."""
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (20, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for t, pts in enumerate(np.cumsum([0] + [50 if i % 3 else 150 for i in range(19)])):
            frame = av.VideoFrame.from_ndarray(clip[t], format="rgb24")
            frame.pts, frame.time_base = int(pts), Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode())
    with av.open(str(path)) as c:
        assert c.streams.video[0].average_rate != c.streams.video[0].base_rate
    full = decode_all(path)
    np.testing.assert_array_equal(read_frames_pts(path, 8, 16), full[uniform_indices(20, 8)])
    np.testing.assert_array_equal(read_frames_pts(path, -1, 6), full[uniform_indices(20, 6)])


@pytest.mark.parametrize("name", BROKEN)
def test_read_frames_pts_broken(videos, name):
    with pytest.raises(VideoDecodeError, match=str(videos[name])):
        read_frames_pts(videos[name])


# --- MVBench jpg folders ----------------------------------------------------------------------------------------------

def test_read_frame_files(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(1, 11):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    idx = mvbench_indices(4, 3.0, 10, None, first_idx=1)
    expected = np.stack([np.asarray(Image.open(tmp_path / f"{i:05d}.jpg").convert("RGB")) for i in idx])
    np.testing.assert_array_equal(read_frame_files(tmp_path, idx), expected)
    with pytest.raises(VideoDecodeError, match="00011.jpg"):
        read_frame_files(tmp_path, [1, 11])
    with pytest.raises(VideoDecodeError, match="missing"):
        read_frame_files(tmp_path / "nope", [1])
