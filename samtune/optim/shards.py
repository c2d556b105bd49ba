"""SAM's maths on sharded tensors (FSDP2's DTensors): elementwise work on each process's shard, sums made global.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`) every parameter and its gradient is a DTensor
whose local tensor is this process's shard (dim 0 split across the mesh, uneven at the end). SAM
needs two kinds of operation on them:

- elementwise ones (e(w) = scale * g, ASAM's w^2 g, the climb, the copy of w and its restore): each
  process does them on its own shard, in place on the local tensor (a view of the DTensor's
  storage, so FSDP's next all-gather sees the climbed weights). No communication, and the copy of
  w is one shard: memory per process grows by one shard of w, not by the model.
- reductions (||g||, || |w| g ||, LookSAM's <g, g_s>): the sum of the squared (or multiplied)
  shard values, all-reduced once over the mesh dimensions on which the tensors are sharded (a
  dimension on which they are replicated, HSDP's replica groups, holds the same values and is not
  summed again).

Plain tensors pass through unchanged, so the same functions serve one process, DDP and FSDP2.
Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:  # torch.distributed is optional in some PyTorch builds
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - builds without torch.distributed
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(t: torch.Tensor | None) -> bool:
    """Whether `t` is a DTensor (a parameter or gradient of an FSDP2 model)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this process holds: a DTensor's local shard (a view: writing it writes `t`), else `t`."""
    if is_sharded(t):
        with torch.no_grad():
            return t.to_local()  # type: ignore[union-attr]
    return t


def locals_(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`local` of each tensor."""
    return [local(t) for t in tensors]


def _summed_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The mesh dimensions over which a DTensor's shards must be summed (those it is sharded on)."""
    dims = []
    for dim, placement in enumerate(t.placements):  # type: ignore[union-attr]
        if isinstance(placement, Shard):
            dims.append(dim)
        elif isinstance(placement, Partial):
            raise ValueError(
                "a gradient is a partial sum (DTensor placement Partial): SAM needs the reduced gradient; "
                "take the ascent gradient with FSDP's reduce-scatter on"
            )
        elif not isinstance(placement, Replicate):  # pragma: no cover - a placement torch may add
            raise ValueError(f"SAM does not know DTensor placement {placement!r}")
    return tuple(dims)


def global_sum(values: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of scalars `values[i]`, each computed on this process's shard of `refs[i]`, over all shards.

    Plain tensors' values are summed as they are. The sharded ones are summed per mesh and set of
    sharded mesh dimensions, then all-reduced over those dimensions (one all-reduce per mesh
    dimension; FSDP2 has one). The result is a float32 (float64 if any value is) scalar on the
    values' device; every process of the mesh must call this with the same tensors, in the same order.
    """
    if not values:
        return torch.zeros((), dtype=torch.float32)
    device = values[0].device
    dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
    plain: list[torch.Tensor] = []
    groups: dict[tuple[int, tuple[int, ...]], tuple[object, list[torch.Tensor]]] = {}
    for v, ref in zip(values, refs, strict=True):
        v = v.to(device=device, dtype=dtype)
        if not is_sharded(ref):
            plain.append(v)
            continue
        key = (id(ref.device_mesh), _summed_dims(ref))  # type: ignore[union-attr]
        groups.setdefault(key, (ref.device_mesh, []))[1].append(v)  # type: ignore[union-attr]
    total = torch.stack(plain).sum() if plain else torch.zeros((), dtype=dtype, device=device)
    for (_, dims), (mesh, parts) in groups.items():
        shard_sum = torch.stack(parts).sum()
        for dim in dims:
            dist.all_reduce(shard_sum, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))  # type: ignore[union-attr]
        total = total + shard_sum
    return total


def global_norm(norms: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of a list of tensors from each one's norm on this process's shard: sqrt(sum of squares, globally)."""
    if not norms:
        return torch.zeros((), dtype=torch.float32)
    device = norms[0].device
    if not any(is_sharded(r) for r in refs):  # one process's tensors: the norm of the norms, as always
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2)
    return global_sum([n.to(device).square() for n in norms], refs).sqrt()
