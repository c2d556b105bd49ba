"""Token classification (NER-style): a tag per word, on its first sub-word token; text only.

Detected from rows that hold a list of words (`tokens`/`words`) and a list of tags, or a model whose
architecture is a `...ForTokenClassification`. Scored at the entity level by seqeval.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import DataError, UsageError
from samtune.tasks.base import Metric, PredictSettings, Task, model_outputs, register
from samtune.tasks.columns import LABELS, TEXT_COLUMNS, is_list_column, list_item_names, pick

if TYPE_CHECKING:
    from datasets import Dataset

    from samtune.recipe import DataSection

TOKEN_CLASSIFICATION = "token-classification"
WORD_COLUMNS = ("tokens", "words")  # a list of words per row ...
TAG_COLUMNS = ("ner_tags", "tags", "labels", "label")  # ... and a list of tags, one per word (conll-style names)


def _word_columns(columns: list[str], data: DataSection) -> dict[str, str | None]:
    """Token classification: the column of words (data.text_column) and of their tags (data.label_column)."""
    words = pick(columns, data.text_column, WORD_COLUMNS, "words", "data.text_column")
    tags = pick(columns, data.label_column, TAG_COLUMNS, "tags", "data.label_column")
    if words is None or tags is None:
        what, key, looked = (
            ("words", "text_column", WORD_COLUMNS) if words is None else ("tags", "label_column", TAG_COLUMNS)
        )
        raise DataError(
            f"token classification: no column of {what} found (columns: {', '.join(columns)})",
            f"Name it with data.{key}=COLUMN (samtune looks for {', '.join(repr(c) for c in looked)}); "
            "each row holds a list of words and a list of tags, one per word.",
        )
    return {"label": tags, "image": None, "text": words, "pair": None}


def holds_word_lists(ds: Dataset, data: DataSection) -> bool:
    """Whether the data looks like token classification: a words column (data.text_column, else 'tokens' or
    'words') that holds lists of strings."""
    column = data.text_column or next((c for c in WORD_COLUMNS if c in ds.column_names), None)
    if column is None or column not in ds.column_names or not is_list_column(ds, column):
        return False
    item = ds.features[column].feature
    return getattr(item, "dtype", None) in ("string", "large_string")


# ---- labels -------------------------------------------------------------------------------


def _tag_names(ds: Dataset, column: str) -> list[str]:
    """The tag set of a words-and-tags split: a ClassLabel's names, else every tag seen (whole numbers in
    numeric order, text sorted)."""
    _, class_names = list_item_names(ds, column)
    if class_names is not None:
        return class_names
    seen = {v for row in ds[column] if row is not None for v in row if v is not None}
    if seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return [str(int(v)) for v in sorted(seen)]
    return sorted(str(v) for v in seen)


def encode_tags(
    splits: dict[str, Dataset], words: str, column: str, names: list[str] | None = None
) -> tuple[dict[str, Dataset], list[str]]:
    """Each split's tags as `labels`, a list of tag ids over `names` (default: the train split's tag set), one per
    word; rows whose tags are not a list as long as their words, or hold a tag outside `names`, are a DataError."""
    from datasets import ClassLabel, Sequence

    for split, ds in splits.items():
        if not is_list_column(ds, column):
            raise DataError(
                f"token classification: the '{split}' split's column '{column}' holds "
                f"{ds.features[column]}, not a list of tags per row",
                "Each row needs a list of tags, one per word (data.label_column names the column).",
            )
        if not is_list_column(ds, words):
            raise DataError(
                f"token classification: the '{split}' split's column '{words}' does not hold a list of words per row",
                "Each row needs a list of words (data.text_column names the column).",
            )
        for i, (tokens, tags) in enumerate(zip(ds[words], ds[column])):
            if tags is None or len(tags) != len(tokens):
                raise DataError(
                    f"token classification: row {i} of the '{split}' split has {len(tokens)} words but "
                    f"{'no' if tags is None else len(tags)} tags",
                    f"Give every row one tag per word in '{column}' (or drop the row).",
                )
    if names is None:
        names = _tag_names(splits["train"], column)
        if len(names) < 2:
            raise DataError(
                f"the train split has {len(names)} tag{'s' if len(names) != 1 else ''} in column '{column}'",
                "A tagger needs at least two tags; check the data and data.label_column.",
            )
    index = {n: i for i, n in enumerate(names)}
    encoded: dict[str, Dataset] = {}
    for split, ds in splits.items():
        _, class_names = list_item_names(ds, column)
        rows, unseen = [], set()
        for tags in ds[column]:
            as_names = [
                class_names[t]
                if class_names is not None
                else str(int(t))
                if isinstance(t, (int, float)) and not isinstance(t, bool)
                else str(t)
                for t in tags
            ]
            unseen.update(n for n in as_names if n not in index)
            rows.append([index.get(n, -1) for n in as_names])
        if unseen:
            raise DataError(
                f"the '{split}' split has tags the model was not trained on: {', '.join(sorted(unseen)[:10])}",
                f"Known tags: {', '.join(names[:20])}. Fix the data or drop those rows.",
            )
        ds = ds.remove_columns(column).add_column(LABELS, rows)
        encoded[split] = ds.cast_column(LABELS, Sequence(ClassLabel(names=names)))
    return encoded, names


def tokenize_words(ds: Any, tokenizer: Any, words_column: str, max_length: int) -> Any:
    """Token classification: each row's words as token ids, its tags aligned to them as the transformers examples
    do: a word's tag on its first sub-word token, -100 (ignored by the loss and the metrics) on the others and on
    special tokens. Words cut off by `max_length` are neither trained nor scored."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"token classification needs a fast tokenizer (to map sub-word tokens to words); "
            f"'{getattr(tokenizer, 'name_or_path', '')}' has a {type(tokenizer).__name__}",
            "Choose a model whose tokenizer has a tokenizer.json (a fast, Rust tokenizer).",
        )

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        encoded = tokenizer(batch[words_column], is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = []
        for row, tags in enumerate(batch["labels"]):
            previous, labels = None, []
            for word in encoded.word_ids(row):
                labels.append(-100 if word is None or word == previous else tags[word])
                previous = word
            aligned.append(labels)
        encoded["labels"] = aligned
        return encoded

    from datasets import Sequence, Value

    drop = [c for c in ds.column_names if c != "labels"]
    ds = ds.cast_column("labels", Sequence(Value("int64")))  # tag ids: -100 is not a class
    return ds.map(encode, batched=True, remove_columns=drop, desc="Tokenizing")


def entity_tags(labels: list[str]) -> list[str]:
    """The tags as seqeval reads them: a tag set in a chunk scheme (B-/I-/E-/S-/L-/U- prefixes, and O) as it is;
    any other (e.g. part-of-speech tags) with each word its own entity (B-tag; O stays outside), so that the
    entity scores are then the word-level F1 over the tags other than O."""
    scheme = re.compile(r"^[BIESLU]-.")
    if any(scheme.match(t) for t in labels):
        return list(labels)
    return [t if t == "O" else f"B-{t}" for t in labels]


def token_classification_metrics(labels: list[str]) -> Any:
    """The `compute_metrics` of token classification over the tag names `labels`: the argmax tag of each scored
    word (its first sub-word token; -100 elsewhere), entity-level precision, recall and F1 by seqeval (conlleval's
    rules, micro-averaged over entity types) and the share of words tagged right."""
    tags = entity_tags(labels)

    def compute(eval_pred: Any) -> dict[str, float]:
        import numpy as np
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        preds = np.asarray(model_outputs(eval_pred)).argmax(-1)
        targets = np.asarray(eval_pred.label_ids)
        truth, predicted = [], []
        for p_row, t_row in zip(preds, targets):
            scored = t_row != -100
            truth.append([tags[i] for i in t_row[scored]])
            predicted.append([tags[i] for i in p_row[scored]])
        return {
            "entity_f1": float(f1_score(truth, predicted, zero_division=0)),
            "entity_precision": float(precision_score(truth, predicted, zero_division=0)),
            "entity_recall": float(recall_score(truth, predicted, zero_division=0)),
            "word_accuracy": float(accuracy_score(truth, predicted)),
        }

    return compute


# ---- predictions -------------------------------------------------------------------------------


def _words_of_texts(encoded: Any, texts: list[str]) -> list[list[tuple[str, int]]]:
    """Each text's words (as the tokenizer's pre-tokenizer splits it) with their first token's index."""
    rows = []
    for row, text in enumerate(texts):
        spans: dict[int, list[int]] = {}  # word -> [its first token, char start, char end]
        for t, (word, (a, b)) in enumerate(zip(encoded.word_ids(row), encoded["offset_mapping"][row].tolist())):
            if word is not None:
                spans.setdefault(word, [t, a, b])[2] = b
        rows.append([(text[a:b], t) for t, a, b in spans.values()])
    return rows


def _words_given(encoded: Any, words: list[list[str]]) -> list[list[tuple[str, int | None]]]:
    """Each row's words with their first token's index (None: cut off by max_length)."""
    rows = []
    for row, row_words in enumerate(words):
        first: dict[int, int] = {}
        for t, word in enumerate(encoded.word_ids(row)):
            if word is not None:
                first.setdefault(word, t)
        rows.append([(str(w), first.get(i)) for i, w in enumerate(row_words)])
    return rows


def entities_of(tagged: list[tuple[str, str | None, float]]) -> list[dict[str, Any]]:
    """A row's entities from its words, tags and scores, grouped as transformers' token-classification pipeline
    groups tokens (aggregation_strategy="simple"): a word joins the previous one's group when its type (the tag
    without B-/I-) is the same and it is not a B- tag; a group's type is its first tag's, its score the mean of its
    words'; groups of O are not entities. `start`, `end`: the words' span (end exclusive)."""

    def kind(tag: str) -> tuple[str, str]:
        return (tag[0], tag[2:]) if tag.startswith(("B-", "I-")) else ("I", tag)

    import numpy as np

    groups: list[list[int]] = []
    for i, (_, tag, _) in enumerate(tagged):
        if tag is None:  # a word cut off by max_length: not tagged
            continue
        bi, type_ = kind(tag)
        if groups and bi != "B" and type_ == kind(tagged[groups[-1][-1]][1])[1]:
            groups[-1].append(i)
        else:
            groups.append([i])
    entities = []
    for group in groups:
        type_ = tagged[group[0]][1].split("-", 1)[-1]
        if type_ != "O":
            entities.append(
                {
                    "type": type_,
                    "text": " ".join(tagged[i][0] for i in group),
                    "start": group[0],
                    "end": group[-1] + 1,
                    "score": float(np.mean([tagged[i][2] for i in group])),
                }
            )
    return entities


class TokenClassification(Task):
    """A tag per word."""

    predicts = True

    metrics = (
        Metric("entity_f1", "entity F1", True),
        Metric("entity_precision", "entity precision", True),
        Metric("entity_recall", "entity recall", True),
        Metric("word_accuracy", "word accuracy", True),
    )
    problem = "tokens"
    drops_unlabelled_rows = False  # a row without tags is an error naming the row (encode_tags)
    smooths_labels = True
    lora_task_type = "TOKEN_CLS"
    pipeline_tag = TOKEN_CLASSIFICATION  # type: ignore[assignment]
    pipeline_options = ', aggregation_strategy="simple"'  # words' tags joined into entities
    peft_auto_class = "AutoPeftModelForTokenClassification"

    def claims_architecture(self, architectures: list[str]) -> bool:
        return any(a.endswith("ForTokenClassification") for a in architectures)  # a tagger (ours, or an NER model)

    def claims_rows(self, rows: Any, section: Any, model_task: Task | None) -> bool:
        return holds_word_lists(rows, section)

    def columns(self, names: list[str], features: Any, section: Any, rows: Any = None) -> dict[str, Any]:
        return _word_columns(names, section)

    def encode(self, splits: dict[str, Any], cols: dict[str, Any], names: list[str] | None = None) -> tuple[dict, list]:
        return encode_tags(splits, cols["text"], cols["label"], names=names)

    def load_processor(self, path: str, section: Any) -> Any:
        """The tokenizer, taking words already split: byte-level BPE tokenizers (RoBERTa's, GPT-2's) then need
        `add_prefix_space`, as the transformers NER example sets it, so that each word is tokenised as it is
        mid-sentence."""
        from samtune.modeling import load_tokenizer

        tokenizer = load_tokenizer(path, section)
        if getattr(tokenizer, "add_prefix_space", None) is False:
            tokenizer = load_tokenizer(path, section, add_prefix_space=True)
        return tokenizer

    def auto_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def eval_inputs(self, ds: Any, processor: Any, columns: dict[str, Any], max_length: int) -> Any:
        return tokenize_words(ds, processor, columns["text"], max_length)

    def collator(self, processor: Any) -> Any:
        """Dynamic padding, the tags padded with -100 too."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(processor)

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        return token_classification_metrics(labels)

    def input_columns(self, rows: Any, section: Any) -> dict[str, str]:
        """A column of lists of words (the run's words column, else 'tokens' or 'words'), else of texts."""
        from samtune.predict import input_column

        named = [section.text_column] if section.text_column else []
        for c in [*named, *WORD_COLUMNS]:
            if c in rows.column_names and is_list_column(rows, c):
                return {"words": c}
        return {
            "text": input_column(
                rows, None, TEXT_COLUMNS + tuple(named + list(WORD_COLUMNS)), "text or words", "data.text_column"
            )
        }

    def predict_batch(self, model: Any, processor: Any, batch: dict[str, list], how: PredictSettings) -> list:
        """Each row's words with their tags (the argmax on the word's first sub-word token, as trained) and score
        (that tag's softmax probability), and its entities (`entities_of`)."""
        import numpy as np

        given = "words" in how.columns
        if given:
            inputs = [[str(w) for w in row or []] for row in batch[how.columns["words"]]]
        else:
            inputs = [str(t) if t is not None else "" for t in batch[how.columns["text"]]]
        encoded = processor(
            inputs,
            is_split_into_words=given,
            truncation=True,
            max_length=how.max_length,
            padding=True,
            return_offsets_mapping=not given,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping", None)
        logits = model(**{k: v.to(model.device) for k, v in encoded.items()}).logits.float().cpu().numpy()
        if offsets is not None:
            encoded["offset_mapping"] = offsets
        words = _words_given(encoded, inputs) if given else _words_of_texts(encoded, inputs)
        labels = [model.config.id2label[i] for i in range(logits.shape[-1])]
        out = []
        for row, row_words in enumerate(words):
            exp = np.exp(logits[row] - logits[row].max(axis=-1, keepdims=True))  # as the pipeline: float32 softmax
            probs = exp / exp.sum(axis=-1, keepdims=True)
            tagged = [
                (w, None, 0.0) if t is None else (w, labels[int(probs[t].argmax())], float(probs[t].max()))
                for w, t in row_words
            ]
            out.append({"entities": entities_of(tagged), "tagged_words": [[w, tag] for w, tag, _ in tagged]})
        return out

    def prediction_names(self, labels: list[str]) -> list[str]:
        """The entities (type, text, word span, score) and each word with its tag."""
        return ["entities", "tagged_words"]

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        names = self.prediction_names(labels)
        for name in names:
            table[name] = [row[name] for row in logits]
        return names

    def card_labels_line(self, facts: Any) -> str:
        return (
            f"Token classification: a tag per word, on its first sub-word token; entity-level precision, recall "
            f"and F1 by seqeval. Tags ({len(facts.labels)}): {', '.join(facts.labels)}."
        )


register(TokenClassification(TOKEN_CLASSIFICATION, "text"))
