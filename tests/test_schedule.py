"""SAM's radius schedule, its window, which parameters climb and the sharpness it logs, against hand-written loops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_trainer import SGD_PLAIN, _args, _steps, _train
from tiny import (
    linear_warmup_lr,
    max_abs_diff,
    micro_batches,
    reference_sam_sgd,
    reference_sam_sgd_per_step,
    text_rows,
    tiny_bert,
)
from transformers import Trainer, TrainingArguments

from samtune import SAMArguments
from samtune.errors import RecipeError
from samtune.optim.settings import sam_window
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
    args = _args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                 max_steps=N_STEPS, learning_rate=LR, rho=RHO, schedule="lr",
                 **{**SGD_PLAIN, "lr_scheduler_type": "linear", "warmup_steps": 2})  # fmt: skip
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == N_STEPS - 1  # the warmup's first step has lr 0: no climb
    constant = reference_sam_sgd_per_step(model, steps, [0.0] + [RHO] * (N_STEPS - 1), lrs)
    assert max_abs_diff(constant, reference) > 1e-5  # the schedule changed the run


@GA
@pytest.mark.parametrize(("start", "stop", "sam_steps"), [(0.4, 0.8, {2, 3}), (2, 4, {1, 2, 3})],
                         ids=["fractions", "step-numbers"])  # fmt: skip
def test_window_takes_sam_steps_inside_and_plain_steps_outside(tmp_path, batch_size, accumulation, start, stop, sam_steps):
    rows, model = text_rows(4 * N_STEPS), tiny_bert()
    assert set(range(*sam_window(start, stop, N_STEPS))) == sam_steps
    steps = _steps(rows, batch_size, accumulation, N_STEPS)
    rhos = [RHO if t in sam_steps else 0.0 for t in range(N_STEPS)]
    reference = reference_sam_sgd_per_step(model, steps, rhos, [LR] * N_STEPS)
    args = _args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                 max_steps=N_STEPS, learning_rate=LR, rho=RHO, start=start, stop=stop, **SGD_PLAIN)  # fmt: skip
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert trainer.sam_climb_steps == len(sam_steps)
    everywhere = reference_sam_sgd(model, steps, RHO, LR)
    assert max_abs_diff(everywhere, reference) > 1e-5


def test_steps_outside_the_window_are_the_stock_step_to_the_bit(tmp_path):
    rows = text_rows(8)
    common = dict(per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3)
    stock = _train(tiny_bert(), rows, _args(tmp_path, TrainingArguments, **common), Trainer)
    late = _train(tiny_bert(), rows, _args(tmp_path, rho=RHO, start=3, **common))  # SAM from step 3 of 2
    s1, s2 = stock.model.state_dict(), late.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert late.sam_climb_steps == 0


@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
def test_logged_sharpness_is_the_loss_rise_at_w_plus_e(tmp_path, accumulation):
    """sam_sharpness = L(w + e(w)) - L(w) of the step's mean loss, from the two passes SAM takes anyway."""
    rows, model = text_rows(4), tiny_bert()
    by_hand = 0.0
    for batch in micro_batches(rows, 4 // accumulation):
        probe = copy.deepcopy(model).train()
        params = [p for p in probe.parameters() if p.requires_grad]
        loss = probe(**batch).loss
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(RHO * g / (norm + 1e-12))
            by_hand += (float(probe(**batch).loss) - float(loss)) / accumulation
    args = _args(tmp_path, per_device_train_batch_size=4 // accumulation, gradient_accumulation_steps=accumulation,
                 max_steps=1, learning_rate=LR, rho=RHO, **SGD_PLAIN)  # fmt: skip
    trainer = _train(copy.deepcopy(model), rows, args)
    logged = [h["sam_sharpness"] for h in trainer.state.log_history if "sam_sharpness" in h]
    assert by_hand > 0 and logged == [pytest.approx(by_hand, abs=1e-6)]


def test_window_and_schedule_are_checked_everywhere(tmp_path):
    for bad, says in (({"start": 1.5}, "whole step number"), ({"start": 0.6, "stop": 0.3}, "must come after"),
                      ({"schedule": "cosine"}, "schedule"), ({"stop": -1}, "stop")):  # fmt: skip
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
    f"bert.encoder.layer.{i}.{part}.LayerNorm.{w}" for i in (0, 1) for part in ("attention.output", "output")
    for w in ("weight", "bias")
}  # fmt: skip
_HEAD = {"classifier.weight", "classifier.bias"}


