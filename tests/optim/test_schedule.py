"""SAM's radius schedule, its window, which parameters climb and the sharpness it logs, against hand-written loops."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import (
    ListDataset,
    linear_warmup_lr,
    max_abs_diff,
    micro_batches,
    reference_sam_sgd,
    reference_sam_sgd_per_step,
    reference_sharpness,
    text_rows,
    tiny_bert,
)
from trainer_setup import SGD_PLAIN, _args, _steps, _train
from transformers import Trainer, TrainerCallback, TrainingArguments

from samtune import SAMArguments, SAMTrainer
from samtune.errors import RecipeError
from samtune.optim.settings import default_of, sam_window
from samtune.trainer import SAMWindowError
from samtune.recipe import build_recipe

N_STEPS, RHO, LR = 5, 0.1, 0.5
GA = pytest.mark.parametrize(("batch_size", "accumulation"), [(4, 1), (2, 2)], ids=["ga1", "ga2"])


@GA
def test_lr_schedule_scales_rho_with_the_learning_rate(tmp_path, batch_size, accumulation):
    """schedule=lr under linear warmup (2 steps) and decay: rho_t = rho * lr_t / lr, 0 (a plain step) at lr 0."""
    rows, model = text_rows(4 * N_STEPS), tiny_bert()
    lrs = [linear_warmup_lr(LR, t, 2, N_STEPS) for t in range(N_STEPS)]  # 0, .25, .5, .33, .17
    rhos = [RHO * lr / LR for lr in lrs]
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    reference = reference_sam_sgd_per_step(model, steps, rhos, lrs)
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=N_STEPS,
        learning_rate=LR,
        rho=RHO,
        schedule="lr",
        **{**SGD_PLAIN, "lr_scheduler_type": "linear", "warmup_steps": 2},
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == N_STEPS - 1  # the warmup's first step has lr 0: no climb
    constant = reference_sam_sgd_per_step(model, steps, [0.0] + [RHO] * (N_STEPS - 1), lrs)
    assert max_abs_diff(constant, reference) > 1e-5  # the schedule changed the run


def _sam_trainer_with(tmp_path, model, rows, optimizers, **kw):
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=N_STEPS,
        rho=RHO,
        schedule="lr",
        max_grad_norm=0.0,
        weight_decay=0.0,
        train_sampling_strategy="sequential",
        **kw,
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows), optimizers=optimizers)
    trainer.train()
    return trainer


def _logged_rhos(trainer) -> list[float]:
    return [h["sam_rho"] for h in trainer.state.log_history if "sam_rho" in h]


def test_lr_schedule_divides_by_the_optimizers_own_learning_rate(tmp_path):
    """A caller's optimizer (SGD at LR, a constant schedule) and learning_rate left at its default (5e-5): the
    learning rate never moves, so rho_t = rho on every step (the default learning_rate made it 1e4 rho)."""
    rows, model = text_rows(4 * N_STEPS), tiny_bert()
    trained = copy.deepcopy(model)
    sgd = torch.optim.SGD(trained.parameters(), lr=LR)
    trainer = _sam_trainer_with(tmp_path, trained, rows, (sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda t: 1.0)))
    assert trainer.args.learning_rate == 5e-5  # the default, which is not this optimizer's
    reference = reference_sam_sgd(model, _steps(rows, 4, 1, N_STEPS), RHO, LR)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert _logged_rhos(trainer) == [pytest.approx(RHO, rel=1e-12)] * N_STEPS


def test_lr_schedule_follows_each_groups_own_peak(tmp_path):
    """Two parameter groups, the body at LR / 10 and the head at LR, under the Trainer's warmup and decay: each
    group's rate is its own peak times the schedule's factor, and rho_t = rho * that factor (the body's rate over
    learning_rate made it 10 times too small)."""
    rows, model = text_rows(4 * N_STEPS), tiny_bert()
    head = {"classifier.weight", "classifier.bias"}
    trained = copy.deepcopy(model)
    named = list(trained.named_parameters())
    sgd = torch.optim.SGD(
        [
            {"params": [p for n, p in named if n not in head], "lr": LR / 10},
            {"params": [p for n, p in named if n in head], "lr": LR},
        ]
    )
    trainer = _sam_trainer_with(
        tmp_path, trained, rows, (sgd, None), learning_rate=LR, lr_scheduler_type="linear", warmup_steps=2
    )
    factors = [linear_warmup_lr(1.0, t, 2, N_STEPS) for t in range(N_STEPS)]  # 0, .5, 1, 2/3, 1/3
    scale = {n: (1.0 if n in head else 0.1) for n, _ in named}
    reference = reference_sam_sgd_per_step(
        model, _steps(rows, 4, 1, N_STEPS), [RHO * f for f in factors], [LR * f for f in factors], lr_scale=scale
    )
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert _logged_rhos(trainer)[1:] == [pytest.approx(RHO * f, rel=1e-9) for f in factors[1:]]
    too_small = reference_sam_sgd_per_step(
        model, _steps(rows, 4, 1, N_STEPS), [RHO * f / 10 for f in factors], [LR * f for f in factors], lr_scale=scale
    )
    assert max_abs_diff(too_small, reference) > 1e-5  # the comparison sees a radius 10 times off


@GA
@pytest.mark.parametrize(
    ("start", "stop", "sam_steps"), [(0.4, 0.8, {2, 3}), (2, 4, {1, 2, 3})], ids=["fractions", "step-numbers"]
)
def test_window_takes_sam_steps_inside_and_plain_steps_outside(
    tmp_path, batch_size, accumulation, start, stop, sam_steps
):
    rows, model = text_rows(4 * N_STEPS), tiny_bert()
    assert set(range(*sam_window(start, stop, N_STEPS))) == sam_steps
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    rhos = [RHO if t in sam_steps else 0.0 for t in range(N_STEPS)]
    reference = reference_sam_sgd_per_step(model, steps, rhos, [LR] * N_STEPS)
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=N_STEPS,
        learning_rate=LR,
        rho=RHO,
        start=start,
        stop=stop,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == len(sam_steps)
    everywhere = reference_sam_sgd(model, steps, RHO, LR)
    assert max_abs_diff(everywhere, reference) > 1e-5


class _WeightsAfterEachStep(TrainerCallback):
    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_steps_outside_the_window_are_the_stock_step_to_the_bit(tmp_path):
    """SAM on the last of 3 steps only (start=3): steps 1 and 2 are the stock Trainer's to the bit."""
    rows = text_rows(12)
    common = dict(per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3)
    runs = []
    for cls, trainer_cls, kw in ((TrainingArguments, Trainer, {}), (SAMArguments, SAMTrainer, dict(rho=RHO, start=3))):
        weights = _WeightsAfterEachStep()
        trainer = trainer_cls(
            model=tiny_bert(),
            args=_args(tmp_path, cls, **common, **kw),
            train_dataset=ListDataset(rows),
            callbacks=[weights],
        )
        trainer.train()
        runs.append((trainer, weights.after))
    (_, stock), (late, sam) = runs
    for step in (1, 2):
        assert all(torch.equal(stock[step][k], sam[step][k]) for k in stock[step])
    assert any(not torch.equal(stock[3][k], sam[3][k]) for k in stock[3])  # step 3 took SAM's step
    assert late.sam_climb_steps == 1


