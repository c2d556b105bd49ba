"""Peak memory per process of a SAM step under FSDP2, against plain FSDP2 and against one shard of w.

    python benchmarks/fsdp_memory.py [--nproc 2] [--out benchmarks/results]

Launches itself on `--nproc` CPU processes (gloo). A BERT-shaped classifier built from a config
(no Hub; 4 layers of width 256, vocab 8192: 5.3M parameters, 20.4 MiB in float32) is sharded with
`fully_shard` layer by layer and at the root, as Accelerate's FSDP2 does. Each process measures, with
torch's MemTracker (a dispatch mode that sees every tensor PyTorch allocates), the peak bytes of one
optimizer step above those allocated when it starts, after a warm-up step (AdamW's state exists):

- plain FSDP2 with AdamW (one forward/backward a step);
- SAM with AdamW through the functions SAMTrainer runs under FSDP2 (the ascent through FSDP's
  reduce-scatter with `.grad` set aside, `sam_perturbation`, `save_and_climb_`, the descent,
  `restore_weights_`), with 1 and 2 micro-batches a step.

The claim it checks (issue 16): SAM's extra peak per process is one shard of w plus at most a chunk
(`samtune.optim.functional.CHUNK_SHARE` of the shard's bytes, at least CHUNK_FLOOR), not the model.
Writes `fsdp-memory-cpu-<date>.json` and `.md` under --out (rank 0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.memory import _step_tracker  # noqa: E402


def _model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=128,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def _shard(model):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _batch(rank: int, rows: int = 8, length: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return {
        "input_ids": torch.randint(0, 8192, (rows, length), generator=g),
        "labels": torch.randint(0, 2, (rows,), generator=g),
    }


def _plain_step(model, opt, micro):
    for batch in micro:
        (model(**batch).loss / len(micro)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sam_step(model, opt, micro, rho=0.05):
    from samtune.optim.functional import gradients_by_backward, restore_weights_, sam_perturbation, save_and_climb_

    params = [p for p in model.parameters() if p.requires_grad]
    for batch in micro:
        grads = gradients_by_backward(lambda: model(**batch).loss.backward(), params)
        perturbed, e, _ = sam_perturbation(grads, params, rho)
        del grads
        saved = save_and_climb_(perturbed, e)
        del e
        try:
            (model(**batch).loss / len(micro)).backward()
        finally:
            restore_weights_(perturbed, saved)
        del saved
    opt.step()
    opt.zero_grad(set_to_none=True)


def _peak(model, opt, step, micro) -> dict[str, int]:
    step(model, opt, micro)  # warm-up: AdamW's state exists from here on
    gc.collect()
    tracker = _step_tracker()
    tracker.track_external(model, opt)
    with tracker:
        start = tracker.get_tracker_snapshot("current")
        step(model, opt, micro)
        peak = tracker.get_tracker_snapshot("peak")
    cpu = next(d for d in peak if torch.device(d).type == "cpu")
    start_total = next((v["Total"] for d, v in start.items() if torch.device(d).type == "cpu"), 0)
    return {"start": int(start_total), "peak": int(peak[cpu]["Total"])}


def worker(out: Path) -> None:
    import torch.distributed as dist

    from samtune.optim.functional import CHUNK_FLOOR, CHUNK_SHARE
    from samtune.optim.shards import local

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = {}
    for name, step, ga in (
        ("fsdp2-adamw", _plain_step, 1),
        ("fsdp2-sam", _sam_step, 1),
        ("fsdp2-adamw-ga2", _plain_step, 2),
        ("fsdp2-sam-ga2", _sam_step, 2),
    ):
        model = _shard(_model())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        micro = [_batch(rank + 10 * m) for m in range(ga)]
        rows[name] = _peak(model, opt, step, micro)
        params = list(model.parameters())
        rows["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
        rows["shard_bytes"] = sum(local(p).numel() * local(p).element_size() for p in params)
        del model, opt
        gc.collect()
    shard = rows["shard_bytes"]
    rows["chunk_bound"] = max(CHUNK_FLOOR, int(shard * CHUNK_SHARE))
    for ga in ("", "-ga2"):
        extra = (rows[f"fsdp2-sam{ga}"]["peak"] - rows[f"fsdp2-sam{ga}"]["start"]) - (
            rows[f"fsdp2-adamw{ga}"]["peak"] - rows[f"fsdp2-adamw{ga}"]["start"]
        )
        rows[f"extra{ga}"] = extra
        rows[f"extra{ga}_per_shard"] = extra / shard
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        result = {
            "suite": "fsdp-memory",
            "processes": world,
            "machine": machine_info("cpu"),
            "method": "torch MemTracker (dispatch mode), per process",
            "ranks": gathered,
        }
        stamp = time.strftime("%Y%m%d")
        out.mkdir(parents=True, exist_ok=True)
        (out / f"fsdp-memory-cpu-{stamp}.json").write_text(json.dumps(result, indent=2))
        (out / f"fsdp-memory-cpu-{stamp}.md").write_text(markdown(result))
        print(markdown(result))
    dist.destroy_process_group()


def markdown(result: dict) -> str:
    mb = 2**20
    lines = [
        f"# SAM's peak memory per process under FSDP2 ({result['processes']} CPU processes, gloo)",
        "",
        f"Machine: {result['machine'].get('cpu', '?')}; {result['method']}.",
        "",
        "| process | w (whole) | its shard of w | FSDP2+AdamW step peak | SAM step peak | SAM extra | extra / shard | "
        "GA 2: SAM extra | GA 2: extra / shard | chunk bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, r in enumerate(result["ranks"]):
        plain, sam = r["fsdp2-adamw"], r["fsdp2-sam"]
        lines.append(
            f"| {rank} | {r['param_bytes'] / mb:.1f} MiB | {r['shard_bytes'] / mb:.1f} MiB | "
            f"{(plain['peak'] - plain['start']) / mb:.1f} MiB | {(sam['peak'] - sam['start']) / mb:.1f} MiB | "
            f"{r['extra'] / mb:+.1f} MiB | {r['extra_per_shard']:.2f} | {r['extra-ga2'] / mb:+.1f} MiB | "
            f"{r['extra-ga2_per_shard']:.2f} | {r['chunk_bound'] / mb:.1f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if "LOCAL_RANK" in os.environ:
        worker(args.out)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with socket.socket() as s:  # a free port for the processes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(args.nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(Path(__file__).resolve()),
        "--out",
        str(args.out),
    ]
    raise SystemExit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()
