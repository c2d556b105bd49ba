"""samtune.recipe: precedence, YAML quirks, validation that reports everything at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bombs import _alias_bomb
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
        build_recipe(
            {"sam": {"rhoo": 1, "adaptive": "maybe"}, "training": {"warmup": -1}}, ["data.max_train_samples=0"]
        )
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
    assert {
        "quickstart",
        "vit-beans",
        "vit-cifar10",
        "convnext-food101",
        "bert-sst2",
        "distilbert-imdb",
        "roberta-agnews",
        "bert-mrpc",
        "bert-stsb",
        "roberta-goemotions",
        "bert-conll2003",
        "minilm-word-affect",
        "gpt2-wikitext2",
        "smollm2-dolly",
    } <= names
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
    code = (
        "import sys, samtune.recipe; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
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


def test_aesam_settings_are_checked_against_their_bounds():
    recipe = build_recipe({"sam": {"variant": "aesam"}}, ["sam.aesam_decay=0.8", "sam.aesam_c_end=-2"])
    assert (recipe.sam.aesam_decay, recipe.sam.aesam_c_start, recipe.sam.aesam_c_end) == (0.8, 1.0, -2.0)
    with pytest.raises(RecipeError) as err:
        build_recipe({"sam": {"variant": "aesam", "aesam_decay": 1.0, "aesam_c_start": float("nan")}})
    text = " ".join(err.value.problems)
    assert "aesam_decay" in text and "aesam_c_start" in text
    with pytest.raises(RecipeError) as err:
        build_recipe({"sam": {"aesam_decay": 0.5}})  # forgot sam.variant
    assert any("sam.aesam_decay only applies to sam.variant=aesam" in p for p in err.value.problems)


def test_a_value_a_message_quotes_is_cut_short():
    """A wrong value is quoted in a few dozen characters, however large it is (a shared list: 10**6 strings)."""
    row = ["lol"] * 1000
    with pytest.raises(RecipeError) as err:
        build_recipe({"data": {"labels": [row] * 1000}, "model": {"max_length": "9" * 100_000}})
    problems = err.value.problems
    assert len(problems) >= 2 and all(len(p) < 200 for p in problems), [p[:300] for p in problems]
    assert all("..." in p for p in problems)  # the cut is shown, not hidden
    assert len(str(err.value)) < 5000  # 1,001 wrong values (max_length and each row): 20 listed, the rest counted
    assert problems[-1] == "... and 981 more like these"
    assert any(p.startswith("data.labels.0") for p in problems) and any(
        p.startswith("model.max_length") for p in problems
    )


def test_yaml_aliases_that_expand_past_the_limit_are_refused(tmp_path):
    """An alias bomb is refused where the aliases are read, before anything walks the expanded value; aliases that
    stay small still work, and an alias inside its own anchor (a cycle) is refused too."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(5))  # 9**5 = 59,049 strings from 5 short lines
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert len(err.value.problems) == 1 and len(str(err.value)) < 400, str(err.value)[:500]  # not 59,049 'lol's
    assert "alias" in err.value.problems[0] and "line 2" in err.value.problems[0]
    fine = tmp_path / "fine.yaml"
    fine.write_text("data:\n  labels: &two [neg, pos]\n  label_columns: *two\n  label_column: null\n")
    assert load_recipe(str(fine)).data.label_columns == ["neg", "pos"]
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("data:\n  labels: &me [neg, *me]\n")
    with pytest.raises(RecipeError, match="line 2.*alias"):
        load_recipe(str(cycle))


def test_a_duplicate_key_is_refused_with_its_line(tmp_path):
    """YAML takes the last of two equal keys: a whole section written twice would silently lose the first."""
    path = tmp_path / "twice.yaml"
    path.write_text("training:\n  epochs: 5\nsam:\n  rho: 0.1\n  rho: 0.2\ntraining:\n  batch_size: 8\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    text = str(err.value)
    assert "duplicate key 'rho'" in text and "line 5" in text and "line 4" in text  # where, and where first
    merged = tmp_path / "merged.yaml"  # a merge key (<<) is not a duplicate: keys written out win over it
    merged.write_text("sam:\n  <<: &base {rho: 0.1, adaptive: false}\n  rho: 0.2\n")
    assert load_recipe(str(merged)).sam.rho == 0.2


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".", "a\\b", "a\x00b"])
def test_name_is_a_plain_run_name(name):
    """`name` names runs/<name>: a path in it would write elsewhere (an absolute one replaces runs/ altogether)."""
    with pytest.raises(RecipeError) as err:
        build_recipe({"name": name})
    (problem,) = err.value.problems
    assert problem.startswith("name:") and "output.dir" in problem and "--output-dir" in problem


def test_the_run_directory_is_always_under_runs():
    assert build_recipe({"name": "my-run.v2"}).output_dir() == Path("runs") / "my-run.v2"
    for model in ("..", ".", "/models/.."):  # a name made from the model's folder stays one folder in runs/
        assert build_recipe({"model": {"name": model}}).output_dir().parent == Path("runs"), model
    assert build_recipe({"name": "x", "output": {"dir": "../x"}}).output_dir() == Path("../x")  # a path: output.dir


def _list_valued_keys(model: type = None, prefix: str = "") -> list[str]:
    """The dotted keys whose schema takes a list, found by walking the schema (sections inside unions too)."""
    import typing

    from pydantic import BaseModel

    from samtune.recipe import Recipe

    def types_in(annotation):
        yield annotation
        for arg in typing.get_args(annotation):
            yield from types_in(arg)

    keys = []
    for name, field in (model or Recipe).model_fields.items():
        found = list(types_in(field.annotation))
        sections = [t for t in found if isinstance(t, type) and issubclass(t, BaseModel)]
        keys += [k for s in sections for k in _list_valued_keys(s, f"{prefix}{name}.")]
        if any(typing.get_origin(t) is list for t in found):
            keys.append(prefix + name)
    return keys


@pytest.mark.parametrize("key", _list_valued_keys())
def test_a_list_inside_a_list_is_a_recipe_error_naming_the_key(key):
    """`training.report_to: [[wandb]]` was a TypeError (exit 1); every list-valued key says which key is wrong."""
    assert {"training.report_to", "data.labels", "model.lora.target_modules"} <= set(_list_valued_keys())
    with pytest.raises(RecipeError) as err:
        build_recipe({}, [f"{key}=[[a, b], [c]]"])
    assert err.value.problems and all(p.startswith(f"{key}.") or p.startswith(f"{key}:") for p in err.value.problems)
    assert all("[str]" not in p.split(":")[0] for p in err.value.problems)  # the key as typed, no union branch in it


def test_yaml_nested_thousands_of_levels_deep_is_a_recipe_error(tmp_path):
    """PyYAML builds nested values recursively: 5,000 levels (10 KB) must be a recipe error, not a RecursionError."""
    path = tmp_path / "deep.yaml"
    path.write_text("data:\n  labels: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert "nests too deeply" in str(info.value)
