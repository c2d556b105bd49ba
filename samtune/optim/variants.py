"""Cheaper SAM: published variants that pay for SAM's second pass on fewer steps or fewer examples.

Exact SAM takes two forward/backward passes per step, so it costs about 2x plain training. Each
variant here trades some of SAM's effect for less of that extra pass:

``every_k``          SAM on one optimizer step in k, plain steps in between (Composer's SAM
                     ``interval``, MosaicML). Extra cost 1/k of a pass. Between SAM steps nothing
                     of the sharpness direction is kept.
``looksam``          LookSAM (Liu et al., "Towards Efficient and Scalable Sharpness-Aware
                     Minimization", CVPR 2022). Every k steps an exact SAM step, which also
                     records g_v, the part of the SAM gradient g_s orthogonal to the plain
                     gradient g:  g_v = g_s - (<g, g_s> / ||g||^2) g.  The k-1 steps in between
                     take one pass and reuse it:  g_s = g + alpha * (||g|| / ||g_v||) * g_v.
                     Extra cost about 1/k of a pass (plus vector ops); the reused direction goes
                     stale as the weights move. In samtune's label-noise benchmark it was the best
                     arm on a CNN and diverged on a ViT trained with AdamW (the paper proposes a
                     layer-wise "Adaptive LookSAM" for ViTs, not built here): measure first.
``ascent_fraction``  The ascent gradient from a fraction of each micro-batch (Bahri, Mobahi and
                     Tay, "Sharpness-Aware Minimization Improves Language Model Generalization",
                     ACL 2022: 25% of the batch kept most of the gain). Extra cost about the
                     fraction of a pass on models whose cost scales with the batch; the climb
                     direction is noisier. BatchNorm's running statistics come from the descent
                     (the whole micro-batch, at w + e(w)), not from the ascent's share.
``rst``              Randomized Sharpness-Aware Training (Zhao, Zhang and Hu, 2022): each step is
                     a SAM step with probability p, a plain step otherwise. Extra cost p of a pass.

Every decision is a function of the optimizer step (and the seed), never of the micro-batch or the
process, so all micro-batches of an accumulated step and all DDP ranks agree, and a resumed run
makes the same choices. The functions below are pure PyTorch; the Trainer applies them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samtune.optim.shards import global_norm, global_sum, is_sharded, local, locals_
from samtune.optim.settings import VARIANTS, SAMSettings, VariantName, default_of, sam_setting_problems

__all__ = ["VARIANTS", "SAMVariant", "VariantName"]


@dataclass(frozen=True)
class SAMVariant:
    """Which SAM step to take, and when: `name` with its own parameters (defaults and bounds: SAMSettings)."""

    name: VariantName = default_of("sam_variant")
    every_k: int = default_of("every_k")
    looksam_k: int = default_of("looksam_k")
    looksam_alpha: float = default_of("looksam_alpha")
    ascent_fraction: float = default_of("ascent_fraction")
    rst_probability: float = default_of("rst_probability")
    seed: int = 0

    def __post_init__(self) -> None:
        values = {"sam_variant": self.name, **{k: getattr(self, k) for k in self._PARAMETERS}}
        problems = sam_setting_problems(values)
        if problems:
            raise ValueError("; ".join(problems))

    _PARAMETERS = ("every_k", "looksam_k", "looksam_alpha", "ascent_fraction", "rst_probability")

    @classmethod
    def from_settings(cls, settings: SAMSettings, seed: int = 0) -> SAMVariant:
        """The variant that SAM settings select, with its parameters."""
        return cls(settings.sam_variant, *(getattr(settings, k) for k in cls._PARAMETERS), seed=seed)

    def climbs_on(self, step: int) -> bool:
        """Whether optimizer step `step` (0-based) takes SAM's two passes (LookSAM: refreshes g_v)."""
        if self.name == "every_k":
            return step % self.every_k == 0
        if self.name == "looksam":
            return step % self.looksam_k == 0
        if self.name == "rst":
            return rst_draw(step, self.rst_probability, self.seed)
        return True

    def ascent_part(self, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The examples of a micro-batch the ascent takes where it takes fewer than all of them (`ascent_fraction`:
        the first ceil(fraction * batch)); None where it takes the whole micro-batch."""
        if self.name != "ascent_fraction":
            return None
        size = batch_size_of(inputs)
        rows = size if size is None else ascent_rows(size, self.ascent_fraction)
        return None if rows == size else first_rows(inputs, rows)

    @property
    def extra_pass_share(self) -> float:
        """The expected share of steps (or of the batch) that pays for an extra pass: 1.0 for SAM."""
        return {
            "sam": 1.0,
            "every_k": 1 / self.every_k,
            "looksam": 1 / self.looksam_k,
            "ascent_fraction": self.ascent_fraction,
            "rst": self.rst_probability,
        }[self.name]

    def describe(self) -> str:
        """A short human description, e.g. 'LookSAM (k=5, alpha=0.7)'."""
        return {
            "sam": "exact SAM (every step)",
            "every_k": f"SAM every {self.every_k} steps",
            "looksam": f"LookSAM (k={self.looksam_k}, alpha={self.looksam_alpha})",
            "ascent_fraction": f"ascent on {self.ascent_fraction:.0%} of each batch",
            "rst": f"RST (SAM with probability {self.rst_probability})",
        }[self.name]


def rst_draw(step: int, probability: float, seed: int) -> bool:
    """RST's coin for optimizer step `step`: True with `probability`, the same on every process and resume."""
    if probability >= 1:
        return True
    if probability <= 0:
        return False
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return bool(torch.rand((), generator=generator) < probability)


def ascent_rows(batch_size: int, fraction: float) -> int:
    """How many examples of a micro-batch the ascent uses: ceil(fraction * batch), at least one."""
    return max(1, min(batch_size, math.ceil(fraction * batch_size - 1e-9)))


def batch_size_of(inputs: Mapping[str, Any]) -> int | None:
    """The micro-batch size: the leading dimension of the labels (or of the first tensor)."""
    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() > 0:
        return labels.shape[0]
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def first_rows(inputs: Mapping[str, Any], rows: int) -> dict[str, Any]:
    """The first `rows` examples of a micro-batch: every tensor with the batch's leading size is sliced."""
    size = batch_size_of(inputs)
    return {
        k: v[:rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size else v
        for k, v in inputs.items()
    }


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """<a, b> over lists of tensors, accumulated in float32 (sharded tensors: over all shards)."""
    parts = [torch.vdot(local(x).reshape(-1).float(), local(y).reshape(-1).float()) for x, y in zip(a, b, strict=True)]
    if not parts:
        return torch.zeros(())
    if any(is_sharded(x) for x in a):
        return global_sum(parts, list(a))
    return torch.stack(parts).sum()


def _norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    """||a|| over a list of tensors, in float32 or wider (sharded tensors: over all shards)."""
    if not a:
        return torch.zeros(())
    dtype = torch.promote_types(a[0].dtype, torch.float32)  # float32, float64 for float64 (no narrowing)
    return global_norm(torch._foreach_norm(locals_(a), 2, dtype=dtype), list(a))


def looksam_direction(g: Sequence[torch.Tensor], g_s: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """LookSAM's g_v: the part of the SAM gradient g_s orthogonal to the plain gradient g (float32).

    g_v = g_s - ||g_s|| cos(theta) g / ||g||  with  cos(theta) = <g, g_s> / (||g|| ||g_s||),
    that is  g_v = g_s - (<g, g_s> / ||g||^2) g.
    """
    g32 = [x.float() for x in g]
    coeff = _dot(g32, g_s) / _norm(g32).pow(2).clamp_min(1e-30)
    g_v = [y.float().clone() for y in g_s]  # sharded g_s: sharded g_v, worked on shard by shard
    if g_v:
        shards = locals_(g_v)
        torch._foreach_add_(shards, torch._foreach_mul(locals_(g32), coeff.to(shards[0].device)), alpha=-1.0)
    return g_v


@torch.no_grad()
def looksam_gradient_(grads: Sequence[torch.Tensor], g_v: Sequence[torch.Tensor], alpha: float) -> None:
    """LookSAM's reuse step, in place: g <- g + alpha * (||g|| / ||g_v||) * g_v."""
    grads = list(grads)
    if not grads:
        return
    scale = alpha * _norm(grads) / _norm(g_v).clamp_min(1e-30)
    shards = locals_(grads)
    torch._foreach_add_(shards, [(v * scale.to(v.device)).to(x.dtype) for v, x in zip(locals_(g_v), shards, strict=True)])
