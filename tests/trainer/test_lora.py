"""LoRA adapters (peft): SAM against the hand-written loop, a frozen base, runs that reload with peft, clear errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_card_example, sam_sgd_trainer, text_examples, write_csv
from tiny import max_abs_diff, micro_batches, reference_sam_sgd, text_rows, tiny_bert, tiny_vit
from transformers import AutoConfig
from typer.testing import CliRunner

from samtune.cli import app
from samtune.errors import RecipeError
from samtune.modeling import apply_lora, head_modules, lora_targets
from samtune.tasks.classification import IMAGE_CLASSIFICATION as IMAGE
from samtune.tasks.classification import TEXT_CLASSIFICATION as TEXT
from samtune.recipe import LoraSection, build_recipe

runner = CliRunner()


def _lora_bert(seed: int = 0) -> torch.nn.Module:
    return apply_lora(tiny_bert(seed), LoraSection(r=4, dropout=0.0), TEXT)


def _base_state(model) -> dict[str, torch.Tensor]:
    """The frozen weights of a LoRA model (everything that does not train), cloned."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def test_lora_defaults_adapt_query_and_value_and_train_the_new_head_in_full():
    model = _lora_bert()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_" in n} == {"query", "value"}
    assert any("classifier.modules_to_save" in n for n in trainable)
    # peft's table has no ViT entry: samtune finds its attention query and value layers.
    vit = tiny_vit()
    assert head_modules(vit) == ["classifier"] and lora_targets(vit, LoraSection()) == ["q_proj", "v_proj"]
    assert apply_lora(vit, LoraSection(r=2), IMAGE).get_nb_trainable_parameters()[0] > 0


@pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (4, 2)], ids=["ga1", "ga2"])
def test_sam_with_lora_matches_the_hand_written_loop_and_never_moves_the_base(tmp_path, batch_size, accumulation):
    rows, n_steps, rho, lr = text_rows(8 * 3), 3, 0.05, 0.5
    model = _lora_bert()
    with torch.no_grad():  # LoRA starts its B matrices at 0; move them so that every adapter has a gradient
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    frozen = _base_state(model)
    batches = micro_batches(rows, batch_size)
    steps = [batches[i * accumulation : (i + 1) * accumulation] for i in range(n_steps)]
    reference = reference_sam_sgd(model, steps, rho, lr)  # climbs on the parameters that require grad only

    seen_frozen_moved = []
    ours = copy.deepcopy(model)

    def check_frozen(module, args, kwargs):  # every forward, the ascent's at w + e(w) included
        now = _base_state(ours)
        seen_frozen_moved.append(any(not torch.equal(now[n], frozen[n]) for n in frozen))

    ours.register_forward_pre_hook(check_frozen, with_kwargs=True)
    trainer = sam_sgd_trainer(tmp_path, ours, rows, batch_size, accumulation, n_steps, rho, lr)
    assert len(seen_frozen_moved) == 2 * n_steps * accumulation and not any(seen_frozen_moved)
    assert max_abs_diff(trainer.model, reference) <= 1e-6  # same formula, different code: rounding only
    assert trainer.sam_climb_steps == n_steps
    after = _base_state(trainer.model)
    assert all(torch.equal(after[n], frozen[n]) for n in frozen)  # the base, bit for bit
    plain = reference_sam_sgd(model, steps, 0.0, lr)  # the climb mattered: rho 0 lands elsewhere
    assert max_abs_diff(plain, reference) > 1e-4


def _lora_recipe(tmp_path: Path, model_dir: Path, data: Path, **lora) -> Path:
    path = tmp_path / "lora.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "lora-reviews",
                "model": {"name": str(model_dir), "max_length": 16, "lora": {"r": 4, **lora}},
                "data": {"dataset": str(data)},
                "sam": {"rho": 0.05},
                "training": {"epochs": 2, "learning_rate": 2e-2, "batch_size": 8, "logging_steps": 2},
                "output": {"dir": str(tmp_path / "run")},
            }
        )
    )
    return path


def _logits(model, texts: list[str], tokenizer) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


