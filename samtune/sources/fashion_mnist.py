"""`source:fashion-mnist`: Zalando's Fashion-MNIST (MIT) from Debian's `dataset-fashion-mnist` package, as a
dataset samtune loads.

The package installs the original idx files (60,000 training and 10,000 test images, 28x28 grayscale,
10 classes) under /usr/share/datasets/fashion-mnist/ (`$SAMTUNE_FASHION_MNIST_DIR` points elsewhere). They are
read once, checked (magic numbers, sizes, labels in range: a truncated or damaged file is a data error naming
it) and saved with `save_to_disk`: splits `train` (the first 55,000 of the training file), `validation` (its
last 5,000: the file's order is already random) and `test` (the 10,000 test images), columns `image` (PNG) and
`label` (a ClassLabel with the 10 class names).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from samtune.errors import DataError, UsageError
from samtune.sources import Source, register_source

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
VALIDATION = 5000
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx: unsigned bytes, 3 dimensions / 1 dimension


def folder() -> Path:
    return Path(os.environ.get("SAMTUNE_FASHION_MNIST_DIR") or DEFAULT_DIR)


def _inputs() -> dict[str, Any]:
    where = folder()
    missing = [name for name in FILES.values() if not (where / name).is_file()]
    if missing:
        raise UsageError(
            f"Fashion-MNIST's files are not on this machine ({', '.join(missing)} missing in {where})",
            f"Install Debian's package: apt-get install {DEBIAN_PACKAGE} (`make quickstart-image` does it), "
            "or set SAMTUNE_FASHION_MNIST_DIR to a folder that holds the four idx files.",
        )
    version = _debian_version()
    return {
        "files": [where / name for name in FILES.values()],
        "package": f"Debian {DEBIAN_PACKAGE}" if version else None,
        "version": version,
        "license": "mit",
    }


def _debian_version() -> str | None:
    """The installed Debian package's version, read from dpkg's status file (None: not installed by dpkg)."""
    try:
        text = Path("/var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return None
    for stanza in text.split("\n\n"):
        if f"Package: {DEBIAN_PACKAGE}\n" in stanza + "\n":
            for line in stanza.splitlines():
                if line.startswith("Version: "):
                    return line.removeprefix("Version: ").strip()
    return None


def read_idx(path: Path, magic: int) -> Any:
    """An idx file's array (uint8), or a DataError naming the file and what is wrong with it."""

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"cannot read {path}: {e or type(e).__name__} (the file is truncated or damaged)",
            f"Reinstall it: apt-get install --reinstall {DEBIAN_PACKAGE}",
        ) from e
    dims = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * dims
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(
            f"{path} is not an idx file of {'images' if dims == 3 else 'labels'} (wrong magic number)",
            f"Reinstall it: apt-get install --reinstall {DEBIAN_PACKAGE}",
        )
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or damaged: its header announces {expected:,} bytes of data, it holds "
            f"{len(raw) - header:,}",
            f"Reinstall it: apt-get install --reinstall {DEBIAN_PACKAGE}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _png(image: Any) -> bytes:

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _split(images: Any, labels: Any, features: Any) -> Any:

    return datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(im), "path": None} for im in images], "label": labels.tolist()}, features=features
    )


def _build(inputs: dict[str, Any], out: Path) -> dict[str, Any]:

    files = dict(zip(FILES, (Path(p) for p in inputs["files"])))
    arrays = {
        key: read_idx(path, IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC) for key, path in files.items()
    }
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"{files[f'{part}_images']} holds {len(images):,} images but {files[f'{part}_labels']} "
                f"{len(labels):,} labels"
            )
        if labels.size and int(labels.max()) >= len(CLASSES):
            raise DataError(f"{files[f'{part}_labels']} holds label {int(labels.max())}: Fashion-MNIST has 10 classes")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    cut = max(len(train_images) - VALIDATION, len(train_images) // 2)
    splits = datasets.DatasetDict(
        train=_split(train_images[:cut], train_labels[:cut], features),
        validation=_split(train_images[cut:], train_labels[cut:], features),
        test=_split(arrays["test_images"], arrays["test_labels"], features),
    )
    splits.save_to_disk(str(out))
    return {
        "what": "Fashion-MNIST (Zalando), 28x28 grayscale, 10 classes",
        "package": inputs.get("package"),
        "version": inputs.get("version"),
        "license": inputs.get("license"),
        "splits": {name: len(ds) for name, ds in splits.items()},
    }


SOURCE = register_source(
    Source(
        name="fashion-mnist",
        kind="dataset",
        description=f"Fashion-MNIST, 70,000 28x28 clothing images in 10 classes, from Debian's {DEBIAN_PACKAGE} (MIT)",
        inputs=_inputs,
        build=_build,
    )
)
