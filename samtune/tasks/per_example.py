"""Tasks with one prediction per example, from a text (or a pair of texts) or an image: a sequence or image
classifier's head, for classes, several labels, or a number. Their family modules (classification, multi_label,
regression) each register a text and an image task; what depends on the modality is here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from samtune.errors import DataError, UsageError
from samtune.tasks.base import PredictSettings, Task
from samtune.tasks.columns import (
    COMBINED_LABELS,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    LABELS,
    PAIR_COLUMNS,
    TEXT_COLUMNS,
    by_content,
    pick,
)

if TYPE_CHECKING:
    from datasets import Dataset

INDEX = "__samtune_index"  # each training image's row, for augmentation that resumes exactly


def example_columns(
    columns: list[str], features: Any, data: Any, want: str | None, rows: Dataset | None = None
) -> dict[str, Any]:
    """Which columns hold the label, and the text (and its pair) or the image (`want`: the modality, None: either).

    Names decide first (the recipe's, then the usual ones: `label`, `text`, ...). Where they do not, and `rows`
    (the train split) is given, the values do (`by_content`); the columns so picked are listed under "picked".
    """
    from datasets import Image

    explicit = COMBINED_LABELS if data.label_columns else data.label_column
    label = pick(columns, explicit, LABEL_COLUMNS, "labels", "data.label_column")
    image_candidates = tuple(c for c in columns if isinstance(features.get(c), Image)) or IMAGE_COLUMNS
    image = None
    if want != "text":
        image = pick(columns, data.image_column, image_candidates, "images", "data.image_column")
    picked: dict[str, str] = {}  # data.<key>_column -> the column chosen by its values
    if label is None and rows is not None:
        text_named = data.text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
        label = by_content(rows, columns, "label", exclude=(image, text_named))
        if label is not None:
            picked["label"] = label
    if label is None:
        raise DataError(
            f"no label column found (columns: {', '.join(columns)})",
            "Name it with data.label_column=COLUMN (samtune looks for 'label' or 'labels', then for one column "
            "whose values repeat: none does here).",
        )
    if image is not None or want == "image":
        if image is None:
            raise DataError(
                f"no image column found (columns: {', '.join(columns)})",
                "Name it with data.image_column=COLUMN (samtune looks for 'image' or 'img').",
            )
        return {"label": label, "image": image, "text": None, "pair": None, "picked": picked}

    text = pick(columns, data.text_column, TEXT_COLUMNS, "text", "data.text_column")
    if (
        text is None
        and rows is not None
        and not data.text_pair_column
        and not any(all(c in columns for c in pair) for pair in PAIR_COLUMNS)
    ):
        text = by_content(rows, columns, "text", exclude=(label,))
        if text is not None:
            picked["text"] = text
    pair = data.text_pair_column
    if pair is not None and pair not in columns:
        raise DataError(
            f"data.text_pair_column is '{pair}', but the data has no such column (columns: {', '.join(columns)})"
        )
    if data.text_column is None and pair is None:
        pairs = [p for p in PAIR_COLUMNS if all(c in columns for c in p)]
        if pairs and (text is None or text in pairs[0]):
            text, pair = pairs[0]
    if text is None:
        raise DataError(
            f"no text column found (columns: {', '.join(columns)})",
            "Name it with data.text_column=COLUMN (and data.text_pair_column=COLUMN for sentence pairs); "
            "samtune looks for 'text', 'sentence' and pairs such as sentence1/sentence2, then for one column of "
            "mostly distinct sentences.",
        )
    return {"label": label, "image": None, "text": text, "pair": pair, "picked": picked}


def tokenize_split(ds: Any, tokenizer: Any, text_column: str, pair_column: str | None, max_length: int) -> Any:
    """One split as token ids (padding is left to the collator), the label kept."""

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        args = [batch[text_column]] + ([batch[pair_column]] if pair_column else [])
        return tokenizer(*args, truncation=True, max_length=max_length)

    drop = [c for c in ds.column_names if c != "labels"]
    return ds.map(encode, batched=True, remove_columns=drop, desc="Tokenizing")


def probability_names(labels: list[str]) -> list[str]:
    """`samtune predict`'s columns of each class's probability."""
    return [f"prob_{label}" for label in labels]


def logit_matrix(outputs: Any, labels: list[str]) -> Any:
    """`samtune predict`'s outputs of a per-example model (a row of logits per example) as one matrix."""
    import numpy as np

    return np.asarray(outputs).reshape(-1, max(len(labels), 1))


def add_probabilities(table: Any, probs: Any, labels: list[str]) -> None:
    """Each class's probability, in its `probability_names` column (in place)."""
    for j, name in enumerate(probability_names(labels)):
        table[name] = probs[:, j]


class PerExampleTask(Task):
    """A class, several labels or a number per example, from a text or an image."""

    predicts = True

    def claims_problem_type(self, problem_type: str | None) -> bool:
        return self.fallback or problem_type == self.problem_type

    def columns(self, names: list[str], features: Any, section: Any, rows: Any = None) -> dict[str, Any]:
        return example_columns(names, features, section, self.modality, rows)

    @property
    def lora_task_type(self) -> str | None:  # type: ignore[override]
        return "SEQ_CLS" if self.modality == "text" else None  # peft has no image-classification task type

    def load_processor(self, path: str, section: Any) -> Any:
        if self.modality == "image":
            from samtune.imaging import load_image_processor

            size = section.image_size  # a run's saved processor already has it
            resize = {"size": {"height": size, "width": size}} if size else {}
            return load_image_processor(path, revision=section.revision, **resize)
        from samtune.modeling import load_tokenizer

        tokenizer = load_tokenizer(path, section)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:  # GPT-2-like, as a classifier
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def prepare_model(self, model: Any, processor: Any) -> None:
        """A text model's pad token; for images, one forward of a blank image at the processor's size, so a size the
        model does not take (model.image_size) is a usage error now, not a crash at the first step."""
        super().prepare_model(model, processor)
        if self.modality != "image":
            return
        import torch

        from samtune.imaging import target_size

        height, width = target_size(processor)
        training = model.training
        model.eval()  # batch-norm statistics untouched
        try:
            with torch.no_grad():
                model(pixel_values=torch.zeros(1, 3, height, width, dtype=model.dtype, device=model.device))
        except (RuntimeError, ValueError) as e:
            raise UsageError(
                f"the model does not take {height}x{width} images: {str(e).splitlines()[0]}",
                "Set model.image_size to a size the model takes (a convolutional model with stride 32: a multiple "
                "of 32), or leave it out for the image processor's own size.",
            ) from e
        finally:
            model.train(training)

    def auto_class(self) -> Any:
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        return AutoModelForImageClassification if self.modality == "image" else AutoModelForSequenceClassification

    def train_inputs(self, data: Any, processor: Any, max_length: int, seed: int, packing: bool) -> tuple[Any, Any]:
        """Text tokenised; images augmented (seeded per epoch and example: the augmentation is told each epoch)."""
        if self.modality == "text":
            return super().train_inputs(data, processor, max_length, seed, packing)
        from samtune.imaging import TrainTransform

        augment = TrainTransform(
            processor, image_column=data.image_column, label_column=LABELS, seed=seed, index_column=INDEX
        )
        return data.train.add_column(INDEX, list(range(len(data.train)))).with_transform(augment), augment

    def eval_inputs(self, ds: Any, processor: Any, columns: dict[str, Any], max_length: int) -> Any:
        """Tokenized text, or images resized by the model's own processor."""
        if self.modality == "text":
            return tokenize_split(ds, processor, columns["text"], columns["pair"], max_length)
        from samtune.imaging import EvalTransform

        return ds.with_transform(EvalTransform(processor, image_column=columns["image"], label_column=LABELS))

    def collator(self, processor: Any) -> Any:
        """Dynamic padding for text; the default stacking for images."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processor) if self.modality == "text" else None

    def input_columns(self, rows: Any, section: Any) -> dict[str, str]:
        """The columns of `read_inputs`' rows that hold the text (and its pair) or the image, as the run's data
        section names them, else by their usual names."""
        from samtune.predict import input_column

        if self.modality == "image":
            return {"image": input_column(rows, section.image_column, IMAGE_COLUMNS, "image", "data.image_column")}
        columns = {"text": input_column(rows, section.text_column, TEXT_COLUMNS, "text", "data.text_column")}
        if section.text_pair_column:
            columns["pair"] = input_column(rows, section.text_pair_column, (), "second text", "data.text_pair_column")
        return columns

    def batch_inputs(self, processor: Any, batch: dict[str, list], columns: dict[str, str], max_length: int) -> Any:
        """A batch of `read_inputs`' rows as the model's input tensors."""
        if self.modality == "image":
            from samtune.imaging import to_rgb

            return processor([to_rgb(im) for im in batch[columns["image"]]], return_tensors="pt")
        texts = [str(t) if t is not None else "" for t in batch[columns["text"]]]
        pair = [[str(t) if t is not None else "" for t in batch[columns["pair"]]]] if "pair" in columns else []
        return processor(texts, *pair, truncation=True, max_length=max_length, padding=True, return_tensors="pt")

    def predict_batch(self, model: Any, processor: Any, batch: dict[str, list], how: PredictSettings) -> list:
        """Each example's logits (a row of floats)."""
        inputs = self.batch_inputs(processor, batch, how.columns, how.max_length)
        logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits
        return list(logits.float().cpu().numpy())
