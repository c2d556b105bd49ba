"""Tiny models and data built from configs, and the hand-written SAM reference the tests compare to.

The reference is written here with plain per-parameter PyTorch, independently of samtune.optim,
straight from the paper's algorithm: it is what the library is checked against.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

NUM_LABELS = 3
# ASAM's eta, T = |w| + eta: the value of Kwon et al.'s paper and official code (SamsungLabs/ASAM).
ASAM_ETA = 0.01


# Two layers of width 32: big enough to have every part of the architecture, small enough for CPU.
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
# No dropout: the hand-written reference must see the same function as the Trainer.
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_bert(seed: int = 0, vocab_size: int = 64, num_labels: int = NUM_LABELS, **kw) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, max_position_embeddings=64, num_labels=num_labels, **{**TINY, **NO_DROPOUT, **kw}
    )
    return BertForSequenceClassification(config)


def tiny_vit(seed: int = 0, num_labels: int = NUM_LABELS, **kw) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(image_size=16, patch_size=4, num_labels=num_labels, **{**TINY, **NO_DROPOUT, **kw})
    return ViTForImageClassification(config)


def tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    """A tiny convolutional classifier with BatchNorm layers."""
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=NUM_LABELS)
    return ResNetForImageClassification(config)


class ListDataset(torch.utils.data.Dataset):
    """A list of feature dicts, as the Trainer's default collator wants them."""

    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def text_rows(n: int, seq_len: int = 8, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, seq_len), generator=g)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(seq_len, dtype=torch.long), "labels": labels[i]}
        for i in range(n)
    ]


def image_rows(n: int, size: int = 16, seed: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, size, size, generator=g)
    labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
    return [{"pixel_values": pixels[i], "labels": labels[i]} for i in range(n)]


