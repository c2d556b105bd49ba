"""samtune.data: sources, column detection, label encoding, carved and capped splits."""

from __future__ import annotations

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
        train=Dataset.from_dict({"text": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}, features=features),
        test=Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]}, features=features),
    ).save_to_disk(tmp_path / "saved")
    data = _load(tmp_path / "saved")
    assert len(data.eval) == 4 and "of 'train'" in data.eval_source


def test_rows_without_text_or_label_are_dropped(tmp_path):
    f = tmp_path / "gaps.csv"
    f.write_text("text,label\ngood one,pos\n,neg\nbad one,\n" + "".join(f"t{i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
    data = _load(f)
    assert len(data.train) + len(data.eval) == 21


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