@pytest.mark.parametrize(
    ("window", "ends"),
    [
        ({"stop": 5}, ("start=0.1 puts its first step at step 7", "stop=5 its last at step 5")),
        ({"start": 61}, ("start=61 puts its first step at step 61", "after the run's last, step 60")),
    ],
    ids=["fraction-after-step-number", "start-past-the-end"],
)
def test_an_empty_window_is_refused_before_any_step(tmp_path, window, ends):
    """A window that holds no step of the run (the default start, 10% of 60 steps, after stop=5; a start past the
    end) would train without SAM and say nothing: refused when training starts, before any step."""
    model = tiny_bert()
    args = _args(
        tmp_path, per_device_train_batch_size=4, max_steps=60, rho=RHO, **{"start": default_of("start"), **window}
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(text_rows(8)))
    with pytest.raises(SAMWindowError) as refused:
        trainer.train()
    assert all(end in str(refused.value) for end in ends), str(refused.value)
    assert trainer.state.global_step == 0 and max_abs_diff(model, tiny_bert()) == 0.0


@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
def test_logged_sharpness_is_the_loss_rise_at_w_plus_e(tmp_path, accumulation):
    """sam_sharpness = L(w + e(w)) - L(w) of the step's mean loss, from the two passes SAM takes anyway."""
    rows, model = text_rows(4), tiny_bert()
    by_hand = reference_sharpness(model, micro_batches(rows, 4 // accumulation), RHO)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=LR,
        rho=RHO,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    logged = [h["sam_sharpness"] for h in trainer.state.log_history if "sam_sharpness" in h]
    assert by_hand > 0 and logged == [pytest.approx(by_hand, abs=1e-6)]


def test_a_climb_on_part_of_the_batch_logs_no_sharpness(tmp_path):
    """ascent_fraction (the default variant): the ascent's loss is the first quarter's, the descent's the whole
    batch's, so their difference is no sharpness: none is logged (not a 0), while the step still climbs."""
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=LR,
        rho=RHO,
        **{**SGD_PLAIN, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25},
    )
    trainer = _train(tiny_bert(), text_rows(12), args)
    logs = [h for h in trainer.state.log_history if "sam_rho" in h]
    assert len(logs) == 3 and logs[-1]["sam_climb_steps"] == 3
    assert all("sam_sharpness" not in h for h in logs), logs


def test_window_and_schedule_are_checked_everywhere(tmp_path):
    for bad, says in (
        ({"start": 1.5}, "whole step number"),
        ({"start": 0.6, "stop": 0.3}, "must come after"),
        ({"schedule": "cosine"}, "schedule"),
        ({"stop": -1}, "stop"),
    ):
        with pytest.raises(ValueError, match=says):
            SAMArguments(output_dir=str(tmp_path), report_to="none", **bad)
        with pytest.raises(RecipeError):
            build_recipe({"sam": bad})
    recipe = build_recipe({"sam": {"schedule": "lr", "start": 0.1, "stop": 100}})
    assert recipe.sam.arguments()["start"] == 0.1 and recipe.sam.arguments()["stop"] == 100


def test_window_arithmetic():
    """Fractions count from the run's length, step numbers from 1; no window is the whole run."""
    assert sam_window(0.0, None, 7) == (0, 7)
    assert sam_window(0.1, None, 188) == (19, 188)  # after the first 10% (18.8 steps)
    assert sam_window(19, 100, 188) == (18, 100)  # the 19th through the 100th step


# The climbing sets written out by name for the tiny BERT (2 layers), independently of the presets' code.
_NORMS = {f"bert.embeddings.LayerNorm.{w}" for w in ("weight", "bias")} | {
    f"bert.encoder.layer.{i}.{part}.LayerNorm.{w}"
    for i in (0, 1)
    for part in ("attention.output", "output")
    for w in ("weight", "bias")
}
_HEAD = {"classifier.weight", "classifier.bias"}


@GA
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize(
    ("spec", "climbing"),
    [
        ("head", lambda names: _HEAD),
        ("norms", lambda names: _NORMS),
        ("!*.bias", lambda names: {n for n in names if not n.endswith(".bias")}),
        (
            "weights",
            lambda names: {n for n in names if not n.endswith(".bias") and n not in _NORMS and "embeddings." not in n},
        ),
    ],
    ids=["head", "norms", "no-biases", "weights"],
)
def test_only_the_chosen_parameters_climb(tmp_path, batch_size, accumulation, adaptive, spec, climbing):
    """The others stay at w in the descent, and ||g|| (or ||w g||) is taken over the climbing ones."""
    rows, model = text_rows(4 * 2), tiny_bert()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    chosen = climbing(names)
    rho = 1.0 if adaptive else RHO
    steps = _steps(rows, batch_size, accumulation, 2)
    reference = reference_sam_sgd(model, steps, rho, LR, adaptive=adaptive, climbing=chosen)
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        learning_rate=LR,
        rho=rho,
        adaptive=adaptive,
        params=spec,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert max_abs_diff(reference_sam_sgd(model, steps, rho, LR, adaptive=adaptive), reference) > 1e-6


def test_params_that_select_nothing_or_do_not_parse_are_refused(tmp_path):
    from samtune import SAMTrainer
    from samtune.trainer import UnsupportedSetupError

    with pytest.raises(UnsupportedSetupError, match="selects no trainable parameter"):
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, params="*.bias,!*.bias"))
    with pytest.raises(UnsupportedSetupError, match="this pattern matches no parameter: 'decoder.*'"):
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, params="decoder.*"))
    with pytest.raises(ValueError, match="preset"):
        _args(tmp_path, params="a,,b")
    with pytest.raises(RecipeError):
        build_recipe({"sam": {"params": "!"}})


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("!*.Bias", ["'!*.Bias' (did you mean '!*.bias'?)"]),
        ("!bert.embedding.*", ["'!bert.embedding.*' (did you mean '!bert.embeddings.*'?)"]),
        ("bert.encoder.*,classifer.*", ["'classifer.*' (did you mean 'classifier.*'?)"]),
        (
            "!*.Bias,bert.encoder.*,classifer.*",
            ["'!*.Bias' (did you mean '!*.bias'?)", "'classifer.*' (did you mean 'classifier.*'?)"],
        ),
    ],
    ids=["case", "module-prefix", "one-of-two", "every-unmatched"],
)
def test_a_pattern_that_matches_no_parameter_is_refused_with_a_suggestion(tmp_path, spec, says):
    """Each of these trained before: the other patterns matched, so the typo went unseen (`!*.Bias` removed
    nothing and every bias climbed). Refused when the trainer is built, before any step, every unmatched one named."""
    from samtune import SAMTrainer
    from samtune.trainer import UnsupportedSetupError

    with pytest.raises(UnsupportedSetupError) as err:
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, params=spec))
    message = str(err.value)
    assert f"sam.params={spec!r}" in message and "no parameter: " in message
    assert all(text in message for text in says), message
    assert message.count("did you mean") == len(says)


