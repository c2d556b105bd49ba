"""Run by test_fsdp.py under torchrun (4 CPU processes, gloo): SAM under HSDP, a 2-D mesh (2 replicas x 2 shards).

Each parameter is a DTensor replicated over the mesh's first dimension and sharded over its second:
the norms must be summed over the shards and not again over the replicas. Every process trains on
its own quarter of each batch (FSDP2 averages the gradients over all four). Rank 0 saves the final
full weights of the standalone `samtune.optim.SAM` (SAM and ASAM, SGD base) and the weights' placements.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fsdp_worker import BATCH, LR, STEPS, loss_of, mlp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from samtune.optim import SAM

PROCESSES = 4


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every step's batch for the four processes together (rows [r * BATCH, (r + 1) * BATCH) are rank r's)."""
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(PROCESSES * BATCH, 7, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (PROCESSES * BATCH,), generator=g),
        )
        for _ in range(STEPS)
    ]


def train(rank: int, rho: float, adaptive: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    model = mlp()
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    placements = sorted({str(p.placements) for p in model.parameters()})
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR)
    for x, y in data():
        x, y = x[rank * BATCH : (rank + 1) * BATCH], y[rank * BATCH : (rank + 1) * BATCH]
        loss_of(model, x, y).backward()
        opt.first_step(zero_grad=True)
        loss_of(model, x, y).backward()
        opt.second_step(zero_grad=True)
    return {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}, placements


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == PROCESSES
    results = {}
    for name, rho, adaptive in (("sam", 0.05, False), ("asam", 0.5, True)):
        results[name], results["placements"] = train(rank, rho, adaptive)
    if rank == 0:
        torch.save(results, Path(sys.argv[1]) / "hsdp.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
