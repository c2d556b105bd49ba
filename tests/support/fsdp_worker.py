"""Run by test_fsdp.py under torchrun (2 CPU processes, gloo): SAM on parameters sharded with FSDP2's `fully_shard`.

A small MLP whose layers have odd output sizes (13, 5, 3: uneven shards, one process holds fewer
rows) is sharded layer by layer and at the root. Every scenario starts from the same initial
weights and trains on data every process generates alike; each process trains on its own half
of every batch. Rank 0 saves each scenario's final full weights (`full_tensor()`), and every rank
saves what it measured of its own shards, for the test to compare with a single-process hand-written
SAM on the processes' batches together.

Scenarios:
- "sam", "asam", "rho0": the standalone `samtune.optim.SAM` (first_step / second_step, SGD base);
  "plain": FSDP2 with plain SGD (for rho=0, which must equal it to the bit);
- "steps-ga2": the step functions SAMTrainer uses under FSDP2 (the ascent through FSDP's
  reduce-scatter with `.grad` set aside, `sam_perturbation`, `save_and_climb_`, the descent
  accumulated over 2 micro-batches, `restore_weights_`), as the Trainer does per micro-batch;
- "looksam": LookSAM k=2 through `looksam_direction` / `looksam_gradient_` on sharded gradients;
- "bf16-restore": FSDP2 with a bf16 MixedPrecisionPolicy and lr=0: after SAM's steps the sharded
  float32 weights must be the initial ones to the bit (the climb and its restore by copy happen
  in the parameters' own dtype).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from samtune.optim import SAM
from samtune.optim.functional import gradients_by_backward, restore_weights_, sam_perturbation, save_and_climb_
from samtune.optim.variants.looksam import looksam_direction, looksam_gradient_

STEPS, BATCH, LR = 3, 8, 0.3  # BATCH rows per process per optimizer step


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every step's batch for both processes together (rows [0, BATCH) are rank 0's)."""
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(2 * BATCH, 7, generator=g, dtype=torch.float64), torch.randint(0, 3, (2 * BATCH,), generator=g))
        for _ in range(STEPS)
    ]


def sharded(mp: MixedPrecisionPolicy | None = None) -> nn.Sequential:
    model = mlp()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    kw = {"mesh": mesh} if mp is None else {"mesh": mesh, "mp_policy": mp}
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def mine(x: torch.Tensor, rank: int) -> torch.Tensor:
    return x[rank * BATCH : (rank + 1) * BATCH]


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def full(model) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}


def standalone(rank: int, rho: float, adaptive: bool):
    model = sharded()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR)
    for x, y in data():
        x, y = mine(x, rank), mine(y, rank)
        loss_of(model, x, y).backward()
        opt.first_step(zero_grad=True)
        loss_of(model, x, y).backward()
        opt.second_step(zero_grad=True)
    return full(model)


def plain(rank: int):
    model = sharded()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in data():
        loss_of(model, mine(x, rank), mine(y, rank)).backward()
        opt.step()
        opt.zero_grad()
    return full(model)


def trainer_steps(rank: int, rho: float = 0.05, ga: int = 2):
    """The Trainer's per-micro-batch SAM step under FSDP2, with gradient accumulation."""
    model = sharded()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR)
    measured = {"saved_bytes": 0, "param_bytes": 0, "grads_kept_between": True}
    for x, y in data():
        x, y = mine(x, rank), mine(y, rank)
        for m in range(ga):
            xm, ym = x[m::ga], y[m::ga]  # micro-batch m of this process's rows
            before = [None if p.grad is None else p.grad.to_local().clone() for p in params]
            grads = gradients_by_backward(lambda: loss_of(model, xm, ym).backward(), params)
            after = [None if p.grad is None else p.grad.to_local() for p in params]
            # The ascent neither added to nor dropped the descent gradients accumulated so far.
            measured["grads_kept_between"] &= all(
                (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                for a, b in zip(after, before)
            )
            perturbed, e, _ = sam_perturbation(grads, params, rho)
            del grads
            saved = save_and_climb_(perturbed, e)
            measured["saved_bytes"] = max(measured["saved_bytes"], sum(s.numel() * s.element_size() for s in saved))
            measured["param_bytes"] = sum(p.numel() * p.element_size() for p in params)  # the full (global) sizes
            try:
                (loss_of(model, xm, ym) / ga).backward()
            finally:
                restore_weights_(perturbed, saved)
        opt.step()
        opt.zero_grad()
    return full(model), measured


def looksam(rank: int, rho: float = 0.05, k: int = 2, alpha: float = 0.7):
    """LookSAM, one micro-batch a step: a SAM step records g_v every k steps, the others reuse it."""
    model = sharded()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    g_v = None
    for step, (x, y) in enumerate(data()):
        x, y = mine(x, rank), mine(y, rank)
        if step % k == 0:
            grads = gradients_by_backward(lambda: loss_of(model, x, y).backward(), params)
            plain_g = [g.clone() for g in grads]
            perturbed, e, _ = sam_perturbation(grads, params, rho)
            saved = save_and_climb_(perturbed, e)
            try:
                loss_of(model, x, y).backward()
            finally:
                restore_weights_(perturbed, saved)
            g_v = looksam_direction(plain_g, [p.grad for p in params])
        else:
            loss_of(model, x, y).backward()
            looksam_gradient_([p.grad for p in params], g_v, alpha)
        opt.step()
        opt.zero_grad()
    return full(model)


def bf16_restore(rank: int):
    model = sharded(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    before = {k: v.to_local().clone() for k, v in model.state_dict().items()}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.0)
    dtypes = set()
    for x, y in data():
        x, y = mine(x, rank), mine(y, rank)
        loss_of(model, x, y).backward()
        opt.first_step(zero_grad=True)
        dtypes |= {str(s.dtype) for _, ss in opt._saved for s in ss}
        loss_of(model, x, y).backward()
        opt.second_step(zero_grad=True)
    after = {k: v.to_local() for k, v in model.state_dict().items()}
    return {"restored": all(torch.equal(before[k], after[k]) for k in before), "saved_dtypes": sorted(dtypes)}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {
        "sam": standalone(rank, 0.05, False),
        "asam": standalone(rank, 0.5, True),
        "rho0": standalone(rank, 0.0, False),
        "plain": plain(rank),
        "looksam": looksam(rank),
    }
    results["steps-ga2"], measured = trainer_steps(rank)
    results["measured"] = measured
    results["bf16"] = bf16_restore(rank)
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
