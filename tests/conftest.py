"""Offline fixtures: tiny models saved as Hugging Face folders, and small learnable datasets on disk."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TESTS = Path(__file__).parent
SUPPORT = TESTS / "support"  # tiny.py, the subprocess workers and drivers, the shared helpers


def pythonpath(*first: Path | str) -> str:
    """PYTHONPATH for a test's subprocess: `first`, then tests/support/, tests/ and this checkout's root, so that the
    subprocess imports the samtune under test rather than an installed one (an editable install may point at another
    tree)."""
    return os.pathsep.join(str(p) for p in (*first, SUPPORT, TESTS, TESTS.parent))


os.environ["COLUMNS"] = "200"  # rich wraps at the terminal width; keep messages on one line for asserts
CHECKOUT = Path(__file__).resolve().parent.parent

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
FILLER = ["the", "film", "movie", "was", "a", "plot", "story", "really", "quite", "and", "acting", "very"]


def _sentence(rng: random.Random, polar: list[str]) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(polar)]
    rng.shuffle(words)
    return " ".join(words)


def text_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Sentences whose label is given by one sentiment word among filler: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        rows.append({"text": _sentence(rng, POSITIVE if positive else NEGATIVE), "label": "pos" if positive else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def card_example(run_dir: Path) -> str:
    """The Python code of a run's card ("How to use"), pointed at the run directory."""
    card = (Path(run_dir) / "README.md").read_text()
    return (
        card.split("## How to use")[1]
        .split("```python\n")[1]
        .split("```")[0]
        .replace("PATH_TO_THIS_FOLDER", str(run_dir))
    )


def run_card_example(run_dir: Path, **replace: str) -> list:
    """Run the card's example as a user would (after `replace`: old=new text); what it printed."""
    code = card_example(run_dir)
    for old, new in replace.items():
        code = code.replace(old, new)
    printed: list = []
    exec(code, {"print": printed.append})
    return printed


def measure_sharpness(run_dir: Path) -> dict:
    """`samtune sharpness` on a run, small; its report (the loss at w is the landscape's middle point)."""
    from typer.testing import CliRunner

    from samtune.cli import app

    measured = CliRunner().invoke(
        app, ["sharpness", str(run_dir), "--batches", "2", "--batch-size", "8", "--grid", "3", "--samples", "2"]
    )
    assert measured.exit_code == 0, measured.output
    report = json.loads((Path(run_dir) / "sharpness.json").read_text())
    assert report["loss"] > 0 and report["landscape"]["loss_1d"][1] == pytest.approx(report["loss"], rel=1e-6)
    return report


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(POSITIVE + NEGATIVE + FILLER)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier and its tokenizer, saved as a model folder."""
    from tiny import tiny_bert

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _tokenizer()
    tiny_bert(vocab_size=len(tokenizer), num_labels=2, hidden_dropout_prob=0.1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CAUSAL_WORDS = [*FILLER, *POSITIVE, *NEGATIVE, "review", "sentiment", ":", ".", "positive", "negative"]


def causal_tokenizer():
    """A word-level tokenizer for a causal LM: no template, an end-of-text token that also pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "[UNK]", *sorted(set(CAUSAL_WORDS))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def causal_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 and its word-level tokenizer, saved as a model folder."""
    from tiny import tiny_gpt2

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = causal_tokenizer()
    tiny_gpt2(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def review_texts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short reviews ('the film was good .'), and as prompt/response pairs: the review, then its sentiment."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        review = _sentence(rng, POSITIVE if positive else NEGATIVE) + " ."
        rows.append(
            {
                "text": review,
                "prompt": f"review : {review} sentiment :",
                "response": "positive" if positive else "negative",
            }
        )
    return rows


@pytest.fixture(scope="session")
def image_model_dir(tmp_path_factory) -> Path:
    """A tiny ViT classifier and its torchvision-free image processor, saved as a model folder."""
    from tiny import tiny_vit
    from transformers import ViTImageProcessorPil

    path = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit(num_labels=2).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


@pytest.fixture
def text_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "reviews.csv", text_examples(80))


@pytest.fixture
def pair_jsonl(tmp_path) -> Path:
    """Sentence pairs: label 'same' when both carry the same sentiment."""
    rng = random.Random(1)
    path = tmp_path / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(80):
            a_pos, same = rng.random() < 0.5, i % 2 == 0
            b_pos = a_pos if same else not a_pos
            row = {
                "sentence1": _sentence(rng, POSITIVE if a_pos else NEGATIVE),
                "sentence2": _sentence(rng, POSITIVE if b_pos else NEGATIVE),
                "label": "same" if same else "different",
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Class sub-folders of small PNGs: reddish squares vs bluish squares."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "shapes"
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 80, (20, 20, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(170, 255, (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def sam_sgd_trainer(
    tmp_path: Path, model, rows: list, batch_size: int, accumulation: int, n_steps: int, rho: float, lr: float
):
    """A SAMTrainer with the paper's SAM over plain SGD (constant rate, no clipping, no decay, rows in order), trained:
    the setting tests/support/tiny.py's reference_sam_sgd follows step for step."""
    from tiny import ListDataset

    from samtune import SAMArguments, SAMTrainer

    args = SAMArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        sam_variant="sam",
        schedule="constant",
        start=0.0,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=n_steps,
        learning_rate=lr,
        rho=rho,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        train_sampling_strategy="sequential",
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.train()
    return trainer


def sam_and_reference(
    tmp_path: Path,
    model,
    rows: list,
    batch_size: int,
    accumulation: int,
    reference=None,
    n_steps: int = 3,
    rho: float = 0.05,
    lr: float = 0.5,
):
    """`model` trained by the SAMTrainer (paper's SAM over plain SGD, rows in order) and by the hand-written
    `reference` loop (default: tests/support/tiny.py's reference_sam_sgd) on the same micro-batches; also the reference
    without the climb (rho 0). Returns (trained, reference, no_climb, micro-batches)."""
    import copy

    from tiny import micro_batches, reference_sam_sgd

    reference = reference or reference_sam_sgd
    batches = micro_batches(rows, batch_size)
    steps = [batches[i * accumulation : (i + 1) * accumulation] for i in range(n_steps)]
    trainer = sam_sgd_trainer(tmp_path, copy.deepcopy(model), rows, batch_size, accumulation, n_steps, rho, lr)
    return trainer.model, reference(model, steps, rho, lr), reference(model, steps, 0.0, lr), batches
