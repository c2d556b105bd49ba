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


def _trained(model_dir, data, *args):
    """A run of the tiny model at `model_dir` on `data`, trained through the command line beside the data."""
    out = data.parent / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(out),
            "--batch-size",
            "8",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_model_dir):
    data = write_csv(tmp_path_factory.mktemp("predict-text") / "train.csv", text_examples(96))
    return _trained(text_model_dir, data, "--max-steps", "12", "--learning-rate", "5e-3")


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
    trained = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(image_model_dir),
            "--dataset",
            str(image_folder),
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
        ],
    )
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
        (
            "text-classification",
            ["neg", "pos"],
            [[0.0, np.log(3.0)]],
            {"predicted_label": "pos", "score": 0.75, "prob_neg": 0.25, "prob_pos": 0.75},
        ),
        # sigmoid of ln 3 is 3/4, of -ln 3 is 1/4: only 'a' reaches the threshold 0.5
        (
            "text-multi-label",
            ["a", "b"],
            [[np.log(3.0), -np.log(3.0)]],
            {"predicted_labels": "a", "prob_a": 0.75, "prob_b": 0.25},
        ),
        ("text-regression", ["stars"], [[2.5]], {"predicted_stars": 2.5}),
    ],
    ids=["classification", "multi-label", "regression"],
)
def test_prediction_columns_are_the_names_the_clash_check_uses(task, labels, logits, expected):
    from samtune import tasks

    table = pd.DataFrame({"text": ["x"]})
    added = tasks.get(task).prediction_columns(table, np.array(logits), labels, threshold=0.5)
    assert added == tasks.get(task).prediction_names(labels) == list(expected) == list(table.columns[1:])
    for name, value in expected.items():
        assert table[name][0] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-12)), name


# ---- taggers and causal LMs: checked against transformers' pipelines on the same run --------------------------


@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory, text_model_dir):
    from task_examples import tagged_examples

    data = write_jsonl(tmp_path_factory.mktemp("predict-tagger") / "ner.jsonl", tagged_examples(96))
    return _trained(text_model_dir, data, "--epochs", "4", "--learning-rate", "5e-3", "model.max_length=16")


def _cells(value):
    """A list cell as written: a list in JSON lines, its JSON text in CSV."""
    return json.loads(value) if isinstance(value, str) else value