def collate(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def micro_batches(rows: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The batches a sequential sampler yields, in order."""
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def max_abs_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())


def reference_sam_gradient(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    rho: float,
    adaptive: bool = False,
    ascent_batch: dict[str, torch.Tensor] | None = None,
    before_forward: Callable[[], None] | None = None,
    climbing: set[str] | None = None,
    asam_eta: float = ASAM_ETA,
) -> list[torch.Tensor]:
    """The gradient at w + e(w) of one batch's mean loss, by the paper's formula, leaving w as it was.

    e(w) = rho * g / ||g||              (SAM)
    e(w) = rho * T^2 * g / ||T g||      (ASAM, T = |w| + asam_eta elementwise; asam_eta 0: davda54/sam's form)
    with a 1e-12 guard on the norm, as davda54/sam and samtune use. g is the gradient of
    `ascent_batch` (default: the batch itself). `before_forward` runs before each of the two
    forward passes (a test replays the RNG state the trainer's pass saw there, for dropout).
    With `climbing` (parameter names), only those climb and ||g|| is theirs; the others stay at w.
    """
    before_forward = before_forward or (lambda: None)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    ascent_batch = batch if ascent_batch is None else ascent_batch
    before_forward()
    grads = torch.autograd.grad(model(**ascent_batch).loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    if climbing is not None:
        grads = [g if n in climbing else torch.zeros_like(g) for (n, _), g in zip(named, grads)]
    scales = [p.detach().abs() + asam_eta if adaptive else torch.ones_like(p) for p in params]  # T
    norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(scales, grads)))
    originals = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g, t in zip(params, grads, scales):
            p.add_(rho * t * t * g / (norm + 1e-12))
    before_forward()
    sam_grads = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
    with torch.no_grad():
        for p, w in zip(params, originals):
            p.copy_(w)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(sam_grads, params)]


def reference_sharpness(model: nn.Module, batches: list[dict[str, torch.Tensor]], rho: float) -> float:
    """SAM's sharpness over one optimizer step's micro-batches: the mean of L(w + e(w)) - L(w), each micro-batch
    climbing on its own gradient (e(w) = rho * g / ||g||), w left as it was."""
    rise = 0.0
    for batch in batches:
        probe = copy.deepcopy(model).train()
        params = [p for p in probe.parameters() if p.requires_grad]
        loss = probe(**batch).loss
        grads = torch.autograd.grad(loss, params)
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(rho * g / (norm + 1e-12))
            rise += (float(probe(**batch).loss) - float(loss)) / len(batches)
    return rise


def reference_sam_sgd(
    model: nn.Module,
    steps: list[list[dict[str, torch.Tensor]]],
    rho: float,
    lr: float,
    adaptive: bool = False,
    climbing: set[str] | None = None,
    asam_eta: float = ASAM_ETA,
) -> nn.Module:
    """Plain SGD with SAM: each step averages the SAM gradients of its micro-batches (`climbing`: who climbs)."""
    model = copy.deepcopy(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for step in steps:
        total = [torch.zeros_like(p) for p in params]
        for batch in step:
            grads = reference_sam_gradient(model, batch, rho, adaptive, climbing=climbing, asam_eta=asam_eta)
            for t, g in zip(total, grads):
                t.add_(g / len(step))
        with torch.no_grad():
            for p, t in zip(params, total):
                p.sub_(lr * t)
    return model


def linear_warmup_lr(lr: float, step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup from 0, then linear decay to 0."""
    if step < warmup_steps:
        return lr * step / max(1, warmup_steps)
    return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def reference_sam_adamw(
    model: nn.Module,
    steps: list[list[dict[str, torch.Tensor]]],
    rho: float,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    max_grad_norm: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    before_forward: Callable[[], None] | None = None,
) -> nn.Module:
    """SAM with AdamW (decoupled weight decay), a linear warmup/decay schedule and clipping, per parameter.

    Per step: the mean of the micro-batches' SAM gradients; clipped to `max_grad_norm` by its
    global norm (coefficient max_norm / (norm + 1e-6), at most 1); then AdamW (Loshchilov and
    Hutter): w <- w (1 - lr wd), m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
    w <- w - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps). Biases and LayerNorm weights
    are not decayed (the usual rule for transformers).
    """
    model = copy.deepcopy(model)
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    in_norm = {
        f"{m}.{n}" if m else n
        for m, mod in model.named_modules()
        if isinstance(mod, nn.LayerNorm)
        for n, _ in mod.named_parameters(recurse=False)
    }
    decays = [0.0 if "bias" in n or n in in_norm else weight_decay for n in names]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, step in enumerate(steps):
        total = [torch.zeros_like(p) for p in params]
        for batch in step:
            for acc, g in zip(total, reference_sam_gradient(model, batch, rho, before_forward=before_forward)):
                acc.add_(g / len(step))
        norm = math.sqrt(sum(float((g**2).sum()) for g in total))
        coeff = min(1.0, max_grad_norm / (norm + 1e-6))
        lr_t = linear_warmup_lr(lr, t, warmup_steps, len(steps))
        b1, b2 = betas
        with torch.no_grad():
            for p, g, m_, v_, wd in zip(params, total, m, v, decays):
                g = g * coeff
                p.mul_(1 - lr_t * wd)
                m_.mul_(b1).add_((1 - b1) * g)
                v_.mul_(b2).add_((1 - b2) * g * g)
                denom = (v_ / (1 - b2 ** (t + 1))).sqrt() + eps
                p.sub_(lr_t / (1 - b1 ** (t + 1)) * m_ / denom)
    return model


def reference_sam_sgd_per_step(
    model: nn.Module,
    steps: list[list[dict[str, torch.Tensor]]],
    rhos: list[float],
    lrs: list[float],
    climbing: set[str] | None = None,
    lr_scale: dict[str, float] | None = None,
) -> nn.Module:
    """SGD where step t has its own radius rhos[t] (0: a plain step) and learning rate lrs[t].

    `lr_scale` (parameter names): a parameter's learning rate is lrs[t] times its scale (1 if not named), as for
    parameter groups with their own rates under one schedule.
    """
    model = copy.deepcopy(model)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    scales = [(lr_scale or {}).get(n, 1.0) for n, _ in named]
    for step, rho, lr in zip(steps, rhos, lrs, strict=True):
        total = [torch.zeros_like(p) for _, p in named]
        for batch in step:
            for acc, g in zip(total, reference_sam_gradient(model, batch, rho, climbing=climbing)):
                acc.add_(g / len(step))
        with torch.no_grad():
            for (_, p), g, scale in zip(named, total, scales):
                p.sub_(lr * scale * g)
    return model


# ---- the efficient variants, each from its paper's update rule --------------------------------


def _mean_gradient(
    model: nn.Module, step: list[dict[str, torch.Tensor]], rho: float, ascent_rows: int | None = None
) -> list[torch.Tensor]:
    """The mean over a step's micro-batches of each one's SAM gradient (rho = 0: the plain gradient).

    With `ascent_rows`, each micro-batch climbs along the gradient of its first `ascent_rows` examples.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for batch in step:
        head = None if ascent_rows is None else {k: v[:ascent_rows] for k, v in batch.items()}
        for t, g in zip(total, reference_sam_gradient(model, batch, rho, ascent_batch=head)):
            t.add_(g / len(step))
    return total


def _sgd_(model: nn.Module, update: list[torch.Tensor], lr: float) -> None:
    with torch.no_grad():
        for p, u in zip([p for p in model.parameters() if p.requires_grad], update):
            p.sub_(lr * u)


def reference_scheduled_sam_sgd(
    model: nn.Module, steps: list[list[dict[str, torch.Tensor]]], rho: float, lr: float, sam_on: list[bool]
) -> nn.Module:
    """SAM every k steps (Composer) and RST (Zhao et al.): step t is a SAM step if sam_on[t], else a plain one."""
    model = copy.deepcopy(model)
    model.train()
    for step, on in zip(steps, sam_on, strict=True):
        _sgd_(model, _mean_gradient(model, step, rho if on else 0.0), lr)
    return model


def reference_ascent_fraction_sgd(
    model: nn.Module, steps: list[list[dict[str, torch.Tensor]]], rho: float, lr: float, rows: int
) -> nn.Module:
    """Bahri et al. (ACL 2022): each micro-batch climbs along the gradient of its first `rows` examples."""
    model = copy.deepcopy(model)
    model.train()
    for step in steps:
        _sgd_(model, _mean_gradient(model, step, rho, ascent_rows=rows), lr)
    return model


def reference_looksam_sgd(
    model: nn.Module, steps: list[list[dict[str, torch.Tensor]]], rho: float, lr: float, k: int, alpha: float
) -> nn.Module:
    """LookSAM (Liu et al., CVPR 2022, Algorithm 1) with plain SGD as the base optimizer.

    Every k steps: g_s = SAM gradient, g_v = g_s - ||g_s|| cos(theta) g / ||g||. In between:
    g_s = g + alpha * ||g|| / ||g_v|| * g_v, from the plain gradient g alone.
    """
    model = copy.deepcopy(model)
    model.train()
    g_v: list[torch.Tensor] = []
    for t, step in enumerate(steps):
        g = _mean_gradient(model, step, 0.0)
        norm_g = torch.sqrt(sum((a**2).sum() for a in g))
        if t % k == 0:
            g_s = _mean_gradient(model, step, rho)
            norm_s = torch.sqrt(sum((b**2).sum() for b in g_s))
            cos = sum((a * b).sum() for a, b in zip(g, g_s)) / (norm_g * norm_s)
            g_v = [b - norm_s * cos * a / norm_g for a, b in zip(g, g_s)]
        else:
            norm_v = torch.sqrt(sum((v**2).sum() for v in g_v))
            g_s = [a + alpha * norm_g / norm_v * v for a, v in zip(g, g_v)]
        _sgd_(model, g_s, lr)
    return model


def reference_aesam_sgd(
    model: nn.Module,
    steps: list[list[dict[str, torch.Tensor]]],
    rho: float,
    lr: float,
    decay: float,
    c_start: float,
    c_end: float,
) -> tuple[nn.Module, list[bool]]:
    """AE-SAM (Jiang et al., ICLR 2023, Algorithm 1) with plain SGD; returns the model and which steps climbed.

    g = the step's mean gradient over its micro-batches; x = ||g||^2;  mu = d mu + (1 - d) x;
    s2 = d s2 + (1 - d) (x - mu)^2 (mu, s2 from 0);  c_t = c_start + (c_end - c_start) t / T.
    x >= mu + c_t sqrt(s2): each micro-batch's gradient at w + rho g / ||g|| (one climb for the whole step),
    averaged; otherwise g itself.
    """
    model = copy.deepcopy(model)
    model.train()
    mu = s2 = 0.0
    climbed = []
    for t, step in enumerate(steps):
        g = _mean_gradient(model, step, 0.0)
        x = float(sum((a.double() ** 2).sum() for a in g))
        mu = decay * mu + (1 - decay) * x
        s2 = decay * s2 + (1 - decay) * (x - mu) ** 2
        c = c_start + (c_end - c_start) * t / len(steps)
        climbed.append(x >= mu + c * math.sqrt(s2))
        if climbed[-1]:
            whole = {k: torch.cat([b[k] for b in step]) for k in step[0]}  # equal micro-batches: its mean is g's
            g = [torch.zeros_like(a) for a in g]
            for batch in step:
                for acc, s in zip(g, reference_sam_gradient(model, batch, rho, ascent_batch=whole)):
                    acc.add_(s / len(step))
        _sgd_(model, g, lr)
    return model, climbed


# ---- causal language models ---------------------------------------------------------------------


def tiny_gpt2(vocab_size: int = 64, seed: int = 0, **kw):
    """A 2-layer GPT-2 language model small enough to train in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0, **kw
    )
    return GPT2LMHeadModel(config)


def causal_rows(n: int, vocab: int, seed: int = 5) -> list[dict[str, torch.Tensor]]:
    """Rows padded to 10 tokens with 3-10 real ones, some starting with a prompt (-100): micro-batches hold different
    numbers of targets."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 3 + (i * 3) % 8
        ids = torch.randint(2, vocab, (10,), generator=g)
        ids[length:] = 0
        labels = ids.clone()
        labels[length:] = -100
        labels[: i % 3] = -100  # a prompt
        rows.append({"input_ids": ids, "attention_mask": (torch.arange(10) < length).long(), "labels": labels})
    return rows


def reference_token_level_sam_sgd(model, steps, rho: float, lr: float):
    """SGD with SAM on the Trainer's causal-LM objective: a step's loss is the sum of its targets' negative
    log-likelihoods over the step's target count N (labels shifted by one). Each micro-batch climbs on its own
    gradient of (its sum) / N, takes the gradient there, and the step adds them up."""
    model = copy.deepcopy(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for step in steps:
        n = sum((b["labels"][:, 1:] != -100).sum() for b in step)
        total = [torch.zeros_like(p) for p in params]
        for batch in step:
            for t, g in zip(total, reference_sam_gradient(model, {**batch, "num_items_in_batch": n}, rho)):
                t.add_(g)
        with torch.no_grad():
            for p, t in zip(params, total):
                p.sub_(lr * t)
    return model
