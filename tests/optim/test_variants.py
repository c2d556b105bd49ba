"""The efficient SAM variants against hand-written references of their published update rules."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny import (
    ListDataset,
    max_abs_diff,
    reference_aesam_sgd,
    reference_ascent_fraction_sgd,
    reference_looksam_sgd,
    reference_sam_sgd,
    reference_scheduled_sam_sgd,
    text_rows,
    tiny_bert,
    tiny_resnet,
    image_rows,
)
from trainer_setup import SGD_PLAIN, _args, _NaNLoss, _poison_rows, _steps, _train
from transformers import Trainer, TrainerCallback, TrainingArguments

from samtune import SAMArguments, SAMTrainer
from samtune.optim.variants import variant_class
from samtune.optim.variants.aesam import aesam_statistics
from samtune.optim.variants.ascent_fraction import ascent_rows
from samtune.optim.variants.looksam import looksam_direction, looksam_gradient_
from samtune.optim.variants.rst import rst_draw

RHO, LR, N_STEPS = 0.05, 0.5, 5
GA = pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (4, 2)], ids=["ga1", "ga2"])


def _run(tmp_path, model, rows, batch_size, accumulation, **variant):
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=N_STEPS,
        learning_rate=LR,
        rho=RHO,
        **SGD_PLAIN,
        **variant,
    )
    return _train(copy.deepcopy(model), rows, args)


def _far(a, b) -> bool:
    """Two runs that a test tells apart: more than 1e-4 apart in some weight (parity is 1e-6)."""
    return max_abs_diff(a, b) > 1e-4


@GA
def test_every_k_matches_sam_on_every_kth_step_only(tmp_path, batch_size, accumulation):
    rows, model, k = text_rows(8 * N_STEPS), tiny_bert(), 2
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    reference = reference_scheduled_sam_sgd(model, steps, RHO, LR, [t % k == 0 for t in range(N_STEPS)])
    trainer = _run(tmp_path, model, rows, batch_size, accumulation, sam_variant="every_k", every_k=k)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == 3  # steps 0, 2 and 4 of 5
    assert _far(reference, reference_sam_sgd(model, steps, RHO, LR))  # not exact SAM
    assert _far(reference, reference_sam_sgd(model, steps, 0.0, LR))  # not plain SGD


@GA
def test_rst_matches_sam_on_its_random_steps_only(tmp_path, batch_size, accumulation):
    rows, model, p = text_rows(8 * N_STEPS), tiny_bert(), 0.5
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    trainer = _run(tmp_path, model, rows, batch_size, accumulation, sam_variant="rst", rst_probability=p)
    schedule = [rst_draw(t, p, seed=trainer.args.seed) for t in range(N_STEPS)]
    assert 0 < sum(schedule) < N_STEPS  # both kinds of step happen in this run
    assert trainer.sam_climb_steps == sum(schedule)
    reference = reference_scheduled_sam_sgd(model, steps, RHO, LR, schedule)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    flipped = reference_scheduled_sam_sgd(model, steps, RHO, LR, [not s for s in schedule])
    assert _far(reference, flipped)


def test_rst_coin_is_fair_deterministic_and_seeded():
    draws = [rst_draw(t, 0.3, seed=7) for t in range(4000)]
    assert draws == [rst_draw(t, 0.3, seed=7) for t in range(4000)]  # the same on every process and resume
    # Binomial(4000, 0.3): standard deviation sqrt(4000 * 0.3 * 0.7) = 29 draws; allow 4 of them.
    assert abs(sum(draws) - 1200) < 4 * 29
    assert draws != [rst_draw(t, 0.3, seed=8) for t in range(4000)]
    assert all(rst_draw(t, 1.0, 0) for t in range(50)) and not any(rst_draw(t, 0.0, 0) for t in range(50))


@GA
def test_ascent_fraction_climbs_along_the_head_of_each_micro_batch(tmp_path, batch_size, accumulation):
    rows, model, fraction = text_rows(8 * N_STEPS), tiny_bert(), 0.25
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    head = ascent_rows(batch_size, fraction)
    assert head == (2 if batch_size == 8 else 1)
    reference = reference_ascent_fraction_sgd(model, steps, RHO, LR, head)
    trainer = _run(
        tmp_path, model, rows, batch_size, accumulation, sam_variant="ascent_fraction", ascent_fraction=fraction
    )
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert _far(reference, reference_sam_sgd(model, steps, RHO, LR))


def test_ascent_rows_rounds_up_and_keeps_one():
    assert [ascent_rows(n, 0.25) for n in (1, 3, 4, 5, 8, 32)] == [1, 1, 1, 2, 2, 8]
    assert ascent_rows(10, 1.0) == 10 and ascent_rows(10, 0.3) == 3


@GA
@pytest.mark.parametrize("k", [2, 3])
def test_looksam_matches_its_algorithm(tmp_path, batch_size, accumulation, k):
    rows, model, alpha = text_rows(8 * N_STEPS), tiny_bert(), 0.7
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    reference = reference_looksam_sgd(model, steps, RHO, LR, k, alpha)
    trainer = _run(
        tmp_path, model, rows, batch_size, accumulation, sam_variant="looksam", looksam_k=k, looksam_alpha=alpha
    )
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == len(range(0, N_STEPS, k))
    # Reusing g_v is neither SAM every k steps (plain steps in between) nor exact SAM.
    every_k = reference_scheduled_sam_sgd(model, steps, RHO, LR, [t % k == 0 for t in range(N_STEPS)])
    assert _far(reference, every_k)
    assert _far(reference, reference_sam_sgd(model, steps, RHO, LR))


def test_looksam_direction_is_orthogonal_to_g_and_reuse_follows_the_formula():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    g_s = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    g_v = looksam_direction(g, g_s)
    dot = sum((a.double() * v.double()).sum() for a, v in zip(g, g_v))
    assert abs(dot.item()) < 1e-5  # <g, g_v> = 0
    # g_s = g_v + c g: what is removed is parallel to g.
    c = sum((a * b).sum() for a, b in zip(g, g_s)) / sum((a * a).sum() for a in g)
    for a, b, v in zip(g, g_s, g_v):
        torch.testing.assert_close(v, b - c * a)
    new = [a.clone() for a in g]
    looksam_gradient_(new, g_v, alpha=0.5)
    norm = lambda xs: torch.sqrt(sum((x**2).sum() for x in xs))  # noqa: E731
    for a, v, n in zip(g, g_v, new):
        torch.testing.assert_close(n, a + 0.5 * norm(g) / norm(g_v) * v)


def test_looksam_resumes_with_its_sharpness_direction(tmp_path):
    """A checkpoint carries g_v: a run stopped between LookSAM's SAM steps resumes to the same weights."""
    rows, model = text_rows(8 * N_STEPS), tiny_bert()
    variant = dict(sam_variant="looksam", looksam_k=3, looksam_alpha=0.7)
    whole = _run(tmp_path / "whole", model, rows, 8, 1, **variant)

    common = dict(per_device_train_batch_size=8, learning_rate=LR, rho=RHO, **SGD_PLAIN, **variant)
    first = _args(tmp_path / "first", max_steps=N_STEPS, save_strategy="steps", save_steps=2, **common)
    # Train 2 steps (SAM step 0, reuse step 1), save, then resume in a fresh trainer.
    partial = _args(tmp_path / "first", max_steps=2, save_strategy="steps", save_steps=2, **common)
    SAMTrainer(model=copy.deepcopy(model), args=partial, train_dataset=ListDataset(rows)).train()
    checkpoint = tmp_path / "first" / "out" / "checkpoint-2"
    assert (checkpoint / "samtune_looksam.pt").is_file()  # g_v, written before trainer_state.json marks it complete
    records = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert records["SAMState"]["attributes"]["variant"] == "looksam"
    resumed = SAMTrainer(model=copy.deepcopy(model), args=first, train_dataset=ListDataset(rows))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert max_abs_diff(resumed.model, whole.model) <= 1e-6


