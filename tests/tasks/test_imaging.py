"""Image transforms built from a model's own (PIL-backend) image processor, without torchvision."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, ConvNextImageProcessorPil, ViTImageProcessorPil

from samtune import imaging
from samtune.imaging import (
    EvalTransform,
    TrainTransform,
    load_image_processor,
    random_resized_crop_box,
    target_size,
)

# Not ViT's default 0.5/0.5, so that a wrong mean or std cannot pass by accident.
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _processor(**kw) -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=MEAN, image_std=STD, **kw)


def _noise(height: int = 20, width: int = 28, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _gradient(size: int = 16) -> Image.Image:
    """A left-to-right grey ramp: column j has value 10 * j, so mirroring it is visible."""
    row = (np.arange(size) * 10).astype(np.uint8)
    return Image.fromarray(np.tile(row, (size, 1))).convert("RGB")


def _batch(images: list[Image.Image]) -> dict[str, list]:
    return {"image": images, "label": list(range(len(images)))}


def test_processor_saved_and_reloaded_loads_without_torchvision(tmp_path):
    _processor().save_pretrained(tmp_path)
    processor = load_image_processor(str(tmp_path))
    assert isinstance(processor, ViTImageProcessorPil)
    assert target_size(processor) == (16, 16)
    batch = _batch([_noise()])
    torch.testing.assert_close(EvalTransform(processor)(batch), EvalTransform(_processor())(batch))


def test_processor_with_no_pil_backend_is_refused_clearly(tmp_path):
    # SAM 2's image processor exists only as a torchvision class in transformers 5.x.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Sam2ImageProcessor"}))
    with pytest.raises(ValueError, match="torchvision-free"):
        load_image_processor(str(tmp_path))


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        (ViTImageProcessorPil(size={"height": 12, "width": 16}), (12, 16)),
        (ConvNextImageProcessorPil(size={"shortest_edge": 16}), (16, 16)),
        (CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}), (16, 16)),
    ],
    ids=["height-width", "shortest-edge", "shortest-edge-then-crop"],
)
def test_both_transforms_give_the_processors_target_size(processor, expected):
    assert target_size(processor) == expected
    batch = _batch([_noise(), _noise(40, 24, seed=1)])
    for transform in (EvalTransform(processor), TrainTransform(processor, seed=0)):
        out = transform(batch)
        assert out["pixel_values"].shape == (2, 3, *expected)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_any_image_mode_becomes_three_float_channels_and_labels_pass_through(mode):
    batch = {"img": [_noise().convert(mode)] * 3, "y": [4, 0, 7]}
    for transform in (
        EvalTransform(_processor(), image_column="img", label_column="y"),
        TrainTransform(_processor(), image_column="img", label_column="y", seed=0),
    ):
        out = transform(batch)
        assert out["pixel_values"].shape == (3, 3, 16, 16)
        assert out["pixel_values"].dtype == torch.float32
        assert out["labels"].dtype == torch.long
        assert out["labels"].tolist() == [4, 0, 7]


def test_eval_transform_is_the_processors_own_output():
    processor = _processor()
    images = [_noise(), _noise(40, 24, seed=1)]
    expected = processor(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(EvalTransform(processor)(_batch(images))["pixel_values"], expected)


def test_constant_colour_maps_to_hand_computed_normalisation():
    colour = (200, 100, 50)
    image = Image.new("RGB", (30, 20), colour)
    # Resizing or cropping a constant image leaves it constant, so both transforms must give
    # (v / 255 - mean) / std in every pixel of each channel.
    expected = (torch.tensor(colour) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    for transform in (EvalTransform(_processor()), TrainTransform(_processor(), seed=0)):
        pixels = transform(_batch([image] * 4))["pixel_values"]
        torch.testing.assert_close(pixels, expected.view(1, 3, 1, 1).expand_as(pixels), rtol=0, atol=1e-5)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    pixels = EvalTransform(_processor())(_batch([image]))["pixel_values"]
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(pixels[0, :, 0, 0], white)


def test_train_transform_is_reproducible_with_a_seed_and_varies_across_seeds():
    batch = _batch([_noise(seed=i) for i in range(4)])
    first = TrainTransform(_processor(), seed=1)(batch)["pixel_values"]
    again = TrainTransform(_processor(), seed=1)(batch)["pixel_values"]
    other = TrainTransform(_processor(), seed=2)(batch)["pixel_values"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    # Random across calls too: the second epoch does not repeat the first epoch's crops.
    transform = TrainTransform(_processor(), seed=1)
    assert not torch.equal(transform(batch)["pixel_values"], transform(batch)["pixel_values"])


def test_flip_mirrors_the_full_image_about_half_the_time():
    # Scale and ratio fixed at 1 on a 16x16 image crop the whole image, so the only randomness
    # left is the flip: every output is the processed image or exactly its mirror.
    image = _gradient(16)
    n = 200
    plain = EvalTransform(_processor())(_batch([image]))["pixel_values"][0]
    mirrored = plain.flip(-1)
    transform = TrainTransform(_processor(), scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    pixels = transform(_batch([image] * n))["pixel_values"]
    flipped = [torch.equal(p, mirrored) for p in pixels]
    assert all(f or torch.equal(p, plain) for f, p in zip(flipped, pixels))
    # Binomial(200, 1/2) has standard deviation ~7: 60..140 is more than 5 sigma either side.
    assert 60 < sum(flipped) < 140


def test_crop_box_stays_inside_the_image_and_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    width, height = 40, 30
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(width, height, rng, (0.5, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        # Rounding w and h to whole pixels moves area and ratio a little past the bounds.
        assert 0.5 * width * height * 0.9 <= w * h <= width * height
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_dataloader_workers_draw_different_crops(monkeypatch):
    # A worker process receives a copy of the transform; each must re-seed from its own torch seed.
    batch = _batch([_noise()] * 4)

    def in_worker(seed: int):
        info = SimpleNamespace(id=0, num_workers=2, seed=seed)  # what torch's get_worker_info() gives
        monkeypatch.setattr(imaging, "get_worker_info", lambda: info)
        return TrainTransform(_processor(), seed=0)(batch)["pixel_values"]

    torch.testing.assert_close(in_worker(11), in_worker(11), rtol=0, atol=0)
    assert not torch.equal(in_worker(11), in_worker(12))


def test_missing_column_names_the_column():
    with pytest.raises(KeyError, match="'pixels'"):
        EvalTransform(_processor(), image_column="pixels")(_batch([_noise()]))
    with pytest.raises(KeyError, match="'target'"):
        TrainTransform(_processor(), label_column="target", seed=0)(_batch([_noise()]))


def _grey_ramp() -> np.ndarray:
    """Every 8-bit grey level once, as a 16x16 image (0 in a corner, 255 in the opposite one)."""
    return np.arange(256, dtype=np.uint8).reshape(16, 16)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    grey = _grey_ramp()
    # v * 257 is v's 16-bit equivalent (65535 = 255 * 257): scaled back it must give v exactly.
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    deep = Image.open(tmp_path / "deep.png")
    assert deep.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(imaging.to_rgb(deep)), np.asarray(Image.fromarray(grey).convert("RGB")))
    for transform in (
        EvalTransform(_processor()),
        TrainTransform(_processor(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, seed=0),
    ):
        expected = transform(_batch([Image.fromarray(grey)]))["pixel_values"]
        torch.testing.assert_close(transform(_batch([deep]))["pixel_values"], expected, rtol=0, atol=0)


def test_float_image_is_scaled_by_its_own_range(tmp_path):
    grey = _grey_ramp()
    # A float image in [1000, 2020]: its minimum maps to 0 and its maximum to 255, so 1000 + 4 v gives v back
    # ((4 v) / 1020 * 255 = v, up to float rounding far below the 0.5 that would change the rounded level).
    Image.fromarray(1000.0 + 4.0 * grey.astype(np.float32)).save(tmp_path / "float.tiff")
    floating = Image.open(tmp_path / "float.tiff")
    assert floating.mode == "F"
    expected = np.asarray(Image.fromarray(grey).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(imaging.to_rgb(floating)), expected)
    constant = Image.fromarray(np.full((4, 4), 7.5, dtype=np.float32))
    assert np.asarray(imaging.to_rgb(constant)).max() == 0  # no range: black, not a division by zero