def test_lora_run_end_to_end_saves_adapters_that_peft_reloads_with_the_same_metrics(tmp_path, text_model_dir):
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = write_csv(tmp_path / "reviews.csv", text_examples(80))
    result = runner.invoke(app, ["train", str(_lora_recipe(tmp_path, text_model_dir, data, merge=True))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "config.yaml",
        "README.md",
        "merged/model.safetensors",
        "merged/tokenizer.json",
    ):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()  # adapters, not a whole model
    metrics = json.loads((run / "metrics.json").read_text())

    # peft's own loading gives the model that was evaluated: same logits, and so the same metrics.
    texts = [r["text"] for r in text_examples(12, seed=5)]
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert AutoConfig.from_pretrained(run).id2label == {0: "neg", 1: "pos"}
    base = AutoModelForSequenceClassification.from_pretrained(text_model_dir, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, run)
    auto = AutoPeftModelForSequenceClassification.from_pretrained(run)
    assert torch.equal(_logits(reloaded, texts, tokenizer), _logits(auto, texts, tokenizer))
    # The frozen base in the reloaded model is the base model's file, bit for bit.
    original = AutoModelForSequenceClassification.from_pretrained(text_model_dir, num_labels=2).state_dict()
    for name, tensor in reloaded.get_base_model().state_dict().items():
        plain = name.replace(".base_layer.", ".")
        if ".lora_" not in name and "modules_to_save" not in name and "original_module" not in name:
            assert torch.equal(tensor, original[plain]), name
    # The merged model is the same function (merging reorders the float sums: 1e-5 on logits of size ~1).
    merged = AutoModelForSequenceClassification.from_pretrained(run / "merged")
    assert torch.allclose(_logits(merged, texts, tokenizer), _logits(reloaded, texts, tokenizer), atol=1e-5)

    # `samtune eval` loads the adapters (merged into the base) and reproduces the run's own evaluation.
    again = runner.invoke(app, ["eval", str(run), "--dataset", str(data), "--split", "train"])
    assert again.exit_code == 0, again.output
    direct = _eval_with_peft(reloaded, data, tokenizer)
    shown = re.search(r"eval_accuracy\s*│\s*([0-9.]+)", again.output)
    assert shown and float(shown.group(1)) == pytest.approx(direct, abs=5e-5)  # printed to 4 decimals
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0

    card = (run / "README.md").read_text()
    assert "library_name: peft" in card and "## LoRA adapters" in card and "query, value" in card
    assert "trained in full:\nclassifier." in card and "merged/" in card
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in card and "id2label=labels" in card
    _run_the_cards_example(run)


def _run_the_cards_example(run: Path, image: Path | None = None) -> None:
    """The card's "How to use" code, run as a user would (the folder for PATH_TO_THIS_FOLDER)."""
    printed = run_card_example(run, **({"'image.jpg'": repr(str(image))} if image is not None else {}))
    labels = set(AutoConfig.from_pretrained(run).id2label.values())
    assert printed and {p["label"] for p in printed[0]} <= labels  # the run's own label names, not LABEL_0


def test_image_lora_run_and_its_cards_example(tmp_path, image_model_dir, image_folder):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(image_model_dir),
            "--dataset",
            str(image_folder),
            "--lora",
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "training.batch_size=8",
        ],
    )
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["modules_to_save"] == ["classifier"]
    _run_the_cards_example(out, next(image_folder.rglob("*.png")))


def _eval_with_peft(model, data: Path, tokenizer) -> float:
    """Accuracy over every row of the CSV, computed here from peft's model (labels in the run's order)."""
    import csv

    rows = list(csv.DictReader(data.open()))
    id2label = {0: "neg", 1: "pos"}  # the run's labels, sorted (config.json in the run directory says so)
    preds = _logits(model, [r["text"] for r in rows], tokenizer).argmax(-1).tolist()
    return sum(id2label[p] == r["label"] for p, r in zip(preds, rows)) / len(rows)


def test_lora_flag_and_overrides(tmp_path, text_model_dir, text_csv):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--lora",
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "model.max_length=16",
            "model.lora.r=2",
            "model.lora.target_modules=[query]",
            "training.batch_size=8",
        ],
    )
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and adapter["target_modules"] == ["query"]
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["lora"]["r"] == 2


def test_lora_with_no_matching_target_module_is_a_usage_error_and_writes_nothing(tmp_path, text_model_dir, text_csv):
    recipe = _lora_recipe(tmp_path, text_model_dir, text_csv, target_modules=["q_proj", "v_proj"])
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "no module of 'bert' matches model.lora.target_modules (q_proj, v_proj)" in result.output
    assert "query" in result.output  # the fix names layers the model has
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(
    ("lora", "says"),
    [
        ({"r": 0}, "model.lora.r"),
        ({"alpha": -1}, "model.lora.alpha"),
        ({"dropout": 1.0}, "model.lora.dropout"),
        ({"target_modules": []}, "must be a non-empty list of module names"),
        ({"rank": 8}, "model.lora.rank"),
    ],
)
def test_bad_lora_settings_are_recipe_errors(lora, says):
    with pytest.raises(RecipeError) as e:
        build_recipe({"model": {"name": "x", "lora": lora}})
    assert says in str(e.value)


def test_init_from_a_lora_run_starts_from_its_merged_weights(tmp_path, text_model_dir, text_csv):
    from safetensors.torch import load_file

    lora_run, full_run = tmp_path / "lora", tmp_path / "full"
    common = ["--dataset", str(text_csv), "--max-steps", "2", "model.max_length=16", "training.batch_size=8"]
    first = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--lora",
            "model.lora.merge=true",
            "--output-dir",
            str(lora_run),
            "--learning-rate",
            "5e-2",
            *common,
        ],
    )
    assert first.exit_code == 0, first.output
    # A full fine-tune from the LoRA run, at a learning rate too small to move anything: it starts at the merge.
    second = runner.invoke(
        app, ["train", "--init-from", str(lora_run), "--output-dir", str(full_run), "--learning-rate", "1e-12", *common]
    )
    assert second.exit_code == 0, second.output
    merged, started = load_file(lora_run / "merged" / "model.safetensors"), load_file(full_run / "model.safetensors")
    assert merged.keys() == started.keys()
    assert max((merged[k] - started[k]).abs().max().item() for k in merged) <= 1e-6
    base = load_file(text_model_dir / "model.safetensors")  # and the merge is not the base: the adapters moved
    assert max((merged[k] - base[k]).abs().max().item() for k in base if "classifier" not in k) > 1e-4
    assert AutoConfig.from_pretrained(full_run).id2label == AutoConfig.from_pretrained(lora_run).id2label


def test_params_presets_find_the_body_and_the_head_inside_peft_wrappers():
    from samtune.optim.selection import climbing_names

    model = _lora_bert()
    head, body = climbing_names(model, "head"), climbing_names(model, "body")
    assert head and all(".classifier.modules_to_save." in n for n in head)
    assert body and all(".lora_" in n and ".bert." in n for n in body)
    assert sorted(head + body) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
