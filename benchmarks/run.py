"""The benchmarks' single entry point: run suites, write JSON and markdown, print the tables.

    python benchmarks/run.py                                  # cost, perturbation, memory, accuracy
    python benchmarks/run.py --only cost,perturbation,memory --quick
    python benchmarks/run.py --device cuda --precision bf16 --only cost,memory

Suites: `cost` (time per optimizer step / AdamW's, `benchmarks/cost.py`), `perturbation`
(samtune's foreach perturbation vs a per-parameter loop, `benchmarks/perturbation.py`), `memory`
(SAM's extra peak memory / parameter bytes, `benchmarks/memory.py`), and `accuracy` from
`benchmarks/accuracy.py`. Each suite writes `<out>/<suite>-<device>[-bf16]-<date>.json` and
`.md`; the markdown is printed as well. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ on the path, not the root
    sys.path.insert(0, str(ROOT))

SUITES = ("cost", "perturbation", "memory", "accuracy")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_markdown(text: str) -> None:
    """The table as markdown: rendered by rich on a terminal, plain otherwise (pipes, files)."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.markdown import Markdown

            Console().print(Markdown(text))
            return
        except ImportError:
            pass
    print(text, flush=True)


def run_suite(name: str, args: argparse.Namespace, date: str) -> tuple[dict[str, Any], str]:
    """Run one suite; return its results and its markdown."""
    import torch

    if name == "accuracy":
        from benchmarks import accuracy  # the other half of the benchmarks; imported only when asked for

        overrides: list[str] = []
        if args.quick:
            overrides = (
                ["epochs=1", "n_train=200", "n_val=100", "n_test=200"]
                if args.accuracy_suite == "rt-minilm"
                else ["epochs=2"]
            )
        results = accuracy.run_accuracy(
            args.accuracy_suite,
            seeds=args.seeds,
            arms=args.arms,
            overrides=overrides,
            device="cpu" if args.device == "cpu" else "auto",
            log=_log,
        )
        from benchmarks.machine import machine_info, machine_line

        results["machine"] = machine_info(args.device)
        text = (
            f"## Accuracy ({args.accuracy_suite})\n\n{date}; {args.device}\n\n"
            f"Machine: {machine_line(results['machine'])}\n\n" + accuracy.accuracy_markdown(results)
        )
        return results, text

    from benchmarks import cost, memory, perturbation

    common: dict[str, Any] = dict(device=args.device, precision=args.precision, quick=args.quick, log=_log)
    if args.models:
        common["models"] = args.models
    if name == "cost":
        results = cost.run_cost(arms=args.arms, **common)
        text = cost.cost_markdown(results, date)
    elif name == "perturbation":
        results = perturbation.run_perturbation(**common)
        text = perturbation.perturbation_markdown(results, date)
    else:
        results = memory.run_memory(**common)
        text = memory.memory_markdown(results, date)
    results["date"] = date
    results["torch_threads"] = torch.get_num_threads()
    return results, text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SUITES), help=f"comma-separated suites, from {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true", help="a smoke run: few repeats, a smaller MiniLM batch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast (SAMArguments(bf16=True))"
    )
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and markdown files")
    p.add_argument("--seeds", type=int, default=None, help="accuracy: number of seeds (default 3; 1 with --quick)")
    p.add_argument("--accuracy-suite", default="digits-noise", help="accuracy: the suite of benchmarks/accuracy.py")
    p.add_argument("--arms", default=None, help="comma-separated arms (cost, accuracy; default: each suite's own)")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated models for cost/perturbation/memory "
        "(tiny-bert, tiny-vit, minilm-l6, minilm-l6-lora; default all)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = p.parse_args(argv)
    suites = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suites {unknown}: choose from {', '.join(SUITES)}")
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    args.arms = args.arms.split(",") if args.arms else None
    args.models = args.models.split(",") if args.models else None

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    now = dt.datetime.now()
    date = now.strftime("%Y-%m-%d %H:%M")
    stamp = now.strftime("%Y%m%d-%H%M")
    tag = args.device + ("-bf16" if args.precision == "bf16" else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for suite in suites:
        t0 = time.perf_counter()
        results, text = run_suite(suite, args, date)
        results.setdefault("wall_s", time.perf_counter() - t0)
        base = out / f"{suite}-{tag}-{stamp}"
        base.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
        base.with_suffix(".md").write_text(text + "\n")
        _print_markdown(text)
        _log(f"{suite}: {time.perf_counter() - t0:.0f} s, wrote {base}.json and .md")
    _log(f"all: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
