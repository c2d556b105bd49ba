"""Image preprocessing for classification fine-tuning, built from the model's own image processor.

No torchvision: transformers 5.x has a PIL/NumPy backend (`*ImageProcessorPil`) for most image
processors, and the augmentation here is PIL and NumPy only.

- `load_image_processor` loads a model's processor with the PIL backend.
- `EvalTransform` is the processor exactly as the model was trained with it (resize, center crop,
  rescale, normalize).
- `TrainTransform` replaces the processor's resize and crop by a random resized crop (the
  algorithm of torchvision's `RandomResizedCrop`, milder scale by default) and a random horizontal
  flip, then applies the processor's own rescale and normalize.

Both take a batch as `datasets.Dataset.with_transform` gives it (column -> list) and return
`{"pixel_values": FloatTensor[B, 3, H, W], "labels": LongTensor[B]}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import get_worker_info
from transformers import AutoImageProcessor
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BaseImageProcessor

Batch = Mapping[str, list[Any]]


def load_image_processor(name_or_path: str, **kwargs: Any) -> BaseImageProcessor:
    """Load the image processor of a model (hub id or folder) with its PIL backend, never torchvision."""
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, backend="pil", **kwargs)
    except ValueError as err:  # transformers found candidate classes but none it could import
        raise ValueError(f"Could not load a torchvision-free image processor for {name_or_path!r}: {err}") from err
    # With torchvision installed, transformers falls back to a torchvision-only class when the
    # model type has no PIL one: samtune does not depend on torchvision, so refuse it here.
    if isinstance(processor, TorchvisionBackend):
        raise ValueError(
            f"{name_or_path!r} uses {type(processor).__name__}, which has no PIL backend in "
            "transformers; samtune needs an image processor that works without torchvision. "
            "Pick a model whose processor has a `...ImageProcessorPil` variant."
        )
    return processor


def _field(size: Any, key: str) -> int | None:
    """Read one field of a processor size, which is a `SizeDict` in transformers 5.x or a dict."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def target_size(processor: BaseImageProcessor) -> tuple[int, int]:
    """The (height, width) of the images the processor hands to the model."""
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and _field(crop, "height") and _field(crop, "width"):
        return _field(crop, "height"), _field(crop, "width")
    size = processor.size
    if _field(size, "height") and _field(size, "width"):
        return _field(size, "height"), _field(size, "width")
    if _field(size, "shortest_edge"):
        # ConvNeXt-style processors crop (or warp) to a square of the shortest edge; for the rest
        # a square is the usual classification input.
        edge = _field(size, "shortest_edge")
        return edge, edge
    if _field(size, "max_height") and _field(size, "max_width"):
        return _field(size, "max_height"), _field(size, "max_width")
    raise ValueError(f"Cannot tell the output size of {type(processor).__name__} from size={size!r}.")


