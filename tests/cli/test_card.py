"""The model card: Hub-valid metadata, SAM's settings and the run's own results, a real figure."""

from __future__ import annotations

import json
import os

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from samtune.card import CardFacts, build_model_card
from samtune.recipe import build_recipe
from samtune.runner import train


def _run(tmp_path, model_dir, dataset, **training):
    recipe = build_recipe(
        {
            "name": "tiny",
            "model": {"name": str(model_dir)},
            "data": {"dataset": str(dataset)},
            "sam": {"rho": 0.07, "adaptive": True, "variant": "sam"},
            "training": {"epochs": 2, "batch_size": 8, "logging_steps": 2, "seed": 3, **training},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    return train(recipe)


def _check_card(run_dir, task):
    card = ModelCard.load(run_dir / "README.md")
    meta = card.data.to_dict()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert meta["library_name"] == "transformers"
    assert {"samtune", "sam", "sharpness-aware-minimization", task} <= set(meta["tags"])
    assert "datasets" not in meta and "base_model" not in meta  # local paths never go in the metadata
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tiny"
    by_metric = {r.metric_type: r.metric_value for r in results}
    assert by_metric["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-4)
    assert by_metric["f1"] == pytest.approx(metrics["eval_f1"], abs=1e-4)
    assert all(r.task_type == task for r in results)
    text = card.text
    assert (
        "| rho | 0.07 |" in text
        and "| adaptive (ASAM) | True |" in text
        and "| variant | ASAM, exact SAM (every step) |" in text
    )
    assert "| seed | 3 |" in text and "| precision | fp32 |" in text
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    sharpness = [h["sam_sharpness"] for h in history if "sam_sharpness" in h]
    assert (
        sharpness
        and f"| sharpness L(w + e) - L(w), first / last logged | {sharpness[0]:.4g} / {sharpness[-1]:.4g} |" in text
    )
    assert f"{metrics['eval_accuracy']:.4f}" in text
    assert "![Training curves](training_curves.png)" in text
    assert f'pipeline("{task}"' in text and "config.yaml" in text and "transformers:" in text
    with Image.open(run_dir / "training_curves.png") as png:
        assert png.format == "PNG" and png.size == (900, 340)
    return card


def test_text_run_card(tmp_path, text_model_dir, text_csv):
    _check_card(_run(tmp_path, text_model_dir, text_csv).run_dir, "text-classification")


def test_image_run_card(tmp_path, image_model_dir, image_folder):
    _check_card(_run(tmp_path, image_model_dir, image_folder).run_dir, "image-classification")


def test_curves_differ_between_runs(tmp_path, text_model_dir, text_csv):
    a = _run(tmp_path / "a", text_model_dir, text_csv, learning_rate=1e-2).run_dir / "training_curves.png"
    b = _run(tmp_path / "b", text_model_dir, text_csv, learning_rate=1e-5).run_dir / "training_curves.png"
    assert a.read_bytes() != b.read_bytes()


def _facts(**kw) -> CardFacts:
    recipe = build_recipe(
        {
            "model": {"name": "google-bert/bert-base-uncased"},
            "data": {"dataset": "nyu-mll/glue", "config": "sst2"},
            "hub": {"repo_id": "alice/bert-sst2-sam"},
        }
    )
    base = dict(
        recipe=recipe,
        metrics={"eval_accuracy": 0.9123, "eval_f1": 0.9101, "eval_loss": 0.25, "eval_samples": 872},
        task="text-classification",
        labels=["negative", "positive"],
        base_model_is_hub_id=True,
        dataset_is_hub_id=True,
        eval_source="the 'validation' split",
        eval_split="validation",
        precision="bf16",
        license="apache-2.0",
    )
    return CardFacts(**{**base, **kw})


def test_hub_dataset_and_base_model_are_in_the_metadata():
    meta = build_model_card(_facts()).data.to_dict()
    assert meta["datasets"] == ["nyu-mll/glue"]
    assert meta["base_model"] == "google-bert/bert-base-uncased"
    assert meta["license"] == "apache-2.0"
    _, results = model_index_to_eval_results(meta["model-index"])
    assert {(r.dataset_type, r.dataset_config, r.dataset_split) for r in results} == {
        ("nyu-mll/glue", "sst2", "validation")
    }


def test_local_data_leaves_datasets_out():
    meta = build_model_card(_facts(dataset_is_hub_id=False, base_model_is_hub_id=False, license=None)).data.to_dict()
    assert "datasets" not in meta and "base_model" not in meta and "license" not in meta


def test_the_license_of_a_local_base_model_is_carried(tmp_path, text_model_dir, text_csv):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(text_model_dir, model)
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a model\n")
    run = _run(tmp_path, model, text_csv)
    assert ModelCard.load(run.run_dir / "README.md").data.license == "apache-2.0"


def test_braces_in_names_are_text_not_template():
    facts = _facts(labels=["{{ x }}", "{# y"], command="samtune train a{#b.yaml")
    card = build_model_card(facts)
    assert "{{ x }}, {# y" in card.text and "a{#b.yaml" in card.text


def test_card_files_are_readable_like_plain_files(tmp_path, text_model_dir, text_csv):
    run = _run(tmp_path, text_model_dir, text_csv)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("README.md", "metrics.json", "config.yaml", "training_curves.png"):
        assert (run.run_dir / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def _climbs_batch(variant: str, processes: int) -> str:
    """The card's row "the climb's batch" for a run of `variant` at batch 8 x 4 accumulation on `processes`."""
    recipe = build_recipe(
        {
            "model": {"name": "google-bert/bert-base-uncased"},
            "data": {"dataset": "nyu-mll/glue", "config": "sst2"},
            "sam": {"rho": 0.05, "variant": variant},
            "training": {"batch_size": 8, "gradient_accumulation_steps": 4},
        }
    )
    card = build_model_card(_facts(recipe=recipe, metrics={"eval_accuracy": 0.9, "processes": processes}))
    return next(line for line in card.text.splitlines() if line.startswith("| the climb's batch |"))


def test_an_aesam_card_says_the_climb_is_from_the_whole_batch():
    # AE-SAM climbs once a step from the gradient of the whole effective batch (8 x 4 micro-batches x 2 processes),
    # not from one micro-batch (m-sharpness) as exact SAM does.
    row = _climbs_batch("aesam", processes=2)
    assert "64" in row and "whole" in row and "m-sharpness" not in row, row
    assert "8: one micro-batch on each of 2 processes alone (m-sharpness)" in _climbs_batch("sam", processes=2)


def test_an_ascent_fraction_card_says_the_climb_uses_part_of_each_micro_batch():
    # ascent_fraction 0.25 (the default) climbs on ceil(0.25 x 8) = 2 examples of each micro-batch of 8.
    row = _climbs_batch("ascent_fraction", processes=1)
    assert "2: the first 2 of each micro-batch of 8 (m-sharpness)" in row, row
    assert "2: the first 2 of each micro-batch of 8, on each of 2 processes alone" in _climbs_batch(
        "ascent_fraction", processes=2
    )