def _tiny_t5():
    """T5's norms are T5LayerNorm (a scale, no bias, no mean): not torch's LayerNorm."""
    from transformers import T5Config, T5ForSequenceClassification

    torch.manual_seed(0)
    return T5ForSequenceClassification(
        T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
    )


def _tiny_llama():
    """Llama's norms are LlamaRMSNorm."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )


# The norm layers' parameters by the names these architectures give them (written out, not found by type), and
# their embedding tables (T5's `shared` and its relative position buckets, Llama's `embed_tokens`).
_T5_NORMS = {
    f"transformer.{stack}.{where}.weight"
    for stack, wheres in (
        ("encoder", ("block.0.layer.0.layer_norm", "block.0.layer.1.layer_norm", "final_layer_norm")),
        (
            "decoder",
            (
                "block.0.layer.0.layer_norm",
                "block.0.layer.1.layer_norm",
                "block.0.layer.2.layer_norm",
                "final_layer_norm",
            ),
        ),
    )
    for where in wheres
}
_T5_EMBEDDINGS = {
    "transformer.shared.weight",
    *(
        f"transformer.{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        for stack in ("encoder", "decoder")
    ),
}
_LLAMA_NORMS = {
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.norm.weight",
}


def _tiny_roberta_prelayernorm():
    """Its classes carry "LayerNorm" in the model's name (RobertaPreLayerNormLMHead holds the head's bias)."""
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    torch.manual_seed(0)
    return RobertaPreLayerNormForMaskedLM(
        RobertaPreLayerNormConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=32,
        )
    )


_PRE_LN_NORMS = {
    f"{where}.{w}"
    for w in ("weight", "bias")
    for where in (
        "roberta_prelayernorm.embeddings.LayerNorm",
        "roberta_prelayernorm.encoder.layer.0.attention.LayerNorm",
        "roberta_prelayernorm.encoder.layer.0.intermediate.LayerNorm",
        "roberta_prelayernorm.LayerNorm",
        "lm_head.layer_norm",
    )
}
_PRE_LN_EMBEDDINGS = {
    f"roberta_prelayernorm.embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")
}


@pytest.mark.parametrize(
    ("build", "norms", "embeddings"),
    [
        (_tiny_t5, _T5_NORMS, _T5_EMBEDDINGS),
        (_tiny_llama, _LLAMA_NORMS, {"model.embed_tokens.weight"}),
        (_tiny_roberta_prelayernorm, _PRE_LN_NORMS, _PRE_LN_EMBEDDINGS),
    ],
    ids=["t5", "llama", "roberta-prelayernorm"],
)
def test_norms_and_weights_presets_find_norm_layers_by_type_not_by_torch_class(build, norms, embeddings):
    """SAM-ON's `norms` climbs on every normalisation layer and `weights` leaves them out, whatever their class."""
    from samtune.optim.selection import climbing_names

    model = build()
    names = {n for n, _ in model.named_parameters()}
    assert norms <= names and embeddings <= names
    assert set(climbing_names(model, "norms")) == norms
    assert set(climbing_names(model, "weights")) == {n for n in names - norms - embeddings if not n.endswith(".bias")}
