"""samtune.recipe: precedence, YAML quirks, validation that reports everything at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import pythonpath

from samtune.errors import RecipeError, UsageError
from samtune.recipe import SAMSection, build_recipe, builtin_recipes, load_recipe, resolve_package_path


def test_precedence_defaults_recipe_overrides_flags():
    raw = {"training": {"epochs": 5, "learning_rate": 1e-3, "batch_size": 16}, "sam": {"rho": 0.1}}
    recipe = build_recipe(raw, ["training.epochs=7", "sam.rho=0.2"], {"training.epochs": 9})
    assert recipe.training.epochs == 9  # flag > override > recipe
    assert recipe.sam.rho == 0.2  # override > recipe
    assert recipe.training.batch_size == 16  # recipe > default
    assert recipe.training.weight_decay == 0.01  # default


def test_yaml_exponent_without_a_dot_reads_as_a_number(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("training:\n  learning_rate: 5e-5\n")  # YAML 1.1 reads this as the string '5e-5'
    assert load_recipe(str(path)).training.learning_rate == pytest.approx(5e-5)


def test_words_yaml_1_1_reads_as_booleans_stay_words(tmp_path):
    """`save_strategy=no` is the word no, in an override and in a file alike; booleans still take true/false."""
    recipe = build_recipe({}, ["training.save_strategy=no", "training.load_best_model_at_end=false", "description=Off"])
    assert recipe.training.save_strategy == "no" and recipe.description == "Off"  # the words typed
    path = tmp_path / "r.yaml"
    path.write_text("description: yes\ntraining:\n  save_strategy: no\n  load_best_model_at_end: False\n")
    from_file = load_recipe(str(path))
    assert from_file.training.save_strategy == "no" and from_file.description == "yes"
    assert from_file.training.load_best_model_at_end is False
    assert build_recipe({}, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    assert build_recipe({}, ["model.trust_remote_code=no"]).model.trust_remote_code is False  # the schema reads it
    saved = tmp_path / "saved.yaml"  # and the words survive a save and a reload
    saved.write_text(recipe.to_yaml())
    assert load_recipe(str(saved)).description == "Off"


def test_recipe_named_after_its_file(tmp_path):
    path = tmp_path / "my-run.yaml"
    path.write_text("sam: {rho: 0.1}\n")
    recipe = load_recipe(str(path))
    assert recipe.name == "my-run" and str(recipe.output_dir()) == "runs/my-run"


def test_errors_are_all_reported_with_dotted_keys_and_suggestions():
    with pytest.raises(RecipeError) as err:
        build_recipe({"sam": {"rhoo": 1, "adaptive": "maybe"}, "training": {"warmup": -1}}, ["data.max_train_samples=0"])
    problems = err.value.problems
    assert len(problems) == 4
    assert any("sam.rhoo" in p and "did you mean 'sam.rho'" in p for p in problems)
    assert any(p.startswith("sam.adaptive") for p in problems)
    assert any(p.startswith("training.warmup") for p in problems)
    assert any(p.startswith("data.max_train_samples") for p in problems)


def test_eval_strategy_steps_needs_eval_steps():
    with pytest.raises(RecipeError, match="eval_steps"):
        build_recipe({"training": {"eval_strategy": "steps"}})


def test_builtin_recipes_cover_the_common_tasks():
    names = set(builtin_recipes())
    assert {"quickstart", "vit-beans", "vit-cifar10", "convnext-food101", "bert-sst2", "distilbert-imdb",
            "roberta-agnews", "bert-mrpc", "bert-stsb", "roberta-goemotions", "bert-conll2003", "minilm-word-affect", "gpt2-wikitext2", "smollm2-dolly"} <= names  # fmt: skip
    for name in names:
        recipe = load_recipe(name)
        assert recipe.model.name and recipe.data.dataset and recipe.name == name
        if recipe.sam.adaptive:
            assert recipe.sam.rho >= 0.5  # ASAM's radius is on another scale
        else:  # samtune's shipped defaults for a pretrained fine-tune, every setting
            assert recipe.sam.arguments() == SAMSection().arguments()


def test_package_paths_resolve_without_importing(tmp_path):
    pkg = tmp_path / "shipped_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")  # importing it would fail
    code = "from samtune.recipe import resolve_package_path as r; print(r('package:shipped_pkg/model'))"
    env = {**os.environ, "PYTHONPATH": pythonpath(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(pkg / "model")
    with pytest.raises(UsageError, match="not installed"):
        resolve_package_path("package:no_such_package_xyz/model")


def test_loading_a_recipe_imports_nothing_heavy():
    code = "import sys, samtune.recipe; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_variant_settings_need_their_variant():
    recipe = build_recipe({"sam": {"variant": "looksam", "looksam_k": 4}}, ["sam.looksam_alpha=0.5"])
    assert (recipe.sam.variant, recipe.sam.looksam_k, recipe.sam.looksam_alpha) == ("looksam", 4, 0.5)
    with pytest.raises(RecipeError) as err:
        build_recipe({"sam": {"every_k": 4}})  # forgot sam.variant: would silently train exact SAM
    assert any("sam.every_k only applies to sam.variant=every_k" in p for p in err.value.problems)
    with pytest.raises(RecipeError, match="sam.variant"):
        build_recipe({"sam": {"variant": "esam"}})