def test_a_taggers_entities_are_the_token_classification_pipelines(tmp_path, tagger_run):
    from task_examples import tagged_examples
    from transformers import pipeline

    rows = tagged_examples(12, seed=5)
    texts = [" ".join(r["tokens"]) for r in rows]
    words = write_jsonl(tmp_path / "words.jsonl", [{"tokens": r["tokens"]} for r in rows])
    by_words, by_text = tmp_path / "w.jsonl", tmp_path / "t.csv"
    result = runner.invoke(
        app, ["predict", str(tagger_run), str(words), "--output", str(by_words), "--batch-size", "5"]
    )
    assert result.exit_code == 0, result.output
    args = [a for t in texts for a in ("--text", t)]
    result = runner.invoke(app, ["predict", str(tagger_run), *args, "--output", str(by_text), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    from_words = [json.loads(line) for line in by_words.read_text().splitlines()]
    from_text = pd.read_csv(by_text)
    assert list(from_text.columns) == ["text", "entities", "tagged_words"]
    tagger = pipeline("token-classification", model=str(tagger_run), aggregation_strategy="simple")
    found = 0
    for row, line, text_entities, text in zip(rows, from_words, from_text["entities"], texts):
        expected = tagger(text)
        found += len(expected)
        assert [w for w, _ in line["tagged_words"]] == row["tokens"]
        for entities in (line["entities"], _cells(text_entities)):
            assert [(e["type"], e["text"]) for e in entities] == [(e["entity_group"], e["word"]) for e in expected]
            # the same softmax, float32 both ways: a word's score is one token's probability, an entity's their mean
            assert [e["score"] for e in entities] == pytest.approx([float(e["score"]) for e in expected], abs=1e-6)
            for e in entities:
                assert " ".join(row["tokens"][e["start"] : e["end"]]) == e["text"]  # the word span, end exclusive
                tags = {t for _, t in line["tagged_words"][e["start"] : e["end"]]}
                assert tags <= {f"B-{e['type']}", f"I-{e['type']}"}
    assert found >= 5  # the tagger learned something: the comparison is not of empty lists


def test_a_taggers_input_with_a_column_named_like_its_predictions_is_refused(tmp_path, tagger_run):
    data = write_jsonl(tmp_path / "in.jsonl", [{"tokens": ["ada", "was", "here"], "entities": "mine"}])
    result = runner.invoke(app, ["predict", str(tagger_run), str(data), "--output", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 3 and "'entities'" in result.output, result.output
    assert not (tmp_path / "p.jsonl").exists()


def _causal_run(root, model_dir, *extra):
    from conftest import review_texts

    data = write_jsonl(root / "texts.jsonl", [{"text": r["text"]} for r in review_texts(96)])
    return _trained(model_dir, data, "--learning-rate", "1e-2", "model.max_length=16", *extra)


PROMPTS = ["the film was", "review : the", "a", "the acting was really", "the plot"]  # lengths differ: left padding


def _greedy_by_pipeline(generator, max_new_tokens):
    return [
        generator(p, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]
        for p in PROMPTS
    ]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_causal_lms_greedy_completions_are_the_text_generation_pipelines(tmp_path, causal_model_dir, lora):
    from transformers import AutoTokenizer, pipeline

    run = _causal_run(tmp_path, causal_model_dir, *(["--lora", "--max-steps", "6"] if lora else ["--epochs", "2"]))
    out = tmp_path / "completions.jsonl"
    args = [a for p in PROMPTS for a in ("--text", p)]
    result = runner.invoke(
        app, ["predict", str(run), *args, "--max-new-tokens", "6", "--batch-size", "3", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["text"] for line in lines] == PROMPTS and set(lines[0]) == {"text", "completion"}
    if lora:
        from peft import AutoPeftModelForCausalLM

        assert (run / "adapter_config.json").is_file()
        generator = pipeline(
            "text-generation",
            model=AutoPeftModelForCausalLM.from_pretrained(str(run)),
            tokenizer=AutoTokenizer.from_pretrained(str(run)),
        )
    else:
        generator = pipeline("text-generation", model=str(run))
    expected = _greedy_by_pipeline(generator, 6)
    assert [line["completion"] for line in lines] == expected
    assert any(e.strip() for e in expected)  # something was generated


def _completions(run, tmp_path, *flags):
    out = tmp_path / "c.jsonl"
    args = [a for p in PROMPTS for a in ("--text", p)]
    result = runner.invoke(app, ["predict", str(run), *args, "--max-new-tokens", "6", "--output", str(out), *flags])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["completion"] for line in out.read_text().splitlines()]


def test_sampling_settings_reach_generation_and_a_classifier_refuses_them(tmp_path, causal_model_dir, text_run):
    run = _causal_run(tmp_path, causal_model_dir, "--epochs", "2")
    greedy = _completions(run, tmp_path)
    # Sampling from the top 1e-9 of the probability mass, or at a temperature near 0, keeps only the likeliest token.
    assert _completions(run, tmp_path, "--do-sample", "--top-p", "1e-9") == greedy
    assert _completions(run, tmp_path, "--do-sample", "--temperature", "1e-4") == greedy
    # At temperature 50 the tokens are near uniform over the vocabulary: 30 draws all equal to greedy's would be ~0.
    assert _completions(run, tmp_path, "--do-sample", "--temperature", "50") != greedy
    refused = runner.invoke(app, ["predict", str(text_run), "--text", "the film", "--max-new-tokens", "3"])
    assert refused.exit_code == 2 and "--max-new-tokens" in refused.output, refused.output
