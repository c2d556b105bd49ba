"""GPU figures: what a SAM step costs on a ViT-B/16 and a BERT-base, in bf16, against AdamW's.

    bash benchmarks/gpu.sh              # on a CUDA GPU: about 3-5 minutes
    bash benchmarks/gpu.sh --dry-run    # anywhere: tiny models on the CPU, every code path, seconds

For each model, built from its config (no Hub: the sizes of google/vit-base-patch16-224, 86M
parameters, and google-bert/bert-base-uncased, 110M), with bf16 autocast and a batch that fills a
GPU reasonably (128 images of 224x224; 64 sequences of 256 tokens), it prints and saves:

- the median time of an optimizer step for AdamW (rho=0, the stock step) and exact SAM, timed
  interleaved (blocks of steps, the arms' order rotating each repeat), and SAM/AdamW;
- the peak memory of a step of each (`torch.cuda.max_memory_allocated`, after a warm-up);
- images or tokens per second;
- the same for `sam-second-half` (`sam.start: 0.5`), the cheapest setting measured to keep most of
  SAM's gain (87% of it on the label-noise fine-tune, README "When does SAM help?"): its first half
  takes AdamW's steps and its second half SAM's, so its time per step over a run is their mean and
  its peak memory SAM's (derived from the two measured arms, not timed separately).

Results: `benchmarks/results/gpu-<gpu name>-<YYYYMMDD-HHMM>.json` and `.md` (with --dry-run, under a
temporary folder unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cost import time_arms  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.memory import step_peak_bytes  # noqa: E402
from benchmarks.models import BenchModel, _image_batch, _text_batch, _to_device  # noqa: E402
from benchmarks.steps import make_trainer, optimizer_step  # noqa: E402

ARMS = ("adamw", "sam")


def _vit(dry: bool) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from transformers import ViTConfig, ViTForImageClassification

        torch.manual_seed(0)
        config = (
            ViTConfig(
                image_size=16,
                patch_size=4,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
                num_labels=10,
            )
            if dry
            else ViTConfig(num_labels=10)
        )
        return ViTForImageClassification(config)

    return build


def _bert(dry: bool) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = (
            BertConfig(
                vocab_size=64,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
                num_labels=2,
            )
            if dry
            else BertConfig(num_labels=2)
        )
        return BertForSequenceClassification(config)

    return build


def models(dry: bool) -> list[tuple[BenchModel, str, int]]:
    """(model, unit, units per step): the two GPU models, or their tiny stand-ins for --dry-run."""
    images, rows, length = (8, 8, 16) if dry else (128, 64, 256)
    size = 16 if dry else 224
    vocab = (1, 64) if dry else (1000, 30522)
    block, repeats = (2, 1) if dry else (10, 7)
    return [
        (
            BenchModel(
                "vit-b16",
                "ViT-B/16 from its config (86M parameters), 10 classes",
                f"{images} images 3x{size}x{size}",
                _vit(dry),
                _image_batch(images, size, 10),
                min_block=block,
                repeats=repeats,
            ),
            "images",
            images,
        ),
        (
            BenchModel(
                "bert-base",
                "BERT-base from its config (110M parameters), 2 classes",
                f"{rows} x {length} tokens",
                _bert(dry),
                _text_batch(rows, length, vocab, 2),
                min_block=block,
                repeats=repeats,
            ),
            "tokens",
            rows * length,
        ),
    ]


def peak_memory(spec: BenchModel, arm: str, device: str, precision: str) -> dict[str, int]:
    """One step's peak allocated bytes (and those allocated when it starts), after a warm-up step."""
    batch = _to_device(spec.batch(), device)
    size = next(iter(batch.values())).shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(spec.build(), arm, device=device, precision=precision, batch_size=size, output_dir=tmp)
        optimizer_step(trainer, [batch])
        measured = step_peak_bytes(trainer, [batch], device)
        del trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"start": measured["start"], "peak": measured["peak"]}


def run(dry: bool, log: Callable[[str], None] = print) -> dict:
    device = "cpu" if dry else "cuda"
    precision = "fp32" if dry else "bf16"  # bf16 autocast needs a GPU that has it; the dry run checks the paths
    info = machine_info(device)
    result: dict = {
        "suite": "gpu",
        "dry_run": dry,
        "device": device,
        "precision": precision,
        "machine": info,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "models": {},
    }
    for spec, unit, units in models(dry):
        log(f"{spec.name}: timing {', '.join(ARMS)} ({spec.repeats} repeats of {spec.min_block}-step blocks)")
        timed = time_arms(spec, ARMS, device=device, precision=precision, log=log)
        step = {a: median(timed["per_step_s"][a]) for a in ARMS}
        memory = {a: peak_memory(spec, a, device, precision) for a in ARMS}
        rows = {
            a: {
                "step_s": step[a],
                "ratio": step[a] / step["adamw"],
                "peak_bytes": memory[a]["peak"],
                "per_s": units / step[a],
            }
            for a in ARMS
        }
        half = (step["adamw"] + step["sam"]) / 2
        rows["sam-second-half"] = {
            "step_s": half,
            "ratio": half / step["adamw"],
            "peak_bytes": memory["sam"]["peak"],
            "per_s": units / half,
            "derived": True,
        }
        result["models"][spec.name] = {
            "description": spec.description,
            "batch": spec.batch_desc,
            "unit": unit,
            "params": timed["params"]["parameters"],
            "arms": rows,
            "per_step_s": timed["per_step_s"],
        }
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    gpu = m.get("gpu") or "no GPU (dry run)"
    lines = [
        f"# samtune on {gpu}: SAM vs AdamW, {result['precision']} ({result['date']})",
        "",
        f"torch {m.get('torch', '?')}, transformers {m.get('transformers', '?')}; CPU {m.get('cpu', '?')}."
        + (" **Dry run: tiny models on the CPU, the figures mean nothing.**" if result["dry_run"] else ""),
        "",
    ]
    for name, r in result["models"].items():
        unit = r["unit"]
        lines += [
            f"## {name}: {r['description']}; {r['params']:,} parameters measured; batch {r['batch']}",
            "",
            f"| arm | step (median) | vs AdamW | peak memory | {unit}/s |",
            "|---|---|---|---|---|",
        ]
        for arm, a in r["arms"].items():
            note = " (derived: half AdamW's steps, half SAM's)" if a.get("derived") else ""
            lines.append(
                f"| {arm}{note} | {a['step_s'] * 1e3:.1f} ms | {a['ratio']:.2f}x | "
                f"{a['peak_bytes'] / 2**20:,.0f} MiB | {a['per_s']:,.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks every path, in seconds")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: benchmarks/results)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False); "
            "--dry-run checks the script on the CPU"
        )
    if not args.dry_run and not torch.cuda.is_bf16_supported():
        raise SystemExit("this GPU does not support bf16, which these figures are for")
    result = run(args.dry_run)
    out = args.out or (Path(tempfile.mkdtemp()) if args.dry_run else Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", result["machine"].get("gpu") or "cpu-dry-run").strip("-").lower()
    stem = out / f"gpu-{gpu}-{time.strftime('%Y%m%d-%H%M')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"written: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
