"""LookSAM (Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022).

Every k optimizer steps an exact SAM step, which also records g_v, the part of the SAM gradient g_s
orthogonal to the plain gradient g:  g_v = g_s - (<g, g_s> / ||g||^2) g.  The k - 1 steps in between
take one pass and reuse it:  g_s = g + alpha * (||g|| / ||g_v||) * g_v.  Extra cost about 1/k of a pass
(plus vector ops, and a float32 copy of the climbing weights kept for g_v); the reused direction goes
stale as the weights move. In samtune's label-noise benchmark it was the best arm on a CNN and diverged
on a ViT trained with AdamW (the paper proposes a layer-wise "Adaptive LookSAM" for ViTs, not built
here): measure first.

g is the plain gradient of the whole effective batch (the ascent gradients of the micro-batches,
normalised as the descent's are); under DDP it is averaged over the processes (one extra all-reduce on
SAM steps) so that every process holds the same g_v, and g_v is kept only if every micro-batch of the
step climbed on every process. Under FSDP2 g, g_s and g_v are sharded DTensors, worked on shard by
shard; the checkpoint holds each process's shards of g_v, made DTensors again once FSDP has sharded the
model (`attach`).

torch is imported where tensors are touched, so that listing the variants stays free of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from samtune.optim.variants import Processes, Variant, register_variant

if TYPE_CHECKING:
    import torch


@register_variant
class LookSAM(Variant):
    """An exact SAM step every `looksam_k` steps (and whenever there is no g_v); g_v reused in between."""

    name = "looksam"
    summary = "LookSAM: exact SAM every sam.looksam_k steps"
    settings = ("looksam_k", "looksam_alpha")
    looksam_k: int
    looksam_alpha: float

    def __init__(self, *, seed: int = 0, **values: Any) -> None:
        super().__init__(seed=seed, **values)
        self.g_v: list[torch.Tensor | None] | None = None  # one per climbing parameter, from the last SAM step
        self._plain: list[torch.Tensor | None] | None = None  # this SAM step's g, summed over its micro-batches
        self._saved: list[torch.Tensor | None] | None = None  # g_v from a checkpoint, until `attach`

    def climbs_on(self, step: int) -> bool:
        return step % self.looksam_k == 0 or self.g_v is None

    def after_ascent(self, grads: Sequence[torch.Tensor | None], weight: float) -> None:
        """Add this micro-batch's plain gradient at w to the effective batch's (float32), weighted as the descent's."""
        if self._plain is None:
            self._plain = [None] * len(grads)
        for i, g in enumerate(grads):
            if g is None:
                continue
            acc = self._plain[i]
            self._plain[i] = g.float() * weight if acc is None else acc.add_(g.float(), alpha=weight)

    def after_sam_step(self, params: Sequence[torch.nn.Parameter], complete: bool, processes: Processes) -> None:
        """g_v from the plain gradient g and the SAM gradient g_s now in `.grad`.

        Every process takes the same path, whatever it saw (an fp16 ascent may overflow on one process
        only): the plain gradients and whether this process climbed travel in one all-reduce, and g_v is
        kept only if every process climbed.
        """
        import torch

        from samtune.optim.functional import ascent_norm

        plain, self._plain = self._plain or [None] * len(params), None
        index = [i for i, p in enumerate(params) if p.grad is not None]  # after DDP's all-reduce: alike everywhere
        g = [plain[i] if plain[i] is not None else torch.zeros_like(params[i].grad, dtype=torch.float32) for i in index]
        climbed_share = torch.tensor([1.0 if complete else 0.0], device=processes.device)
        if processes.ascent_averaged:  # FSDP2: g is the processes' mean already (and each process holds other shards)
            (climbed_share,) = processes.mean([climbed_share])
        else:
            *g, climbed_share = processes.mean([*g, climbed_share])
        self.g_v = None  # no SAM gradient this step (somewhere), or none usable: the next step refreshes again
        if float(climbed_share) < 1.0 or not index:
            return
        g_v = looksam_direction(g, [params[i].grad for i in index])
        size = float(ascent_norm(g_v))  # ||g_v|| (over all shards under FSDP2)
        if not (math.isfinite(size) and size > 0):  # fp16 overflow (the scaler skips this step) or g_s parallel to g
            return
        self.g_v = [None] * len(params)
        for i, v in zip(index, g_v, strict=True):
            self.g_v[i] = v

    def after_plain_step(self, params: Sequence[torch.nn.Parameter], processes: Processes) -> None:
        """Between SAM steps: .grad <- g + alpha * (||g|| / ||g_v||) * g_v, one pass only."""
        g_v = self.g_v or []
        pairs = [(p.grad, v) for p, v in zip(params, g_v, strict=False) if p.grad is not None and v is not None]
        looksam_gradient_([g for g, _ in pairs], [v for _, v in pairs], self.looksam_alpha)

    def abandon_step(self) -> None:
        self._plain = None

    def state_dict(self) -> dict[str, Any]:
        """g_v (this process's shards of it under FSDP2), on the CPU; empty before the first SAM step."""
        from samtune.optim.shards import local

        if self.g_v is None:
            return {}
        return {"g_v": [local(v).cpu() if v is not None else None for v in self.g_v]}

    def load_state_dict(self, state: Mapping[str, Any] | list) -> None:
        """Keep a checkpoint's g_v for `attach` (without one, the next step is a SAM step that computes it)."""
        saved = state if isinstance(state, list) else state.get("g_v")  # samtune 0.1's file held the list alone
        self.g_v, self._plain, self._saved = None, None, saved

    def attach(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Put a checkpoint's g_v on the parameters' devices, sharded as they are (FSDP2: DTensors from its shards)."""
        from samtune.optim.shards import DTensor, is_sharded, local

        saved, self._saved = self._saved, None
        if saved is None or len(saved) != len(params):
            return
        self.g_v = [
            None
            if v is None
            else DTensor.from_local(
                v.to(local(p).device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride(), run_check=False
            )
            if is_sharded(p)
            else v.to(p.device)
            for v, p in zip(saved, params, strict=True)
        ]

    @property
    def extra_pass_share(self) -> float:
        return 1 / self.looksam_k

    def describe(self) -> str:
        return f"LookSAM (k={self.looksam_k}, alpha={self.looksam_alpha})"


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """<a, b> over lists of tensors, accumulated in float32 (sharded tensors: over all shards)."""
    import torch

    from samtune.optim.shards import global_sum, is_sharded, local

    parts = [torch.vdot(local(x).reshape(-1).float(), local(y).reshape(-1).float()) for x, y in zip(a, b, strict=True)]
    if not parts:
        return torch.zeros(())
    if any(is_sharded(x) for x in a):
        return global_sum(parts, list(a))
    return torch.stack(parts).sum()


def looksam_direction(g: Sequence[torch.Tensor], g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """LookSAM's g_v: the part of the SAM gradient g_s orthogonal to the plain gradient g (float32).

    g_v = g_s - ||g_s|| cos(theta) g / ||g||  with  cos(theta) = <g, g_s> / (||g|| ||g_s||),
    that is  g_v = g_s - (<g, g_s> / ||g||^2) g.
    """
    import torch

    from samtune.optim.functional import ascent_norm
    from samtune.optim.shards import locals_

    g32 = [x.float() for x in g]
    coeff = _dot(g32, g_s) / ascent_norm(g32).pow(2).clamp_min(1e-30)
    g_v = [y.float().clone() for y in g_s]  # sharded g_s: sharded g_v, worked on shard by shard
    if g_v:
        shards = locals_(g_v)
        torch._foreach_add_(shards, torch._foreach_mul(locals_(g32), coeff.to(shards[0].device)), alpha=-1.0)
    return g_v


def looksam_gradient_(grads: Sequence[torch.Tensor], g_v: Sequence[torch.Tensor], alpha: float) -> None:
    """LookSAM's reuse step, in place: g <- g + alpha * (||g|| / ||g_v||) * g_v."""
    import torch

    from samtune.optim.functional import ascent_norm
    from samtune.optim.shards import locals_

    grads = list(grads)
    if not grads:
        return
    with torch.no_grad():
        scale = alpha * ascent_norm(grads) / ascent_norm(g_v).clamp_min(1e-30)
        shards = locals_(grads)
        added = [(v * scale.to(v.device)).to(x.dtype) for v, x in zip(locals_(g_v), shards, strict=True)]
        torch._foreach_add_(shards, added)
