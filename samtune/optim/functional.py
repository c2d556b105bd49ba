"""The SAM maths, in pure PyTorch: one place for both the Trainer step and the standalone optimizer.

SAM (Foret et al., ICLR 2021) replaces the gradient at w by the gradient at the worst point of a
rho-ball around w, found to first order:

    e(w) = rho * g / ||g||                          (SAM)
    e(w) = rho * T^2 * g / || T * g ||              (ASAM, Kwon et al., ICML 2021: T = |w| + eta)

ASAM's eta (`asam_eta`) keeps weights at exactly 0 in the climb; eta 0 is davda54/sam's form, T = |w|.
The functions here take eta 0 unless told (the plain formula); samtune's default, the paper's 0.01, is
the setting's (samtune.optim.settings), which the Trainer and the standalone optimizer pass.

The step is then: save w, climb to w + e(w), take the gradient there, restore w exactly (by copy,
never by subtracting e(w), which drifts in low precision), and let the base optimizer step.

Every function here works on lists of tensors with `torch._foreach_*` ops (one launch per list
rather than one per parameter) and imports nothing from transformers. Sharded tensors (FSDP2's
DTensors) are worked on shard by shard, the norms made global (samtune.optim.shards).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from samtune.optim.shards import global_norm, local, locals_

# Added to ||g|| so that a zero gradient gives e(w) = 0 instead of 0/0 (as davda54/sam does).
NORM_EPS = 1e-12


# save_and_climb_ and ASAM's norm work on chunks of about this share of the parameter bytes, and no
# smaller than CHUNK_FLOOR: below that, one more launch costs more than the memory it saves.
CHUNK_SHARE = 1 / 16
CHUNK_FLOOR = 4 * 2**20


def _chunks(tensors: Sequence[torch.Tensor | None], share: float = CHUNK_SHARE) -> Iterator[list[int]]:
    """Consecutive index groups of `tensors`, each about `share` of their bytes or CHUNK_FLOOR (at least one tensor).

    Ops on one chunk at a time bound the temporaries to a chunk's size; a tensor larger than the
    share is a chunk of its own.
    """
    sizes = [local(t).numel() * t.element_size() if t is not None else 0 for t in tensors]
    budget = max(CHUNK_FLOOR, int(sum(sizes) * share))
    chunk: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if chunk and used + size > budget:
            yield chunk
            chunk, used = [], 0
        chunk.append(i)
        used += size
    if chunk:
        yield chunk


def _present(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]):
    """Pairs (grads, params) with the parameters that received no gradient left out."""
    pairs = [(g, p) for g, p in zip(grads, params, strict=True) if g is not None]
    return [g for g, _ in pairs], [p for _, p in pairs]


def ascent_norm(
    grads: Sequence[torch.Tensor | None],
    params: Sequence[torch.Tensor] | None = None,
    adaptive: bool | Sequence[bool] = False,
    asam_eta: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """The global L2 norm that SAM divides by: ||g||, or || T * g || for ASAM, T = |w| + asam_eta (a float32 scalar,
    float64 for float64).

    `adaptive` and `asam_eta` may be one value per tensor (the standalone optimizer allows them per
    param group). Sharded tensors (DTensors) contribute their shards' norms, summed over the
    processes (one all-reduce): every process of their mesh must call this alike.
    """
    if isinstance(adaptive, bool):
        adaptive = [adaptive] * len(grads)
    if isinstance(asam_eta, (int, float)):
        asam_eta = [float(asam_eta)] * len(grads)
    if params is None:
        if any(adaptive):
            raise ValueError("ASAM's norm || T * g || needs the parameters")
        params = [None] * len(grads)  # type: ignore[list-item]
    plain = [g for g, a in zip(grads, adaptive, strict=True) if g is not None and not a]
    scaled = [
        (g, p, eta) for g, p, a, eta in zip(grads, params, adaptive, asam_eta, strict=True) if g is not None and a
    ]
    dtype = _norm_dtype(grads)
    norms: list[torch.Tensor] = []
    if plain:
        norms += torch._foreach_norm(locals_(plain), 2, dtype=dtype)
    # || T * g || chunk by chunk: the product is a temporary the size of its inputs.
    for chunk in _chunks([g for g, _, _ in scaled]):
        weights = asam_scale([scaled[i][1] for i in chunk], [scaled[i][2] for i in chunk])
        weighted = torch._foreach_mul(weights, [local(scaled[i][0]) for i in chunk])
        norms += torch._foreach_norm(weighted, 2, dtype=dtype)
        del weighted, weights
    return global_norm(norms, plain + [g for g, _, _ in scaled])


def asam_scale(params: Sequence[torch.Tensor], asam_eta: float | Sequence[float]) -> list[torch.Tensor]:
    """ASAM's T = |w| + eta of each parameter (of sharded ones: this process's shard), eta one value or one per tensor.

    Where every eta is 0 this is w itself, no temporary: || |w| g || = || w g || and |w|^2 = w^2,
    which is all the maths asks of T (davda54/sam's form).
    """
    etas = [float(asam_eta)] * len(params) if isinstance(asam_eta, (int, float)) else [float(e) for e in asam_eta]
    weights = [local(p.detach()) for p in params]
    if not any(etas):
        return weights
    scale = torch._foreach_abs(weights)
    torch._foreach_add_(scale, etas)
    return scale


def _scale_by_asam_(grads: list[torch.Tensor], params: Sequence[torch.Tensor], asam_eta: float, times: int) -> None:
    """g <- T^times * g in place (T = |w| + asam_eta), chunk by chunk: T is at most a chunk's temporary."""
    for chunk in _chunks(grads):
        scale = asam_scale([params[i] for i in chunk], asam_eta)
        for _ in range(times):
            torch._foreach_mul_([grads[i] for i in chunk], scale)


def _norm_dtype(tensors: Sequence[torch.Tensor | None]) -> torch.dtype:
    """Norms accumulate in float32 (float64 for float64 tensors: torch does not narrow in a norm)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def owned(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors, each one safe to write in place: a clone where it shares memory with another.

    `torch.autograd.grad` may return gradients that alias: two parameters added directly get the
    same tensor, and a parameter broadcast over a batch of one gets a view of another's gradient
    (a ViT's `cls_token` gradient is then a slice of the `position_embeddings` gradient), or a
    stride-0 expansion. Scaling such tensors in place scales the shared elements twice. A tensor
    is kept as it is only if it is contiguous (no element stored twice) and its bytes overlap no
    earlier kept tensor's; the others are cloned (only the aliasing ones: no cost for the usual
    distinct gradients, nor for FSDP2's sharded gradients, distinct views of one reduce-scatter
    buffer). Sharded tensors (DTensors) are replaced by their local shards.
    """
    kept: dict[int, list[tuple[int, int]]] = {}  # storage -> byte ranges of the tensors kept in it
    out: list[torch.Tensor] = []
    for g in locals_(grads):
        storage, span = _byte_range(g)
        if not g.is_contiguous() or any(a < span[1] and span[0] < b for a, b in kept.get(storage, [])):
            g = g.clone(memory_format=torch.contiguous_format)
            storage, span = _byte_range(g)
        kept.setdefault(storage, []).append(span)
        out.append(g)
    return out


def _byte_range(t: torch.Tensor) -> tuple[int, tuple[int, int]]:
    """(storage address, [first byte, end byte)) of a contiguous tensor's elements in its storage."""
    start = t.storage_offset() * t.element_size()
    return t.untyped_storage().data_ptr(), (start, start + max(t.numel(), 1) * t.element_size())


def perturbation_(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    scale: torch.Tensor | float,
    adaptive: bool = False,
    asam_eta: float = 0.0,
) -> list[torch.Tensor]:
    """Turn g into e(w) in place: e = scale * g, or scale * T^2 * g for ASAM (T = |w| + asam_eta); returns the list.

    `scale` is rho / (norm + eps), from `ascent_norm`. The grads are overwritten: they are the
    ascent gradients, needed for nothing else once e(w) is known (gradients that share memory
    are cloned first, see `owned`). Sharded tensors: the returned e(w) is this process's shards.
    """
    grads = owned(grads)
    if not grads:
        return grads
    if adaptive:
        _scale_by_asam_(grads, params, asam_eta, times=2)  # T^2 g as (T g) T, in place
    if isinstance(scale, torch.Tensor):
        devices = {g.device for g in grads}
        # One device: keep the scale on it (no host sync); a model split across devices: a number.
        scale = scale.to(grads[0].device) if len(devices) == 1 else float(scale)
    torch._foreach_mul_(grads, scale)
    return grads


def save_and_climb_(
    params: Sequence[torch.Tensor], e: list[torch.Tensor | None], out: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Save w exactly and climb to w + e(w), chunk by chunk; returns the saved copy of w.

    Each chunk's e(w) is dropped from the list as soon as it is applied, so the copy of w grows
    while e(w) shrinks: the peak is one copy of the parameters plus one chunk, rather than two
    copies (the caller must hold no other reference to the tensors in `e`). `out`, a copy saved
    by an earlier step, is reused when it matches the parameters (no new allocation).
    """
    shards = locals_(params)
    reuse = (
        out is not None
        and len(out) == len(params)
        and all(
            o.shape == p.shape and o.dtype == p.dtype and o.device == p.device for o, p in zip(out, shards, strict=True)
        )
    )
    saved: list[torch.Tensor] = []
    try:
        for chunk in _chunks(e):
            ps = [params[i] for i in chunk]
            if reuse:
                kept = [out[i] for i in chunk]  # type: ignore[index]
                torch._foreach_copy_(kept, [local(p.detach()) for p in ps])
                saved += kept
            else:
                saved += save_weights(ps)
            climb_(ps, [e[i] for i in chunk])  # climb to the local maximum "w + e(w)"
            for i in chunk:
                e[i] = None
    except BaseException:
        # An error part-way (out of memory in chunk k, Ctrl-C) must not leave chunks 1..k at
        # w + e(w) with nothing saved to come back to: every saved chunk is copied back (a chunk
        # saved but not yet climbed is copied onto itself, which changes nothing).
        restore_weights_(params[: len(saved)], saved)
        raise
    return saved


def save_weights(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """An exact copy of w, to come back to after the climb (of sharded parameters: this process's shards)."""
    shards = [local(p.detach()) for p in params]
    saved = [torch.empty_like(p) for p in shards]
    if saved:
        torch._foreach_copy_(saved, shards)
    return saved


@torch.no_grad()
def climb_(params: Sequence[torch.Tensor], e: Sequence[torch.Tensor]) -> None:
    """Climb to the local maximum: w <- w + e(w) (in the parameters' own dtype; sharded: shard by shard)."""
    if params:
        shards = locals_(params)
        torch._foreach_add_(shards, [local(x).to(p.dtype) for x, p in zip(e, shards, strict=True)])


@torch.no_grad()
def restore_weights_(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Get back to w from w + e(w), by copying the saved tensors (bit-exact in any dtype)."""
    if params:
        torch._foreach_copy_(locals_(params), locals_(saved))


def sam_perturbation(
    grads: Sequence[torch.Tensor | None],
    params: Sequence[torch.Tensor],
    rho: float,
    adaptive: bool = False,
    asam_eta: float = 0.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """e(w) for the parameters that have a gradient: returns (params, e, ascent norm); ASAM's T = |w| + asam_eta.

    The caller decides what a non-finite norm means (the Trainer skips the climb); e(w) is then
    meaningless and must not be applied.
    """
    grads, params = _present(grads, params)
    if not adaptive or not grads:
        norm = ascent_norm(grads, params)
        if not grads:
            return params, [], norm
        return params, perturbation_(grads, params, rho / (norm + NORM_EPS)), norm
    # ASAM, in place: g <- T g, whose norm is || T g ||; then e = rho / || T g || * (T g) * T = rho * T^2 g / || T g ||.
    # With eta 0, T is w itself (no temporary); otherwise |w| + eta, a chunk at a time.
    refs = grads  # sharded tensors: the norm is summed over their shards
    grads = owned(grads)
    _scale_by_asam_(grads, params, asam_eta, times=1)
    norm = global_norm(torch._foreach_norm(grads, 2, dtype=_norm_dtype(grads)), refs)
    _scale_by_asam_(grads, params, asam_eta, times=1)
    return params, perturbation_(grads, params, rho / (norm + NORM_EPS)), norm


def gradients_by_backward(
    backward: Callable[[], object], params: Sequence[torch.Tensor], written: Sequence[torch.Tensor] = ()
) -> list[torch.Tensor | None]:
    """The gradients that `backward()` writes into `params`' `.grad`, with their earlier `.grad` left as it was.

    For models whose gradients only a backward pass produces: under FSDP2 the gradient of a sharded
    parameter is written by FSDP's post-backward hook (the reduce-scatter, which averages it over the
    processes); `torch.autograd.grad` with respect to the sharded parameters sees none. The `.grad`
    already held (earlier micro-batches' descent gradients) is set aside during the pass and put
    back, even on an error: the ascent gradient never mixes with it. The pass writes the gradient of
    every parameter that requires one: `written` names those beyond `params` (the parameters that do
    not climb), whose `.grad` is set aside and put back alike, and what the pass wrote for them dropped.
    List the parameters before the forward pass: FSDP2 swaps the root module's unsharded parameters in
    from its forward to the end of its backward, and a module's parameters are then those.
    """
    aside = list({id(p): p for p in (*params, *written)}.values())
    held = [p.grad for p in aside]
    for p in aside:
        p.grad = None
    try:
        backward()
        return [p.grad for p in params]
    finally:
        for p, g in zip(aside, held, strict=True):
            p.grad = g


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters SAM perturbs: those that train (frozen LoRA/PEFT bases have no gradient)."""
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Normalisation layers use batch statistics but leave their running statistics alone.

    SAM runs two forward passes per batch; the running mean/var (and `num_batches_tracked`) must
    be updated by the first, at w, and not again at w + e(w). With `track_running_stats` off in
    training mode a BatchNorm layer neither reads nor writes its buffers, which is exact (unlike
    momentum = 0, where 0 * NaN poisons the buffers and the batch counter still moves). Other
    layers that track statistics (InstanceNorm with track_running_stats) get their buffers back.
    """
    batchnorms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    others = [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and not isinstance(m, _BatchNorm) and m.track_running_stats
    ]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in others]
    for m in batchnorms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in batchnorms:
            m.track_running_stats = True
        with torch.no_grad():
            for m, buffers in zip(others, saved):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
