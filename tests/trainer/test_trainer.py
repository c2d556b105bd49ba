"""SAMTrainer against the stock Trainer and against the hand-written SAM loop in tests/support/tiny.py."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import (
    ASAM_ETA,
    ListDataset,
    collate,
    image_rows,
    max_abs_diff,
    micro_batches,
    reference_sam_adamw,
    reference_sam_gradient,
    reference_sam_sgd,
    text_rows,
    tiny_bert,
    tiny_resnet,
    tiny_vit,
)
from torch import nn
from trainer_setup import SGD_PLAIN, _args, _NaNLoss, _poison_rows, _steps, _train
from transformers import Trainer, TrainingArguments

from samtune import SAMTrainer
from samtune.trainer import UnsupportedSetupError


def test_rho_zero_is_the_stock_trainer(tmp_path):
    rows = text_rows(24)
    common = dict(per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3)
    stock = _train(tiny_bert(), rows, _args(tmp_path, TrainingArguments, **common), Trainer)
    sam = _train(tiny_bert(), rows, _args(tmp_path, rho=0.0, **common))
    s1, s2 = stock.model.state_dict(), sam.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert max_abs_diff(stock.model, tiny_bert()) > 0  # training moved the weights


@pytest.mark.parametrize(
    ("batch_size", "accumulation"),
    [(8, 1), (4, 2), (2, 4)],
    ids=["ga1", "ga2", "ga4"],
)
def test_bert_matches_hand_written_sam(tmp_path, batch_size, accumulation):
    rows, n_steps, rho, lr = text_rows(8 * 3), 3, 0.05, 0.5
    model = tiny_bert()
    reference = reference_sam_sgd(model, _steps(rows, batch_size, accumulation, n_steps), rho, lr)
    args = _args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=n_steps,
        learning_rate=lr,
        rho=rho,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    # The SAM step is not plain SGD: the same run with rho=0 lands elsewhere.
    plain = reference_sam_sgd(model, _steps(rows, batch_size, accumulation, n_steps), 0.0, lr)
    assert max_abs_diff(plain, reference) > 1e-4


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_adamw_warmup_clipping_weight_decay_and_dropout_match_hand_written_sam(tmp_path, dropout):
    """SAM as it is used: AdamW, linear warmup and decay, clipping at 1.0, weight decay, and dropout.

    float64 weights, so that AdamW's m / sqrt(v) (which turns a rounding difference in a tiny
    gradient into a difference of order lr) cannot blur the comparison; 1e-6 is then far above
    the rounding (about 1e-13 here) and far below any real difference (the arms below differ by
    more than 1e-4). With dropout, the masks differ between the two passes, as in the Trainer;
    the reference replays, before each of its forward passes, the RNG state that the Trainer's
    pass saw, so both draw the same masks.
    """
    rows, lr, rho, n_steps = text_rows(4 * 2 * 5), 1e-2, 0.05, 5
    # initializer_range 0.2: gradient norms near 6, so that clipping at 1.0 acts on every step.
    kw = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, initializer_range=0.2)
    model = tiny_bert(**kw).double()
    steps = _steps(rows, 4, 2, n_steps)
    settings = dict(lr=lr, warmup_steps=2, weight_decay=0.1, max_grad_norm=1.0)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=n_steps,
        rho=rho,
        learning_rate=lr,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        train_sampling_strategy="sequential",
    )
    trained = copy.deepcopy(model)
    states: list[torch.Tensor] = []
    trained.register_forward_pre_hook(lambda module, inputs: states.append(torch.get_rng_state()))
    trainer = _train(trained, rows, args)
    assert len(states) == 2 * 2 * n_steps  # ascent and descent of every micro-batch

    replay = iter(states)
    reference = reference_sam_adamw(
        model, steps, rho, before_forward=lambda: torch.set_rng_state(next(replay)), **settings
    )
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    # The comparison can fail: without clipping, or with the plain gradient, the weights end elsewhere.
    replay = iter(states)
    unclipped = reference_sam_adamw(
        model,
        steps,
        rho,
        before_forward=lambda: torch.set_rng_state(next(replay)),
        **{**settings, "max_grad_norm": float("inf")},
    )
    assert max_abs_diff(unclipped, reference) > 1e-4
    replay = iter(states)
    plain = reference_sam_adamw(model, steps, 0.0, before_forward=lambda: torch.set_rng_state(next(replay)), **settings)
    assert max_abs_diff(plain, reference) > 1e-4
    if dropout:  # the two passes drew different masks, and those masks mattered
        assert not torch.equal(states[0], states[1])
        fresh = reference_sam_adamw(model, steps, rho, **settings)
        assert max_abs_diff(fresh, reference) > 1e-4


def test_vit_matches_hand_written_sam(tmp_path):
    """float64 weights and pixels: at lr 0.5 the third step's loss jumps (about 7), and in float32 the two
    summation orders (the Trainer's and the reference's) then part by about 1e-6, more on some CPUs than
    others (CI saw 1.07e-6). In float64 the rounding is near 1e-13, so 1e-6 is far above it and far below
    any real difference: the same run with rho=0 lands more than 1e-4 away."""
    rows = [{**r, "pixel_values": r["pixel_values"].double()} for r in image_rows(12)]
    rho, lr = 0.1, 0.5
    model = tiny_vit().double()
    reference = reference_sam_sgd(model, _steps(rows, 2, 2, 3), rho, lr)
    args = _args(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=lr,
        rho=rho,
        **SGD_PLAIN,
    )
    trainer = _train(copy.deepcopy(model), rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    plain = reference_sam_sgd(model, _steps(rows, 2, 2, 3), 0.0, lr)
    assert max_abs_diff(plain, reference) > 1e-4


@pytest.mark.parametrize("eta", [None, 0.0, 0.1], ids=["default-eta", "davda54", "larger-eta"])
def test_asam_matches_hand_written_asam(tmp_path, eta):
    """ASAM's e(w) = rho T^2 g / ||T g||, T = |w| + asam_eta (default: the paper's 0.01; 0: davda54/sam's form).
    BERT's biases start at exactly 0 (the new head's too): with eta > 0 they climb, with eta 0 they cannot."""
    rows, rho, lr = text_rows(16), 1.0, 0.5
    model = tiny_bert()
    assert torch.count_nonzero(model.classifier.bias) == 0
    expected_eta = ASAM_ETA if eta is None else eta
    reference = reference_sam_sgd(model, _steps(rows, 4, 2, 2), rho, lr, adaptive=True, asam_eta=expected_eta)
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=lr,
        rho=rho,
        adaptive=True,
        **({} if eta is None else {"asam_eta": eta}),
        **SGD_PLAIN,
    )
    trained = copy.deepcopy(model)
    biases: list[torch.Tensor] = []  # the head's bias at each forward pass: ascent at w, descent at w + e(w)
    trained.classifier.register_forward_pre_hook(lambda module, _: biases.append(module.bias.detach().clone()))
    trainer = _train(trained, rows, args)
    assert max_abs_diff(trainer.model, reference) <= 1e-6
    assert torch.count_nonzero(biases[0]) == 0 and bool(torch.count_nonzero(biases[1])) == (expected_eta > 0)
    sam = reference_sam_sgd(model, _steps(rows, 4, 2, 2), rho, lr, adaptive=False)
    assert max_abs_diff(sam, reference) > 1e-5  # ASAM is not SAM
    other = reference_sam_sgd(model, _steps(rows, 4, 2, 2), rho, lr, adaptive=True, asam_eta=0.05)
    assert max_abs_diff(other, reference) > 1e-5  # nor ASAM with another eta


def test_update_is_mean_over_effective_batch(tmp_path):
    """BERT accepts `num_items_in_batch` but ignores it; the accumulated update must still be a mean."""
    rows, lr = text_rows(16), 0.5
    common = dict(max_steps=2, learning_rate=lr, rho=0.0, **SGD_PLAIN)
    whole = _train(tiny_bert(), rows, _args(tmp_path, per_device_train_batch_size=8, **common))
    split = _train(
        tiny_bert(), rows, _args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    )
    assert max_abs_diff(whole.model, split.model) <= 1e-6
    assert max_abs_diff(whole.model, tiny_bert()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_zero_learning_rate_leaves_weights_exactly(tmp_path, dtype):
    model = tiny_bert().to(dtype)
    before = copy.deepcopy(model.state_dict())
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=0.0,
        rho=0.5,
        bf16=dtype == torch.bfloat16,
        **SGD_PLAIN,
    )
    trainer = _train(model, text_rows(24), args)
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The climb did happen, and was large enough that undoing it by subtraction would drift.
    logged = [h for h in trainer.state.log_history if "sam_ascent_grad_norm" in h]
    assert logged and all(h["sam_ascent_grad_norm"] > 0 for h in logged)
    assert trainer.sam_perturbations_skipped == 0
    if dtype == torch.bfloat16:
        w = before["classifier.weight"]
        e = 0.5 * torch.randn_like(w.float()).to(dtype)
        assert not torch.equal((w + e) - e, w)


def test_batchnorm_statistics_are_those_of_one_forward_at_w(tmp_path):
    rows = image_rows(4, size=16)
    model = tiny_resnet()
    reference = copy.deepcopy(model).train()
    # One forward at w, in training mode and with autograd on, as the Trainer's ascent runs it: the
    # same kernels, so the statistics can be compared to the bit.
    reference(**micro_batches(rows, 4)[0])
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, learning_rate=0.1, rho=0.05, **SGD_PLAIN)
    trainer = _train(model, rows, args)
    stats = {k: v for k, v in trainer.model.state_dict().items() if "running_" in k or "num_batches" in k}
    expected = reference.state_dict()
    assert stats, "the model has BatchNorm buffers"
    for k, v in stats.items():
        assert torch.equal(v, expected[k]), k
    # The test can tell: a second forward (at any weights) would have moved them again.
    with torch.no_grad():
        reference(**micro_batches(rows, 4)[0])
    assert any(not torch.equal(v, reference.state_dict()[k]) for k, v in stats.items())


class _Overflow(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: what an fp16 overflow does to scaled grads."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class _Poisoned(nn.Module):
    """A linear classifier whose gradient overflows on chosen forward calls (the loss stays finite)."""

    def __init__(self, poison_calls: set[int]):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.poison_calls = poison_calls
        self.calls = 0

    def forward(self, x, labels):
        self.calls += 1
        logits = self.linear(x)
        if self.calls in self.poison_calls:
            logits = _Overflow.apply(logits)
        loss = nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def _with_cpu_grad_scaler(trainer: SAMTrainer, init_scale: float = 2.0**8) -> torch.amp.GradScaler:
    # accelerate makes a GradScaler only for fp16 on an accelerator; give the CPU run one, as fp16
    # on a GPU would have, so the overflow path runs through the real scaler.
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.accelerator.scaler = scaler
    return scaler


def test_nonfinite_ascent_skips_the_climb_and_steps_at_w(tmp_path):
    rows, x, y = _poison_rows()
    model = _Poisoned(poison_calls={1})  # call 1 is the ascent pass of the first step
    start = copy.deepcopy(model.linear)
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, learning_rate=0.5, rho=0.05, **SGD_PLAIN)
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows))
    scaler = _with_cpu_grad_scaler(trainer)
    trainer.train()
    # Expected: plain SGD at w (the climb was skipped), computed by hand.
    loss = nn.functional.cross_entropy(start(x), y)
    gw, gb = torch.autograd.grad(loss, [start.weight, start.bias])
    assert torch.allclose(model.linear.weight, start.weight - 0.5 * gw, atol=1e-6)
    assert torch.allclose(model.linear.bias, start.bias - 0.5 * gb, atol=1e-6)
    assert trainer.sam_perturbations_skipped == 1
    assert scaler.get_scale() == 2.0**8  # a finite descent: the scaler kept its scale
    logged = [h for h in trainer.state.log_history if "sam_perturbations_skipped" in h]
    assert logged[-1]["sam_perturbations_skipped"] == 1


def test_nonfinite_descent_lets_the_grad_scaler_skip_the_step(tmp_path):
    rows, _, _ = _poison_rows()
    model = _Poisoned(poison_calls={1, 2})  # ascent and descent of the first step overflow
    start = copy.deepcopy(model.state_dict())
    args = _args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=0.5,
        rho=0.05,
        **{
            **SGD_PLAIN,
            "max_grad_norm": 1.0,  # clipping unscales; the scaler must not unscale twice
        },
    )
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows))
    scaler = _with_cpu_grad_scaler(trainer)
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start)  # the optimizer step was skipped
    assert scaler.get_scale() == 2.0**7  # and the scaler backed off, as it decides
    assert trainer.sam_perturbations_skipped == 1


def test_logs_carry_sam_figures(tmp_path):
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=2, rho=0.07)
    trainer = _train(tiny_bert(), text_rows(8), args)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["sam_rho"] == 0.07
        assert h["sam_ascent_grad_norm"] > 0
        assert h["sam_perturbations_skipped"] == 0


def test_only_trainable_parameters_are_perturbed(tmp_path):
    model = tiny_bert()
    for p in model.bert.parameters():
        p.requires_grad_(False)  # a frozen backbone, as with LoRA/PEFT
    frozen = copy.deepcopy(model.bert.state_dict())
    rows, lr, rho = text_rows(8), 0.5, 0.05
    reference = reference_sam_sgd(model, _steps(rows, 4, 1, 2), rho, lr)
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=lr, rho=rho, **SGD_PLAIN)
    trainer = _train(model, rows, args)
    assert all(torch.equal(frozen[k], v) for k, v in trainer.model.bert.state_dict().items())
    assert max_abs_diff(trainer.model, reference) <= 1e-6


def test_restores_weights_when_the_descent_raises(tmp_path):
    model = tiny_bert()
    before = copy.deepcopy(model.state_dict())
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=1, rho=0.5)

    class Exploding(SAMTrainer):
        def compute_loss(self, model, inputs, **kw):
            if getattr(self, "_called", False):
                raise RuntimeError("descent failed")
            self._called = True
            return super().compute_loss(model, inputs, **kw)

    trainer = Exploding(model=model, args=args, train_dataset=ListDataset(text_rows(4)))
    with pytest.raises(RuntimeError, match="descent failed"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_negative_rho_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
        _args(tmp_path, rho=-0.1)
    with pytest.raises(ValueError, match="rho"):
        _args(tmp_path, rho=float("nan"))


def test_plain_training_arguments_are_refused(tmp_path):
    with pytest.raises(TypeError, match="SAMArguments"):
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path, TrainingArguments))


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("optim", "lomo", "LOMO"),
        ("optim", "adalomo", "LOMO"),
        ("optim", "galore_adamw_layerwise", "layer-wise"),
        ("deepspeed", {"train_batch_size": "auto"}, "DeepSpeed"),
        ("fsdp_config", {"version": 1}, "FSDP2 only"),
    ],
)
def test_unsupported_setups_are_refused_at_construction(tmp_path, field, value, says):
    args = _args(tmp_path)
    if field == "fsdp_config":
        object.__setattr__(args, "fsdp", "full_shard")
    object.__setattr__(args, field, value)  # set after validation: the backends need not be installed
    with pytest.raises(UnsupportedSetupError, match=says) as err:
        SAMTrainer(model=tiny_bert(), args=args)
    message = str(err.value)
    assert "instead" in message or "Choose" in message or "fsdp_version 2" in message
    if field == "deepspeed":  # the refusal names the way that works: FSDP2
        assert "FSDP2" in message and "fsdp_version 2" in message


def test_an_fsdp_request_that_accelerate_drops_on_cpu_is_refused_not_trained_unsharded(tmp_path, monkeypatch):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; on CPU processes Accelerate then runs plain
    data parallelism without a word. SAMTrainer refuses, naming what would have happened."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UnsupportedSetupError, match="would train unsharded") as err:
        SAMTrainer(model=tiny_bert(), args=_args(tmp_path))
    assert "without FSDP" in str(err.value)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    SAMTrainer(model=tiny_bert(), args=_args(tmp_path))  # no request, no refusal


def test_a_deepspeed_accelerate_config_is_refused_naming_fsdp2(tmp_path, monkeypatch):
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED (on CPU Accelerate then drops it)."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UnsupportedSetupError, match="asked for by your accelerate config") as err:
        _args(tmp_path)  # before TrainingArguments sets DeepSpeed up (deepspeed is not even installed here)
    assert "FSDP2" in str(err.value) and "fsdp_version 2" in str(err.value)


def test_context_parallelism_is_refused(tmp_path):
    from accelerate.parallelism_config import ParallelismConfig

    args = _args(tmp_path)
    args.parallelism_config = ParallelismConfig(cp_size=2)
    with pytest.raises(UnsupportedSetupError, match="context or sequence parallelism"):
        SAMTrainer(model=tiny_bert(), args=args)


def test_nonfinite_loss_stops_before_the_update(tmp_path):
    from samtune.trainer import NonFiniteLossError

    rows, _, _ = _poison_rows()
    model = _NaNLoss(nan_calls={3})  # step 1 is calls 1-2 (ascent, descent); step 2's ascent is NaN
    args = _args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=0.5, rho=0.05, **SGD_PLAIN)
    trainer = SAMTrainer(model=model, args=args, train_dataset=ListDataset(rows * 3))
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    assert err.value.step == 2
    reference = reference_sam_sgd(_NaNLoss(set()), [[collate(rows)]], rho=0.05, lr=0.5)  # one good step
    assert max_abs_diff(model, reference) <= 1e-6


def test_nonfinite_loss_skip_skips_that_optimizer_step(tmp_path):
    rows, _, _ = _poison_rows()
    model = _NaNLoss(nan_calls={1})  # the first micro-batch's ascent, in the first of two steps
    args = _args(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=0.1,
        rho=0.05,
        on_nonfinite="skip",
        optim="adamw_torch",
        weight_decay=0.1,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
    )
    trainer = _train(model, rows * 2, args)
    assert trainer.sam_nonfinite_skipped == 1
    # Expected: the first step did nothing (not even AdamW's weight decay or moments); the second is
    # a plain first AdamW step with the SAM gradient of the second step's two micro-batches.
    clean = _NaNLoss(set())
    reference = torch.optim.AdamW(  # the Trainer decays weights, not biases
        [{"params": [clean.linear.weight], "weight_decay": 0.1}, {"params": [clean.linear.bias], "weight_decay": 0.0}],
        lr=0.1,
    )
    total = [torch.zeros_like(p) for p in clean.parameters()]
    for batch in (collate(rows[0:2]), collate(rows[2:4])):
        for t_, g in zip(total, reference_sam_gradient(clean, batch, rho=0.05)):
            t_.add_(g / 2)
    for p, g in zip(clean.parameters(), total):
        p.grad = g
    reference.step()
    assert max_abs_diff(model, clean) <= 1e-6
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _TokenLoss(nn.Module):
    """A token-level model whose loss honours `num_items_in_batch` (sum over tokens / tokens in the step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(16, 8)
        self.out = nn.Linear(8, 16)

    def forward(self, input_ids, labels, num_items_in_batch=None, **kwargs):
        logits = self.out(self.emb(input_ids))
        flat = nn.functional.cross_entropy(logits.view(-1, 16), labels.view(-1), ignore_index=-100, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
        return {"loss": flat / count, "logits": logits}


def _token_rows():
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(4):
        ids = torch.randint(0, 16, (6,), generator=g)
        labels = ids.clone()
        labels[: 1 + 2 * i % 5] = -100  # uneven token counts per example
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def test_rho_zero_keeps_the_stock_normalisation_of_token_level_losses(tmp_path):
    """GA=2 with uneven token counts: the update is the mean over every token of the step."""
    rows = _token_rows()
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1, learning_rate=0.5)
    stock = _train(_TokenLoss(), rows, _args(tmp_path, TrainingArguments, **common, **SGD_PLAIN), Trainer)
    sam = _train(_TokenLoss(), rows, _args(tmp_path, rho=0.0, **common, **SGD_PLAIN))
    s1, s2 = stock.model.state_dict(), sam.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # By hand: one SGD step on the loss summed over all tokens, divided by their number.
    model = _TokenLoss()
    batch = collate(rows)
    tokens = (batch["labels"] != -100).sum()
    loss = model(batch["input_ids"], batch["labels"], num_items_in_batch=tokens)["loss"]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p.sub_(0.5 * g)
    assert max_abs_diff(sam.model, model) <= 1e-6


def test_instance_norm_statistics_are_updated_once():
    from samtune.optim import frozen_running_stats

    norm = nn.InstanceNorm1d(3, track_running_stats=True).train()
    norm(torch.randn(2, 3, 5))
    before = copy.deepcopy(norm.state_dict())
    with frozen_running_stats(norm):
        norm(torch.randn(2, 3, 5) * 4 + 1)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
