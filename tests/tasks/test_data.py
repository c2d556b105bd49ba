"""samtune.data: sources, column detection, label encoding, carved and capped splits."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from conftest import text_examples, write_csv

from samtune.data import detect_columns, load_data
from samtune.errors import DataError
from samtune.recipe import DataSection


def _load(dataset, **kw):
    return load_data(DataSection(dataset=str(dataset), **kw), seed=0)


def test_string_labels_become_classes_and_the_carved_split_is_stratified(tmp_path):
    rows = [{"text": f"example {i}", "label": "a" if i % 4 else "b"} for i in range(200)]  # 150 a, 50 b
    data = _load(write_csv(tmp_path / "d.csv", rows), validation_fraction=0.2)
    assert data.labels == ["a", "b"]
    assert data.train.features["labels"].names == ["a", "b"]
    assert len(data.eval) == 40 and len(data.train) == 160
    assert Counter(data.eval["labels"]) == {0: 30, 1: 10}  # the 3:1 ratio, kept
    assert "stratified" in data.eval_source


def test_whole_number_labels_that_skip_values(tmp_path):
    rows = [{"text": f"t{i}", "stars": [1, 3, 5][i % 3]} for i in range(30)]
    data = _load(write_csv(tmp_path / "d.csv", rows), label_column="stars")
    assert data.labels == ["1", "3", "5"]
    assert set(data.train["labels"]) | set(data.eval["labels"]) == {0, 1, 2}


def test_sentence_pairs_are_detected(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": i % 2} for i in range(20)]
    data = _load(write_csv(tmp_path / "d.csv", rows))
    assert (data.text_column, data.text_pair_column) == ("sentence1", "sentence2")


def test_ambiguous_text_columns_must_be_named():
    with pytest.raises(DataError, match="more than one column could hold the text"):
        detect_columns(["text", "sentence", "label"], {}, DataSection(), "auto")
    cols = detect_columns(["text", "sentence", "label"], {}, DataSection(text_column="sentence"), "auto")
    assert cols["text"] == "sentence"


def test_an_eval_file_is_used_as_the_eval_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", text_examples(40))
    valid = write_csv(tmp_path / "valid.csv", text_examples(10, seed=4))
    data = _load(train, eval_file=str(valid))
    assert len(data.train) == 40 and len(data.eval) == 10


def test_caps_keep_both_classes(tmp_path):
    data = _load(write_csv(tmp_path / "d.csv", text_examples(200)), max_train_samples=20, max_eval_samples=6)
    assert len(data.train) == 20 and len(data.eval) == 6
    assert Counter(data.train["labels"]) == {0: 10, 1: 10}


def test_keep_only_listed_labels_in_that_order(tmp_path):
    rows = [{"text": f"t{i}", "category": ["fresh", "rotten", "plot"][i % 3]} for i in range(60)]
    data = _load(write_csv(tmp_path / "d.csv", rows), label_column="category", labels=["rotten", "fresh"])
    assert data.labels == ["rotten", "fresh"]
    assert len(data.train) + len(data.eval) == 40


def test_a_saved_datasets_folder_with_its_splits(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["no", "yes"])})
    rows = {"sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    test = {"sentence": ["x", "y"], "label": [-1, -1]}  # GLUE-style unlabelled test split
    DatasetDict(
        train=Dataset.from_dict(rows, features=features),
        validation=Dataset.from_dict({k: v[:6] for k, v in rows.items()}, features=features),
        test=Dataset.from_dict(test, features=features),
    ).save_to_disk(tmp_path / "saved")
    data = _load(tmp_path / "saved")
    assert data.labels == ["no", "yes"]
    assert len(data.eval) == 6 and "validation" in data.eval_source


def test_an_unlabelled_test_split_is_not_chosen_for_evaluation(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["no", "yes"])})
    DatasetDict(
        train=Dataset.from_dict(
            {"text": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}, features=features
        ),
        test=Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]}, features=features),
    ).save_to_disk(tmp_path / "saved")
    data = _load(tmp_path / "saved")
    assert len(data.eval) == 4 and "of 'train'" in data.eval_source


def _gaps_csv(path, labels=("neg", "pos")):
    """23 rows: 20 whole, then one without text, one without a label, one with neither (in that order)."""
    whole = "".join(f"t{i},{labels[i % 2]}\n" for i in range(20))
    path.write_text(f"text,label\n{whole},{labels[0]}\nbad one,\n,\n")
    return path


@pytest.mark.parametrize("labels", [("neg", "pos"), (0, 1)], ids=["string-labels", "number-labels-read-as-nan"])
def test_rows_without_text_or_label_are_dropped_and_counted(tmp_path, labels):
    data = _load(_gaps_csv(tmp_path / "gaps.csv", labels))
    assert len(data.train) + len(data.eval) == 20
    # The row with neither is counted once, for its text (the first reason checked).
    assert data.dropped == ["dropped 3 of 23 rows of the 'train' split: 2 with no text, 1 with no label"]


def test_dropped_rows_are_said_once_in_training_and_in_eval(tmp_path, text_model_dir):
    from typer.testing import CliRunner

    from samtune.cli import app

    gaps = _gaps_csv(tmp_path / "gaps.csv")
    out = tmp_path / "run"
    trained = CliRunner().invoke(
        app,
        ["train", "--model", str(text_model_dir), "--dataset", str(gaps), "--output-dir", str(out), "--max-steps", "2"],
    )
    assert trained.exit_code == 0, trained.output
    said = "dropped 3 of 23 rows of the 'train' split: 2 with no text, 1 with no label"
    assert " ".join(trained.output.split()).count(said) == 1
    evaluated = CliRunner().invoke(app, ["eval", str(out), "--dataset", str(gaps), "--split", "train"])
    assert evaluated.exit_code == 0, evaluated.output
    assert " ".join(evaluated.output.split()).count(said) == 1
    assert re.search(r"eval_samples\s*│\s*20\s*│", evaluated.output), evaluated.output  # the 20 whole rows


def test_an_image_folder(image_folder):
    data = _load(image_folder)
    assert data.task == "image-classification" and data.image_column == "image"
    assert sorted(data.labels) == ["blue", "red"]


def test_negative_whole_numbers_are_classes_in_plain_columns(tmp_path):
    rows = [{"text": f"t{i}", "label": [-1, 1][i % 2]} for i in range(20)]
    data = _load(write_csv(tmp_path / "d.csv", rows))
    assert data.labels == ["-1", "1"]


def test_a_test_split_is_scored_but_never_picks_the_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", text_examples(40))
    write_csv(tmp_path / "data" / "test.csv", text_examples(10, seed=2))
    data = _load(tmp_path / "data")
    assert "of 'train'" in data.eval_source and len(data.eval) == 4
    assert data.test_split == "test" and len(data.test) == 10


# ---- columns picked by their values (names did not say) -------------------------------------------


def _sentences(n: int, seed: int = 0) -> list[str]:
    import random

    from conftest import FILLER, NEGATIVE, POSITIVE

    rng = random.Random(seed)
    return [" ".join(rng.sample(FILLER, 5) + [rng.choice(POSITIVE + NEGATIVE)]) + f" {i}" for i in range(n)]


def test_review_and_sentiment_are_picked_by_their_values(tmp_path):
    rows = [{"review": t, "sentiment": "positive" if i % 2 else "negative"} for i, t in enumerate(_sentences(160))]
    data = _load(write_csv(tmp_path / "reviews.csv", rows))
    assert data.text_column == "review" and data.picked == {"label": "sentiment", "text": "review"}
    assert data.labels == ["negative", "positive"]


def test_statement_and_party_three_classes_one_rare(tmp_path):
    parties = ["red"] * 70 + ["blue"] * 80 + ["green"] * 10
    rows = [{"statement": t, "party": p} for t, p in zip(_sentences(160), parties)]
    data = _load(write_csv(tmp_path / "statements.csv", rows))
    assert data.picked == {"label": "party", "text": "statement"} and data.labels == ["blue", "green", "red"]


def test_integer_label_ids_beside_a_named_text_column(tmp_path):
    rows = [{"id": i, "text": t, "label_id": i % 3} for i, t in enumerate(_sentences(90))]
    data = _load(write_csv(tmp_path / "ids.csv", rows))
    assert data.picked == {"label": "label_id"} and data.text_column == "text" and data.labels == ["0", "1", "2"]


def test_content_and_category_in_jsonl(tmp_path):
    from conftest import write_jsonl

    rows = [
        {"content": t, "category": ["film", "music", "books", "games"][i % 4]} for i, t in enumerate(_sentences(120))
    ]
    data = _load(write_jsonl(tmp_path / "posts.jsonl", rows))
    assert data.picked == {"label": "category", "text": "content"} and len(data.labels) == 4


def test_a_column_of_fractional_numbers_is_picked_as_the_regression_target(tmp_path):
    """text,score with scores in [0, 1]: the float column is the label by its values, and the run is regression."""
    rows = [{"text": t, "score": round((i * 37 % 101) / 100, 2)} for i, t in enumerate(_sentences(120))]
    data = _load(write_csv(tmp_path / "scored.csv", rows))
    assert data.picked == {"label": "score"} and data.task == "text-regression"


def test_a_float_column_beside_a_repeating_one_is_ambiguous(tmp_path):
    """The ambiguity rule of the other columns: a float target and a repeating category are both candidates."""
    rows = [
        {"text": t, "score": round(i / 120, 3), "topic": ["a", "b", "c"][i % 3]} for i, t in enumerate(_sentences(120))
    ]
    with pytest.raises(DataError) as e:
        _load(write_csv(tmp_path / "both.csv", rows))
    assert "'score'" in e.value.message and "'topic'" in e.value.message
    assert "data.label_column=score" in e.value.hint


def test_whole_numbers_written_as_floats_are_not_a_regression_target(tmp_path):
    """1.0, 2.0, ... repeating: classes (as whole numbers are), found by the usual rule, not a float target."""
    rows = [{"text": t, "stars": float(i % 3 + 1)} for i, t in enumerate(_sentences(90))]
    data = _load(write_csv(tmp_path / "stars.csv", rows))
    assert data.picked == {"label": "stars"} and data.task == "text-classification"


def test_two_columns_that_could_each_be_the_label_are_a_data_error_naming_both(tmp_path):
    speakers = ["ann", "bob", "cy", "dee", "eve", "fay"]
    rows = [
        {"speaker": speakers[i % 6], "party": "red" if i % 6 < 3 else "blue", "text": t}
        for i, t in enumerate(_sentences(120))
    ]
    with pytest.raises(DataError) as e:
        _load(write_csv(tmp_path / "debates.csv", rows))
    assert "more than one column could be the label" in e.value.message
    assert "'speaker'" in e.value.message and "'party'" in e.value.message
    assert "data.label_column=speaker" in e.value.hint and "data.label_column=party" in e.value.hint


def test_picked_columns_are_saved_in_config_yaml_and_said(tmp_path, text_model_dir):
    import yaml
    from typer.testing import CliRunner

    from samtune.cli import app

    rows = [{"review": t, "sentiment": "pos" if i % 2 else "neg"} for i, t in enumerate(_sentences(80))]
    path = write_csv(tmp_path / "reviews.csv", rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--model", str(text_model_dir), "--dataset", str(path), "--output-dir", str(out), "--max-steps", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "columns picked by their values: label 'sentiment', text 'review'" in result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["label_column"] == "sentiment" and saved["text_column"] == "review"
    shown = CliRunner().invoke(app, ["validate", "--model", str(text_model_dir), "--dataset", str(path)])
    assert shown.exit_code == 0 and "picked" in shown.output


def _column_files(tmp_path):
    """The issue's own-data files, each with the columns a user would export."""
    from conftest import write_jsonl

    texts = _sentences(160)
    parties = ["red"] * 70 + ["blue"] * 80 + ["green"] * 10
    return {
        "review,sentiment": (
            write_csv(
                tmp_path / "a.csv", [{"review": t, "sentiment": "pos" if i % 2 else "neg"} for i, t in enumerate(texts)]
            ),
            "review",
            "sentiment",
        ),
        "statement,party": (
            write_csv(tmp_path / "b.csv", [{"statement": t, "party": p} for t, p in zip(texts, parties)]),
            "statement",
            "party",
        ),
        "id,text,label_id": (
            write_csv(tmp_path / "c.csv", [{"id": i, "text": t, "label_id": i % 3} for i, t in enumerate(texts)]),
            "text",
            "label_id",
        ),
        "content,category (jsonl)": (
            write_jsonl(tmp_path / "d.jsonl", [{"content": t, "category": "abcd"[i % 4]} for i, t in enumerate(texts)]),
            "content",
            "category",
        ),
    }


@pytest.mark.parametrize(
    "name", ["review,sentiment", "statement,party", "id,text,label_id", "content,category (jsonl)"]
)
def test_each_own_data_file_trains_with_no_column_flags(tmp_path, text_model_dir, name):
    import yaml
    from typer.testing import CliRunner

    from samtune.cli import app

    path, text, label = _column_files(tmp_path)[name]
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--model", str(text_model_dir), "--dataset", str(path), "--output-dir", str(out), "--max-steps", "2"],
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["label_column"] == label and saved["text_column"] in (text, None)  # a named 'text' needs no saving
    assert (out / "metrics.json").is_file()