AESAM = dict(aesam_decay=0.5, aesam_c_start=0.5, aesam_c_end=-0.5)  # both kinds of step within 5 steps (checked)


@GA
def test_aesam_matches_its_algorithm_and_counts_its_passes(tmp_path, batch_size, accumulation):
    """AE-SAM against the hand-written Algorithm 1: the decision on the step's whole gradient (the same at
    accumulation 1 and 2), the climb from it, the plain step with it; the passes are one per micro-batch, two on
    the steps that climbed."""
    rows, model = text_rows(8 * N_STEPS), tiny_bert()
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    reference, climbed = reference_aesam_sgd(
        model, steps, RHO, LR, AESAM["aesam_decay"], AESAM["aesam_c_start"], AESAM["aesam_c_end"]
    )
    assert 0 < sum(climbed) < N_STEPS, climbed  # both kinds of step happen in this run
    forwards = []
    start = copy.deepcopy(model)
    start.register_forward_pre_hook(lambda module, args: forwards.append(1))
    trainer = _run(tmp_path, start, rows, batch_size, accumulation, sam_variant="aesam", **AESAM)  # copies the hook
    # 1e-6: the same maths in another order of float32 ops; the schedules below differ by more than 1e-4.
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == sum(climbed)
    assert len(forwards) == accumulation * (N_STEPS + sum(climbed))
    assert trainer.sam_state.variant.seen == N_STEPS
    every_step, _ = reference_aesam_sgd(model, steps, RHO, LR, 0.5, -100.0, -100.0)  # c so low that every step climbs
    assert _far(reference, every_step)  # the plain steps are plain
    assert _far(reference, reference_sam_sgd(model, steps, 0.0, LR))  # not plain SGD
    if accumulation > 1:  # one climb per step, from its whole gradient: not one per micro-batch
        assert _far(reference, reference_scheduled_sam_sgd(model, steps, RHO, LR, climbed))