@GA
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize(
    ("spec", "climbing"),
    [
        ("head", lambda names: _HEAD),
        ("norms", lambda names: _NORMS),
        ("!*.bias", lambda names: {n for n in names if not n.endswith(".bias")}),
        ("weights", lambda names: {n for n in names if not n.endswith(".bias") and n not in _NORMS
                                   and "embeddings." not in n}),  # fmt: skip
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
    args = _args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                 max_steps=2, learning_rate=LR, rho=rho, adaptive=adaptive, params=spec, **SGD_PLAIN)  # fmt: skip
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


@pytest.mark.parametrize(("spec", "says"), [
    ("!*.Bias", ["'!*.Bias' (did you mean '!*.bias'?)"]),
    ("!bert.embedding.*", ["'!bert.embedding.*' (did you mean '!bert.embeddings.*'?)"]),
    ("bert.encoder.*,classifer.*", ["'classifer.*' (did you mean 'classifier.*'?)"]),
    ("!*.Bias,bert.encoder.*,classifer.*", ["'!*.Bias' (did you mean '!*.bias'?)",
                                            "'classifer.*' (did you mean 'classifier.*'?)"]),
], ids=["case", "module-prefix", "one-of-two", "every-unmatched"])  # fmt: skip
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
    return T5ForSequenceClassification(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                num_decoder_layers=1, num_heads=2))  # fmt: skip


def _tiny_llama():
    """Llama's norms are LlamaRMSNorm."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24,
                                                      num_hidden_layers=1, num_attention_heads=2,
                                                      num_key_value_heads=2, pad_token_id=0))  # fmt: skip


# The norm layers' parameters by the names these architectures give them (written out, not found by type), and
# their embedding tables (T5's `shared` and its relative position buckets, Llama's `embed_tokens`).
_T5_NORMS = {f"transformer.{stack}.{where}.weight" for stack, wheres in (
    ("encoder", ("block.0.layer.0.layer_norm", "block.0.layer.1.layer_norm", "final_layer_norm")),
    ("decoder", ("block.0.layer.0.layer_norm", "block.0.layer.1.layer_norm", "block.0.layer.2.layer_norm",
                 "final_layer_norm"))) for where in wheres}  # fmt: skip
_T5_EMBEDDINGS = {"transformer.shared.weight", *(f"transformer.{stack}.block.0.layer.0.SelfAttention."
                  "relative_attention_bias.weight" for stack in ("encoder", "decoder"))}  # fmt: skip
_LLAMA_NORMS = {"model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                "model.norm.weight"}  # fmt: skip


def _tiny_roberta_prelayernorm():
    """Its classes carry "LayerNorm" in the model's name (RobertaPreLayerNormLMHead holds the head's bias)."""
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

    torch.manual_seed(0)
    return RobertaPreLayerNormForMaskedLM(RobertaPreLayerNormConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32))  # fmt: skip


_PRE_LN_NORMS = {f"{where}.{w}" for w in ("weight", "bias") for where in (
    "roberta_prelayernorm.embeddings.LayerNorm", "roberta_prelayernorm.encoder.layer.0.attention.LayerNorm",
    "roberta_prelayernorm.encoder.layer.0.intermediate.LayerNorm", "roberta_prelayernorm.LayerNorm",
    "lm_head.layer_norm")}  # fmt: skip
_PRE_LN_EMBEDDINGS = {f"roberta_prelayernorm.embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")}


@pytest.mark.parametrize(("build", "norms", "embeddings"), [
    (_tiny_t5, _T5_NORMS, _T5_EMBEDDINGS),
    (_tiny_llama, _LLAMA_NORMS, {"model.embed_tokens.weight"}),
    (_tiny_roberta_prelayernorm, _PRE_LN_NORMS, _PRE_LN_EMBEDDINGS),
], ids=["t5", "llama", "roberta-prelayernorm"])  # fmt: skip
def test_norms_and_weights_presets_find_norm_layers_by_type_not_by_torch_class(build, norms, embeddings):
    """SAM-ON's `norms` climbs on every normalisation layer and `weights` leaves them out, whatever their class."""
    from samtune.optim.selection import climbing_names

    model = build()
    names = {n for n, _ in model.named_parameters()}
    assert norms <= names and embeddings <= names
    assert set(climbing_names(model, "norms")) == norms
    assert set(climbing_names(model, "weights")) == {n for n in names - norms - embeddings if not n.endswith(".bias")}
