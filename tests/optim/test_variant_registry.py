"""The SAM variant registry: a variant defined and registered in this file alone trains through SAMTrainer and the
command line (`sam.variant=<name>`), with no edit under samtune/; the registry's rules and what derives from it."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from tiny import max_abs_diff, reference_scheduled_sam_sgd, text_rows, tiny_bert
from trainer_setup import SGD_PLAIN, _args, _steps, _train
from typer.testing import CliRunner

from samtune.optim.settings import setting_specs
from samtune.optim.variants import Variant, register_variant, variant_class, variant_names, variant_of

RHO, LR, N_STEPS = 0.05, 0.5, 5


@register_variant
class OddSteps(Variant):
    """A toy variant: SAM on the odd optimizer steps (1, 3, ...), the stock step on the others."""

    name = "odd_steps"
    summary = "SAM on odd optimizer steps only"

    def climbs_on(self, step: int) -> bool:
        return step % 2 == 1


def test_a_variant_registered_in_a_test_file_trains_through_samtrainer(tmp_path):
    """Against the hand-written loop: SAM on steps 1 and 3 of 5, plain SGD on 0, 2 and 4; with accumulation (the
    SAM steps' ascent per micro-batch, the update the mean over the effective batch)."""
    rows, model = text_rows(8 * N_STEPS), tiny_bert()
    steps = _steps(rows, 4, 2, N_STEPS)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=N_STEPS,
        learning_rate=LR,
        rho=RHO,
        sam_variant="odd_steps",
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    reference = reference_scheduled_sam_sgd(model, steps, RHO, LR, [t % 2 == 1 for t in range(N_STEPS)])
    # 1e-6: the same SAM maths in another order of float32 ops; the schedules below differ by more than 1e-4.
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == 2
    for other in ([t % 2 == 0 for t in range(N_STEPS)], [True] * N_STEPS):  # SAM on the even steps; on every step
        assert max_abs_diff(reference, reference_scheduled_sam_sgd(model, steps, RHO, LR, other)) > 1e-4


def test_a_variant_registered_in_a_test_file_trains_from_the_command_line(tmp_path, text_model_dir, text_csv):
    from samtune.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            str(a)
            for a in (
                "train",
                "--model",
                text_model_dir,
                "--dataset",
                text_csv,
                "--output-dir",
                out,
                "--max-steps",
                4,
                "sam.variant=odd_steps",
                "sam.start=0",
                "data.max_train_samples=40",
                "training.batch_size=8",
            )
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sam_variant"] == "odd_steps" and metrics["sam_climb_steps"] == 2  # steps 1 and 3 of 0-3
    assert "SAM on odd optimizer steps only" in (out / "README.md").read_text()  # the card: the variant's own words
    assert yaml.safe_load((out / "config.yaml").read_text())["sam"]["variant"] == "odd_steps"


def test_the_registry_lists_looks_up_and_refuses():
    assert variant_names()[0] == "sam" and {"every_k", "looksam", "ascent_fraction", "rst", "odd_steps"} <= set(
        variant_names()
    )
    assert variant_class("odd_steps") is OddSteps
    with pytest.raises(ValueError, match="unknown SAM variant 'esam': choose one of sam, "):
        variant_class("esam")
    with pytest.raises(ValueError, match="registered already"):
        register_variant(type("Other", (Variant,), {"name": "odd_steps"}))
    with pytest.raises(ValueError, match="not a SAM setting"):
        register_variant(type("Odd", (Variant,), {"name": "odd_k", "settings": ("odd_k",)}))
    with pytest.raises(ValueError, match="belongs to the variant 'every_k'"):
        register_variant(type("Every", (Variant,), {"name": "every_j", "settings": ("every_k",)}))
    assert "odd_k" not in variant_names() and "every_j" not in variant_names()
    with pytest.raises(ValueError, match=r"every_k must be a whole number >= 1 \(got 0\)"):  # SAMSettings' bounds
        variant_class("every_k")(every_k=0)
    with pytest.raises(TypeError, match="looksam_k is not a setting of the SAM variant 'every_k'"):
        variant_class("every_k")(looksam_k=3)


def test_each_variant_setting_belongs_to_the_variant_whose_module_lists_it():
    owners = {s.name: s.variant for s in setting_specs() if s.variant is not None}
    assert owners == {
        "every_k": "every_k",
        "looksam_k": "looksam",
        "looksam_alpha": "looksam",
        "ascent_fraction": "ascent_fraction",
        "rst_probability": "rst",
        "aesam_decay": "aesam",
        "aesam_c_start": "aesam",
        "aesam_c_end": "aesam",
    }
    assert variant_of("rho") is None and variant_class("looksam").settings == ("looksam_k", "looksam_alpha")


def test_listing_the_variants_imports_no_torch():
    """The command line's help and a recipe's validation list the variants: that stays free of torch."""
    import subprocess
    import sys

    from conftest import pythonpath

    code = (
        "import sys; from samtune.optim.variants import variant_names, variant_class; "
        "[variant_class(n).settings for n in variant_names()]; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": pythonpath()}
    )
    assert out.stdout.strip() == "False"