class _VariantStates(TrainerCallback):
    """The variant's state after each optimizer step."""

    def __init__(self):
        self.trainer, self.states = None, []

    def on_step_end(self, args, state, control, **kwargs):
        self.states.append(self.trainer.sam_state.variant.state_dict())


@pytest.mark.parametrize(("c", "nan_call"), [(100.0, 3), (-100.0, 5)], ids=["never-climbs", "always-climbs"])
def test_aesam_statistics_leave_out_a_step_skipped_for_a_nonfinite_loss(tmp_path, c, nan_call):
    """Step 2's first micro-batch has a NaN loss (on_nonfinite="skip"): the step is skipped, and AE-SAM's running
    statistics after it are those before it (its second micro-batch's gradient, finite, is not fed to them), nor
    does it climb. Forward calls: 2 a step at accumulation 2, 2 more on a step that climbs."""
    rows, _, _ = _poison_rows()
    aesam = dict(sam_variant="aesam", aesam_c_start=c, aesam_c_end=c, on_nonfinite="skip", rho=0.05, **SGD_PLAIN)
    args = _args(
        tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=0.5, **aesam
    )
    recorder = _VariantStates()
    trainer = SAMTrainer(model=_NaNLoss({nan_call}), args=args, train_dataset=ListDataset(rows * 3))
    recorder.trainer = trainer
    trainer.add_callback(recorder)
    trainer.train()
    assert trainer.sam_nonfinite_skipped == 1
    first, skipped, last = recorder.states
    assert first["seen"] == 1 and first["mean"] > 0  # the first step's gradient fed them
    assert skipped == first  # before the fix: seen 2, mean and var moved by the second micro-batch's gradient
    assert last["seen"] == 2 and last["mean"] != first["mean"]
    assert trainer.sam_climb_steps == (2 if c < 0 else 0)  # the skipped step does not climb


def test_aesam_rule_follows_the_running_statistics():
    """The trigger, step by step, against the rule written out: x >= mu + c sqrt(var), mu and var from 0."""
    variant = variant_class("aesam")(aesam_decay=0.9, aesam_c_start=1.0, aesam_c_end=-1.0)
    xs = [4.0, 3.0, 5.0, 2.0, 2.5, 9.0, 1.0, 3.0]
    mu = var = 0.0
    for t, x in enumerate(xs):
        mu = 0.9 * mu + 0.1 * x
        var = 0.9 * var + 0.1 * (x - mu) ** 2
        c = 1.0 - 2.0 * t / len(xs)
        assert variant.climbs_given(x, t / len(xs)) == (x >= mu + c * var**0.5), t
    assert (variant.mean, variant.var, variant.seen) == (pytest.approx(mu), pytest.approx(var), len(xs))
    assert not variant.climbs_given(float("inf"), 0.5) and variant.seen == len(xs)  # overflow: left out
    assert aesam_statistics(0.0, 0.0, 2.0, 0.5) == (1.0, 0.5)  # mu = 1, var = 0.5 * (2 - 1)^2
    restored = variant_class("aesam")()
    restored.load_state_dict(variant.state_dict())
    assert restored.state_dict() == variant.state_dict() and variant_class("aesam")().state_dict() == {}


