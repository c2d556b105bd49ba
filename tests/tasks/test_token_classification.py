"""Token classification: a tag per word (NER-style), aligned to sub-word tokens, scored per entity by seqeval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import card_example, measure_sharpness, run_card_example, sam_and_reference, write_jsonl
from task_examples import tagged_examples
from tiny import max_abs_diff
from transformers import BertConfig, BertForTokenClassification, EvalPrediction
from typer.testing import CliRunner

from samtune.cli import app
from samtune.data import load_data
from samtune.errors import DataError
from samtune.recipe import DataSection
from samtune.tasks.token_classification import token_classification_metrics

runner = CliRunner()


@pytest.fixture
def tags_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "ner.jsonl", tagged_examples(96))


def _wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer that splits 'lovelace' into 'love' '##lace' and 'london' into 'lond' '##on'."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "ada", "love", "##lace", "was", "born", "in", "lond", "##on", "."]
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def test_a_words_tag_goes_on_its_first_sub_word_token_and_minus_100_elsewhere():
    import datasets

    from samtune.tasks.token_classification import tokenize_words

    tokenizer = _wordpiece_tokenizer()
    rows = datasets.Dataset.from_dict(
        {"tokens": [["Ada", "Lovelace", "was", "born", "in", "London", "."]], "labels": [[1, 2, 0, 0, 0, 3, 0]]}
    )
    out = tokenize_words(rows, tokenizer, "tokens", max_length=32)[0]
    pieces = tokenizer.convert_ids_to_tokens(out["input_ids"])
    assert pieces == ["[CLS]", "ada", "love", "##lace", "was", "born", "in", "lond", "##on", ".", "[SEP]"]
    assert out["labels"] == [-100, 1, 2, -100, 0, 0, 0, 3, -100, 0, -100]
    # Truncated: 'London' is cut after its first piece, '.' dropped; what is left keeps its tags.
    short = tokenize_words(rows, tokenizer, "tokens", max_length=9)[0]
    assert short["labels"] == [-100, 1, 2, -100, 0, 0, 0, 3, -100]


def test_entity_metrics_match_a_hand_count():
    labels = ["B-PER", "I-PER", "O", "B-LOC"]
    # Two sentences; -100 marks sub-word and special tokens (never scored).
    truth = np.array([[-100, 0, 1, 2, 3, -100], [-100, 3, -100, 2, 0, -100]])
    guess = np.array([[0, 0, 1, 2, 2, 0], [1, 3, 3, 2, 2, 3]])  # argmax of the logits below
    logits = np.full((2, 6, 4), -5.0)
    for s in range(2):
        for t in range(6):
            logits[s, t, guess[s, t]] = 5.0
    got = token_classification_metrics(labels)(EvalPrediction(predictions=logits, label_ids=truth))
    # Entities: truth {PER(0,1..2), LOC(0,4), LOC(1,1), PER(1,4)}; predicted {PER(0,1..2), LOC(1,1)}.
    # Sentence 0's LOC predicted O, sentence 1's PER predicted O: 2 right of 2 predicted, of 4 true.
    precision, recall = 2 / 2, 2 / 4
    assert got["entity_precision"] == pytest.approx(precision, abs=1e-12)
    assert got["entity_recall"] == pytest.approx(recall, abs=1e-12)
    assert got["entity_f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)
    assert got["word_accuracy"] == pytest.approx(5 / 7, abs=1e-12)  # 7 scored words (4 + 3), 2 wrong


def test_tags_without_a_chunk_scheme_score_each_word_as_its_own_entity():
    labels = ["NOUN", "VERB", "O"]  # part-of-speech-like tags: no B-/I- prefixes
    truth = np.array([[0, 1, 0, 2]])
    logits = np.eye(3)[np.array([[0, 0, 0, 2]])]  # the VERB tagged NOUN
    got = token_classification_metrics(labels)(EvalPrediction(predictions=logits, label_ids=truth))
    # Words tagged other than O: 3 true, 3 predicted, 2 right (the two NOUNs are separate entities, not one).
    assert got["entity_precision"] == pytest.approx(2 / 3) and got["entity_recall"] == pytest.approx(2 / 3)
    assert got["word_accuracy"] == pytest.approx(3 / 4)


def test_lists_of_words_and_tags_make_a_token_classification_task(tags_jsonl):
    data = load_data(DataSection(dataset=str(tags_jsonl)), seed=0)
    assert data.task == "token-classification" and data.text_column == "tokens"
    assert data.labels == ["B-PER", "B-REV", "I-REV", "O"]
    row = data.train[0]
    source = next(r for r in tagged_examples(96) if r["tokens"] == row["tokens"])
    assert [data.labels[i] for i in row["labels"]] == source["ner_tags"]


def test_a_hub_style_dataset_keeps_its_tag_names_and_order(tmp_path):
    import datasets

    names = ["O", "B-PER", "I-PER"]
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
            "pos_tags": datasets.Sequence(datasets.Value("int32")),
        }
    )
    rows = {
        "id": ["0", "1", "2", "3"],
        "tokens": [["ada", "lovelace"], ["the", "film"], ["grace"], []],
        "ner_tags": [[1, 2], [0, 0], [1], []],
        "pos_tags": [[1, 1], [2, 3], [1], []],
    }
    saved = tmp_path / "conll"
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(saved)
    data = load_data(DataSection(dataset=str(saved)), seed=0)
    assert data.task == "token-classification" and data.labels == names  # ner_tags picked, ClassLabel order kept
    assert len(data.train) == 3  # the empty row (a conll document break) has nothing to tag: dropped
    assert data.train[0]["labels"] == [1, 2]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"tokens": ["a", "b"], "ner_tags": "O O"}] * 8, "not a list of tags per row"),
        ([{"tokens": ["a", "b"], "ner_tags": ["O"]}] * 8, "row 0 of the 'train' split has 2 words but 1 tags"),
    ],
    ids=["tags-not-a-list", "unequal-lengths"],
)
def test_bad_tags_are_a_data_error_naming_the_problem(tmp_path, text_model_dir, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(path),
            "--output-dir",
            str(tmp_path / "run"),
            "task=token-classification",
        ],
    )
    assert result.exit_code == 3, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_tags_the_train_split_never_had_are_a_data_error(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", tagged_examples(20))
    unseen = write_jsonl(tmp_path / "eval.jsonl", [{"tokens": ["ada", "paris"], "ner_tags": ["B-PER", "B-LOC"]}])
    with pytest.raises(DataError, match="tags the model was not trained on: B-LOC"):
        load_data(DataSection(dataset=str(train), eval_file=str(unseen)), seed=0)


def test_a_token_task_on_a_model_without_a_token_head_is_a_usage_error(tmp_path, image_model_dir, tags_jsonl):
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(image_model_dir),
            "--dataset",
            str(tags_jsonl),
            "--output-dir",
            str(tmp_path / "run"),
            "task=token-classification",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "token-classification" in result.output and "image model" in result.output


def _padded_tag_rows(n: int, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Rows padded to 8 tokens with 3-8 real ones; tags on some tokens only, so micro-batches score unequal counts."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 3 + i % 6
        ids = torch.randint(4, 64, (8,), generator=g)
        ids[length:] = 0
        mask = (torch.arange(8) < length).long()
        labels = torch.randint(0, 4, (8,), generator=g)
        labels[0] = labels[length - 1] = -100  # [CLS] and [SEP]
        labels[length:] = -100  # padding
        labels[1 + i % 2 :: 3] = -100  # sub-word continuations
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


@pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (4, 2)], ids=["ga1", "ga2"])
def test_sam_on_a_token_classifier_matches_the_hand_written_loop(tmp_path, batch_size, accumulation):
    """The loss is each micro-batch's mean over its scored tokens (what every transformers tagger returns, whatever
    `num_items_in_batch` says); the step averages the micro-batches. With GA 2 the two micro-batches score different
    numbers of tokens, so an update N times too large, or one normalised per token across the step, fails."""
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=4,
    )
    torch.manual_seed(0)
    model = BertForTokenClassification(config)
    ours, reference, no_climb, batches = sam_and_reference(
        tmp_path, model, _padded_tag_rows(24), batch_size, accumulation
    )
    counts = [int((b["labels"] != -100).sum()) for b in batches]
    assert accumulation == 1 or counts[0] != counts[1]  # the case that tells the normalisations apart
    assert max_abs_diff(ours, reference) <= 1e-6  # same formula, different code: rounding only
    assert max_abs_diff(no_climb, reference) > 1e-4  # the climb mattered


def test_token_classification_end_to_end(tmp_path, text_model_dir, tags_jsonl):
    from transformers import AutoConfig

    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(tags_jsonl),
            "--output-dir",
            str(out),
            "--epochs",
            "4",
            "--learning-rate",
            "5e-3",
            "--batch-size",
            "8",
            "model.max_length=16",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_entity_f1", "eval_entity_precision", "eval_entity_recall", "eval_word_accuracy"} <= set(metrics)
    assert metrics["eval_entity_f1"] > 0.5  # the tags follow from the words: learnable in a few epochs
    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["BertForTokenClassification"]
    assert config.id2label == {0: "B-PER", 1: "B-REV", 2: "I-REV", 3: "O"}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] is not None and "entity" in (out / "README.md").read_text()
    card = (out / "README.md").read_text()
    assert "token-classification" in card and "a tag per word" in card
    printed = run_card_example(out, **{"This film was a delight from start to finish.": "ada was really good"})
    assert {e["entity_group"] for e in printed[0]} <= {"PER", "REV"}  # entities, sub-words grouped
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(tags_jsonl), "--split", "train"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "eval_entity_f1" in evaluated.output
    measure_sharpness(out)


def test_samtune_eval_reproduces_the_runs_own_scores(tmp_path, text_model_dir, tags_jsonl):
    """Evaluated again from the run directory on the same split, the entity F1 is the one training reported."""
    import datasets

    rows = tagged_examples(96)
    saved = tmp_path / "ner"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:72]), "validation": datasets.Dataset.from_list(rows[72:])}
    ).save_to_disk(saved)
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(saved),
            "--output-dir",
            str(out),
            "--max-steps",
            "12",
            "--learning-rate",
            "5e-3",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    from samtune.runner import evaluate_run

    again = evaluate_run(out, str(saved), split="validation")
    # Same model, same inputs: the same tags. (Not the loss: each batch's is a mean over its own tokens, and `eval`
    # batches by 64 where training evaluated by 8.)
    for key in ("eval_entity_f1", "eval_entity_precision", "eval_entity_recall", "eval_word_accuracy"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-12)


def test_a_lora_tagger_reloads_with_peft_and_evaluates(tmp_path, text_model_dir, tags_jsonl):
    """LoRA on a token classifier: peft's TOKEN_CLS wrapper, the card's peft code tags, `eval` loads the adapters."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(tags_jsonl),
            "--output-dir",
            str(out),
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--lora",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved) and any("classifier" in k for k in saved)  # adapters and the new head
    assert "AutoPeftModelForTokenClassification" in card_example(out)
    printed = run_card_example(out)
    assert isinstance(printed[0], list)  # the entities found (maybe none after 6 steps), each a dict
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(tags_jsonl)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "eval_entity_f1" in evaluated.output
