"""SigLIP preprocessing equals transformers' SiglipImageProcessor and the original's fixtures."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import normalize as hf_normalize
from transformers.image_transforms import rescale as hf_rescale

from tlv_jax.data.preprocess import expand_to_square, normalize_frames, resize_frames, siglip_preprocess

try:  # transformers >= 5 without torchvision: the PIL backend is what `SiglipImageProcessor` resolves to
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Processor
except ImportError:  # older transformers
    from transformers import SiglipImageProcessor as Processor

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def hf(frames, size=384, mean=(0.5,) * 3, std=(0.5,) * 3, **kwargs) -> np.ndarray:
    """transformers' processor, frame by frame, channels-last."""
    proc = Processor(size={"height": size, "width": size}, resample=3, image_mean=list(mean), image_std=list(std))
    return np.stack([proc(f, return_tensors="np", **kwargs)["pixel_values"][0].transpose(1, 2, 0) for f in frames])


@pytest.fixture(scope="module")
def clip():
    return np.random.default_rng(0).integers(0, 256, (3, 45, 70, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["qwen2-group-f16", "phi-naive-f4"])
def test_fixture_raw_frames_become_pixel_values(fixtures_dir, name):
    ref = np.load(fixtures_dir / name / "reference.npz")
    size = json.loads((fixtures_dir / name / "tiny-siglip" / "preprocessor_config.json").read_text())["size"]["height"]
    pairs = [(ref["raw_frames"], ref["pixel_values"][0]), (ref["batch_raw_frames_1"], ref["batch_pixel_values_1"])]
    for raw, pixels in pairs:  # the fixtures are (F, 3, H, W); ours are channels-last
        ours = siglip_preprocess(raw.transpose(0, 2, 3, 1), size=size)
        assert ours.dtype == np.float32 and ours.shape == (len(raw), size, size, 3)
        np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), pixels, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size,mean,std", [(384, (0.5,) * 3, (0.5,) * 3), (56, CLIP_MEAN, CLIP_STD)])
def test_equals_siglip_image_processor(clip, size, mean, std):
    expected = hf(list(clip), size, mean, std)
    np.testing.assert_allclose(siglip_preprocess(clip, size, mean, std), expected, rtol=0, atol=1e-6)
    pil = [Image.fromarray(f) for f in clip]  # the PyAV/PIL path of the original
    np.testing.assert_allclose(siglip_preprocess(pil, size, mean, std), expected, rtol=0, atol=1e-6)


def test_float32_division_equals_the_processors_float64_rescale_for_every_value():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    for mean, std in [((0.5,) * 3, (0.5,) * 3), (CLIP_MEAN, CLIP_STD)]:
        expected = hf_normalize(hf_rescale(values[0], 1 / 255), mean, std)
        np.testing.assert_array_equal(normalize_frames(values, mean, std)[0], expected)


def test_resize_is_pil_bicubic_on_uint8(clip):
    got = resize_frames(clip, 56)
    assert got.dtype == np.uint8 and got.shape == (3, 56, 56, 3)
    for frame, ours in zip(clip, got):
        np.testing.assert_array_equal(ours, np.asarray(Image.fromarray(frame).resize((56, 56), Image.BICUBIC)))
    np.testing.assert_array_equal(resize_frames(clip, 56, num_threads=2), got)


def test_pad_is_the_originals_expand2square(clip):
    """expand2square: a canvas of the longer side filled with int(mean * 255), the frame pasted centred."""
    for frame in (clip[0], clip[0].transpose(1, 0, 2)):
        img = Image.fromarray(frame)
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), (127, 127, 127))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        np.testing.assert_array_equal(expand_to_square(frame, (127, 127, 127)), np.asarray(canvas))
        np.testing.assert_allclose(siglip_preprocess(frame[None], 56, aspect="pad"), hf([canvas], 56), atol=1e-6)


def test_dark_frame_quirk(clip):
    """The original's tensor path skips the /255 for frames whose max is <= 1; other frames are unaffected."""
    dark = (np.random.default_rng(1).random((1, 45, 70, 3)) < 0.5).astype(np.uint8)  # values 0 and 1
    frames = np.concatenate([clip[:1], dark])
    quirk = siglip_preprocess(frames, 56, dark_frame_quirk=True)
    np.testing.assert_allclose(quirk[0], hf(clip[:1], 56)[0], atol=1e-6)
    np.testing.assert_allclose(quirk[1], hf(dark, 56, do_rescale=False)[0], atol=1e-6)
    assert quirk[1].max() == 1.0
    np.testing.assert_allclose(siglip_preprocess(frames, 56), hf(frames, 56), atol=1e-6)  # off by default


def test_rejects_what_is_not_uint8_rgb(clip):
    with pytest.raises(ValueError, match="uint8"):
        siglip_preprocess(clip.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        siglip_preprocess(clip[..., :2])
    with pytest.raises(ValueError, match="aspect"):
        siglip_preprocess(clip, aspect="anyres")