def image_problem(path: Path) -> str | None:
    """Why the image file at `path` cannot be used (it does not decode, or is over Pillow's decompression-bomb
    limit, `PIL.Image.MAX_IMAGE_PIXELS`); None when it can."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        text = str(e).strip().splitlines()
        return text[0] if text else type(e).__name__
    return None


def to_8_bits(image: Image.Image) -> Image.Image:
    """A high-bit-depth grey image as 8-bit grey ("L"), scaled rather than clipped; other images as they are.

    16-bit images (I;16, a 16-bit PNG) are divided by 257 (65535 -> 255). Images with no fixed range, floats (F)
    and 32-bit integers (I), map their own minimum to 0 and maximum to 255 (a constant one is black; NaN is
    the minimum, infinities the ends). Pillow's own conversion clips them at 255: almost all white.
    """
    if image.mode.startswith("I;16"):
        levels = np.asarray(image, dtype=np.float64) / 257
    elif image.mode in ("F", "I"):
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
        levels = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    else:
        return image
    return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def to_rgb(image: Any) -> Image.Image:
    """Convert an image (any PIL mode, or an array) to RGB, compositing transparency onto white; the one conversion
    training, evaluation and prediction share (high-bit-depth images scaled to 8 bits by `to_8_bits`)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = to_8_bits(image)
    if "A" in image.getbands() or "transparency" in image.info:
        # Same rule as transformers' convert_to_rgb: transparent pixels become white, not black.
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """A random (left, top, right, bottom) box, drawn as torchvision's RandomResizedCrop draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback after ten misses: the largest central crop whose aspect ratio is within `ratio`.
    if width / height < min(ratio):
        w, h = width, round(width / min(ratio))
    elif width / height > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class _Transform:
    """Shared part: read the columns of a batch, run the processor, collect the labels."""

    def __init__(
        self, processor: BaseImageProcessor, image_column: str = "image", label_column: str | None = "label"
    ) -> None:
        self.processor = processor
        self.image_column = image_column
        self.label_column = label_column  # None: no labels (prediction)

    def _images(self, batch: Batch) -> list[Image.Image]:
        if self.image_column not in batch:
            raise KeyError(f"image column {self.image_column!r} not in batch (columns: {sorted(batch)})")
        return [to_rgb(image) for image in batch[self.image_column]]

    def _output(self, batch: Batch, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pixel_values": pixel_values.float()}
        if self.label_column is not None:
            if self.label_column not in batch:
                raise KeyError(f"label column {self.label_column!r} not in batch (columns: {sorted(batch)})")
            labels = torch.as_tensor(batch[self.label_column])  # class ids, or float targets (regression)
            out["labels"] = labels.float() if labels.is_floating_point() else labels.long()
        return out


class EvalTransform(_Transform):
    """The processor's own preprocessing (resize, center crop, rescale, normalize) for a batch."""

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Turn a batch of images and labels into model inputs."""
        pixel_values = self.processor(self._images(batch), return_tensors="pt")["pixel_values"]
        return self._output(batch, pixel_values)


class TrainTransform(_Transform):
    """Random resized crop and horizontal flip, then the processor's rescale and normalize."""

    def __init__(
        self,
        processor: BaseImageProcessor,
        image_column: str = "image",
        label_column: str | None = "label",
        *,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        seed: int | None = None,
        index_column: str | None = None,
    ) -> None:
        super().__init__(processor, image_column, label_column)
        # With an index column, each example's draws come from (seed, epoch, index) alone: the same
        # whatever the batch order, prefetching or workers, so a resumed run augments as the
        # uninterrupted one did. `epoch` is set by the trainer at the start of each epoch.
        self.index_column = index_column
        self.epoch = 0
        self.size = target_size(processor)
        self.scale, self.ratio, self.flip_prob, self.seed = scale, ratio, flip_prob, seed
        self.resample = processor.resample if processor.resample is not None else Image.Resampling.BILINEAR
        self._rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    def _generator(self) -> np.random.Generator:
        # A DataLoader worker gets a copy of this object, RNG state included: without a re-seed
        # every worker (and every epoch, as workers are re-created) would draw the same crops.
        # torch gives each worker a seed that depends on the epoch's base seed and the worker id.
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            entropy = [info.seed] if self.seed is None else [self.seed, info.seed]
            self._rng = np.random.default_rng(entropy)
        return self._rng

    def augment(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """Randomly crop, resize to the target size and maybe flip one RGB image."""
        rng = rng if rng is not None else self._generator()
        box = random_resized_crop_box(image.width, image.height, rng, self.scale, self.ratio)
        height, width = self.size
        image = image.resize((width, height), resample=self.resample, box=box)
        if rng.random() < self.flip_prob:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Turn a batch of images and labels into augmented model inputs."""
        if self.index_column is not None and self.index_column in batch:
            rngs = [np.random.default_rng([self.seed or 0, self.epoch, int(i)]) for i in batch[self.index_column]]
            images = [self.augment(image, rng) for image, rng in zip(self._images(batch), rngs)]
        else:
            images = [self.augment(image) for image in self._images(batch)]
        # The images already have the target size: only rescale and normalize are left to do.
        pixel_values = self.processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")[
            "pixel_values"
        ]
        return self._output(batch, pixel_values)
