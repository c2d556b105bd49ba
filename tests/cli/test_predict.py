"""`samtune predict`: a run's predictions on new rows, a text, or a folder of images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import text_examples, write_csv, write_jsonl
from typer.testing import CliRunner

from samtune.cli import app
from samtune.runner import evaluate_run

runner = CliRunner()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_model_dir):
    root = tmp_path_factory.mktemp("predict-text")
    data = write_csv(root / "train.csv", text_examples(96))
    out = root / "run"
    result = runner.invoke(app, ["train", "--model", str(text_model_dir), "--dataset", str(data), "--output-dir",
                                 str(out), "--max-steps", "12", "--learning-rate", "5e-3", "--batch-size", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_predictions_agree_with_eval_and_probabilities_sum_to_one(tmp_path, text_run):
    rows = text_examples(60, seed=7)
    data = write_csv(tmp_path / "new.csv", rows)
    out = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(text_run), str(data), "--output", str(out), "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["text", "label", "predicted_label", "score", "prob_neg", "prob_pos"]
    assert table[["prob_neg", "prob_pos"]].sum(axis=1).sub(1.0).abs().max() <= 1e-9  # float64 softmax
    assert (table["score"] == table[["prob_neg", "prob_pos"]].max(axis=1)).all()
    accuracy = float((table["predicted_label"] == table["label"]).mean())
    evaluated = evaluate_run(text_run, str(data), split="train")  # the same rows, through the Trainer
    assert accuracy == pytest.approx(evaluated["eval_accuracy"], abs=1e-12)


def test_texts_on_the_command_line_and_jsonl_output(tmp_path, text_run):
    shown = runner.invoke(app, ["predict", str(text_run), "--text", "the film was good", "--text", "dull and long"])
    assert shown.exit_code == 0, shown.output
    assert "2 prediction(s)" in shown.output and "dull and long" in shown.output
    assert "predicted_label" in shown.output and ("pos" in shown.output or "neg" in shown.output)
    data = write_jsonl(tmp_path / "new.jsonl", [{"text": r["text"]} for r in text_examples(5)])
    out = tmp_path / "p.jsonl"
    assert runner.invoke(app, ["predict", str(text_run), str(data), "--output", str(out)]).exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and {"text", "predicted_label", "prob_pos"} <= set(lines[0])


def test_input_without_the_text_column_is_a_data_error_naming_its_columns(tmp_path, text_run):
    data = write_csv(tmp_path / "other.csv", [{"review": r["text"]} for r in text_examples(5)])
    result = runner.invoke(app, ["predict", str(text_run), str(data), "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 3 and "no text column" in result.output and "review" in result.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("name", ["no_such_file.csv", "no_such_folder"])
def test_an_input_that_does_not_exist_is_a_data_error_naming_it(tmp_path, text_run, name):
    result = runner.invoke(app, ["predict", str(text_run), str(tmp_path / name)])
    assert result.exit_code == 3, result.output
    assert "not found" in result.output and name in result.output and "--text" in result.output
    assert "predicted_label" not in result.output  # the path is not classified as a text


def test_a_file_of_unknown_format_is_a_data_error(tmp_path, text_run):
    notes = tmp_path / "notes.txt"
    notes.write_text("the film was good\n")
    result = runner.invoke(app, ["predict", str(text_run), str(notes)])
    assert result.exit_code == 3 and "cannot tell the format" in result.output and "notes.txt" in result.output


@pytest.mark.parametrize("args", [[], ["in.csv", "--text", "a text"]], ids=["neither", "both"])
def test_predict_takes_an_input_or_texts(text_run, args):
    result = runner.invoke(app, ["predict", str(text_run), *args])
    assert result.exit_code == 2 and "INPUT" in result.output and "--text" in result.output, result.output


def test_input_columns_named_like_the_predictions_are_refused_not_overwritten(tmp_path, text_run):
    rows = [{"text": r["text"], "score": 5, "prob_pos": "mine"} for r in text_examples(4)]
    data = write_csv(tmp_path / "scored.csv", rows)
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(text_run), str(data), "--output", str(out)])
    assert result.exit_code == 3, result.output
    assert "'score', 'prob_pos'" in result.output and "rename" in result.output.lower()
    assert not out.exists()


def test_a_folder_that_is_not_a_run_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path), "--text", "some text"])
    assert result.exit_code == 2 and "not a samtune run directory" in result.output


def test_image_folder_with_a_corrupt_file_and_one_over_the_decompression_bomb_limit(
    tmp_path, image_model_dir, image_folder, monkeypatch
):
    from bombs import _decompression_bomb

    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--model", str(image_model_dir), "--dataset", str(image_folder),
                                  "--output-dir", str(out), "--max-steps", "2"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    new = tmp_path / "new"
    new.mkdir()
    for i, p in enumerate(sorted(image_folder.rglob("*.png"))[:5]):
        (new / f"{i}.png").write_bytes(p.read_bytes())
    (new / "broken.png").write_bytes(b"not an image")
    refused = runner.invoke(app, ["predict", str(out), str(new)])
    assert refused.exit_code == 3 and "broken.png" in refused.output and "--skip-bad" in refused.output
    (new / "broken.png").unlink()
    _decompression_bomb(new / "huge.png", monkeypatch)
    refused = runner.invoke(app, ["predict", str(out), str(new)])
    assert refused.exit_code == 3 and "huge.png" in refused.output and "--skip-bad" in refused.output
    (new / "broken.png").write_bytes(b"not an image")
    written = tmp_path / "p.csv"
    done = runner.invoke(app, ["predict", str(out), str(new), "--skip-bad", "--output", str(written)])
    assert done.exit_code == 0, done.output
    assert "skipped 2 image" in done.output and "broken.png" in done.output and "huge.png" in done.output
    table = pd.read_csv(written)
    assert len(table) == 5 and list(table.columns[:2]) == ["file", "predicted_label"]
    assert table[["prob_blue", "prob_red"]].sum(axis=1).sub(1.0).abs().max() <= 1e-9
    (image_folder / "red" / "huge.png").write_bytes((new / "huge.png").read_bytes())  # eval reads folders as train does
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(image_folder)])
    assert evaluated.exit_code == 3 and "huge.png" in evaluated.output, evaluated.output


@pytest.mark.parametrize(
    ("task", "labels", "logits", "expected"),
    [
        # softmax of (0, ln 3): 1/4 and 3/4
        ("text-classification", ["neg", "pos"], [[0.0, np.log(3.0)]],
         {"predicted_label": "pos", "score": 0.75, "prob_neg": 0.25, "prob_pos": 0.75}),
        # sigmoid of ln 3 is 3/4, of -ln 3 is 1/4: only 'a' reaches the threshold 0.5
        ("text-multi-label", ["a", "b"], [[np.log(3.0), -np.log(3.0)]],
         {"predicted_labels": "a", "prob_a": 0.75, "prob_b": 0.25}),
        ("text-regression", ["stars"], [[2.5]], {"predicted_stars": 2.5}),
    ],
    ids=["classification", "multi-label", "regression"],
)  # fmt: skip
def test_prediction_columns_are_the_names_the_clash_check_uses(task, labels, logits, expected):
    from samtune import tasks

    table = pd.DataFrame({"text": ["x"]})
    added = tasks.get(task).prediction_columns(table, np.array(logits), labels, threshold=0.5)
    assert added == tasks.get(task).prediction_names(labels) == list(expected) == list(table.columns[1:])
    for name, value in expected.items():
        assert table[name][0] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-12)), name