def test_variants_keep_batchnorm_statistics_of_one_forward(tmp_path):
    """On the steps a variant climbs, BatchNorm's running statistics still move once per batch."""
    rows = image_rows(8, size=16)
    for variant in ("every_k", "looksam", "ascent_fraction", "rst"):
        model = tiny_resnet()
        args = _args(
            tmp_path / variant,
            per_device_train_batch_size=8,
            max_steps=1,
            rho=RHO,
            sam_variant=variant,
            rst_probability=1.0,
            **SGD_PLAIN,
        )
        trainer = _train(copy.deepcopy(model), rows, args)
        assert trainer.sam_climb_steps == 1
        tracked = [m.num_batches_tracked.item() for m in trainer.model.modules() if hasattr(m, "num_batches_tracked")]
        assert tracked and all(n == 1 for n in tracked), (variant, tracked)


class _NormFirst(torch.nn.Module):
    """BatchNorm on the inputs, then a linear classifier: the normalisation's input depends on no weight, so a
    forward on the whole micro-batch sets the same running statistics at w and at w + e(w)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.BatchNorm1d(4)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, labels):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.linear(self.norm(x))
        return SequenceClassifierOutput(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)


@pytest.mark.parametrize("variant", ["sam", "ascent_fraction"])
def test_running_statistics_after_a_step_are_the_stock_steps(tmp_path, variant):
    """The ascent of `ascent_fraction` sees part of the micro-batch: it must leave BatchNorm's running statistics
    alone (the descent, on the whole micro-batch, sets them). Bit-equal: the normalisation's input is the data,
    so its statistics come from the same op on the same rows as in the stock step."""
    g = torch.Generator().manual_seed(3)
    x, labels = 1.0 + 2.0 * torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    rows = [{"x": x[i], "labels": labels[i]} for i in range(8)]
    common = dict(per_device_train_batch_size=8, max_steps=1, learning_rate=LR, **SGD_PLAIN)
    stock = _train(_NormFirst(), rows, _args(tmp_path / "stock", TrainingArguments, **common), Trainer)
    sam = _train(
        _NormFirst(), rows, _args(tmp_path / variant, rho=RHO, sam_variant=variant, ascent_fraction=0.25, **common)
    )
    assert sam.sam_climb_steps == 1
    expected = stock.model.norm.state_dict()
    for name, value in sam.model.norm.state_dict().items():
        if name.startswith(("running_", "num_batches")):
            assert torch.equal(value, expected[name]), (name, value, expected[name])


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("sam_variant", "esam", "unknown SAM variant"),
        ("every_k", 0, "every_k"),
        ("looksam_k", 0, "looksam_k"),
        ("looksam_alpha", -1.0, "looksam_alpha"),
        ("ascent_fraction", 0.0, "ascent_fraction"),
        ("ascent_fraction", 1.5, "ascent_fraction"),
        ("rst_probability", 2.0, "rst_probability"),
        ("aesam_decay", 1.0, "aesam_decay must be a number >= 0 and < 1"),
        ("aesam_decay", -0.1, "aesam_decay"),
        ("aesam_c_start", float("nan"), "aesam_c_start"),
        ("aesam_c_end", float("inf"), "aesam_c_end"),
    ],
)
def test_bad_variant_settings_are_refused(tmp_path, field, value, says):
    with pytest.raises(ValueError, match=says):
        SAMArguments(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_variant_extra_cost_shares():
    assert variant_class("sam")().extra_pass_share == 1.0
    assert variant_class("every_k")(every_k=4).extra_pass_share == 0.25
    assert variant_class("looksam")(looksam_k=5).extra_pass_share == 0.2
    assert variant_class("rst")(rst_probability=0.3).extra_pass_share == 0.3
    # AE-SAM: P(Z >= c) for normal Z, over c from 1 to -1 (symmetric about 0: a half), or at c = 1 throughout.
    assert variant_class("aesam")().extra_pass_share == pytest.approx(0.5, abs=1e-9)
    assert variant_class("aesam")(aesam_c_end=1.0).extra_pass_share == pytest.approx(0.158655, abs=1e-6)
