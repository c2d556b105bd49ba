"""The model card written into every run directory: Hub metadata, how SAM was used, results, curves."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate
import datasets
import matplotlib
import matplotlib.pyplot as plt
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from samtune import __version__, tasks
from samtune.files import atomic_path, write_text_atomic
from samtune.optim.settings import SAMSettings, setting_specs
from samtune.optim.variants import make_variant
from samtune.recipe import Recipe

CURVES_FILE = "training_curves.png"
# What `samtune sharpness` writes into a run directory; the card shows it when present.
SHARPNESS_FILE = "sharpness.json"
LANDSCAPE_1D_FILE = "landscape_1d.png"
LANDSCAPE_2D_FILE = "landscape_2d.png"
SHARPNESS_START = "<!-- samtune:sharpness -->"
SHARPNESS_END = "<!-- /samtune:sharpness -->"
TAGS = ["samtune", "sam", "sharpness-aware-minimization"]


@dataclass
class CardFacts:
    """What the card says about a run, gathered by the runner."""

    recipe: Recipe
    metrics: dict[str, Any]
    task: str
    labels: list[str]
    base_model_is_hub_id: bool
    dataset_is_hub_id: bool
    eval_source: str
    eval_split: str
    precision: str
    test_split: str | None = None
    command: str | None = None
    license: str | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    adapter: dict[str, Any] | None = None  # a LoRA run: its adapters' settings and parameter counts
    response_column: str | None = None  # a causal LM trained on prompts and responses: the responses' column
    sources: list[dict[str, Any]] = field(default_factory=list)  # provenance of a model/data built by samtune.sources
    errors: Any = None  # where it errs on the eval split: a samtune.confusion.ErrorReport (None: the task has none)


def base_model_license(model_ref: str | None) -> str | None:
    """The license in a local model folder's own card, if it has one (no network)."""
    if not model_ref:
        return None
    readme = Path(model_ref) / "README.md"
    if not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data.license
    except Exception:  # a malformed upstream card must not fail the run
        return None


def versions() -> dict[str, str]:
    """The versions of the libraries that trained the model."""
    return {
        "samtune": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def plot_training_curves(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss (train and eval) and eval accuracy/F1 against epochs, as a PNG; None without any log."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    evals = [h for h in log_history if "eval_loss" in h and "epoch" in h]
    if not train and not evals:
        return None
    matplotlib.use("Agg")
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    if train:
        ax_loss.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    sharpness = [(h["epoch"], h["sam_sharpness"]) for h in log_history if "sam_sharpness" in h and "epoch" in h]
    if sharpness:  # L(w + e) - L(w): the sharpness SAM minimises, on the loss's scale
        ax_loss.plot(*zip(*sharpness), "--", label="SAM sharpness", color="tab:red", alpha=0.8)
    if evals:
        ax_loss.plot(
            [h["epoch"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="eval loss", color="tab:orange"
        )
        lowest = 0.0
        # Each task's scores (samtune.tasks: the metrics where higher is better, all within [-1, 1]).
        scores = dict.fromkeys(
            (f"eval_{m.name}", i)
            for task in tasks.registered()
            for i, m in enumerate(m for m in task.metrics if m.greater_is_better)
        )
        for key, i in scores:
            points = [(h["epoch"], h[key]) for h in evals if key in h]
            if points:
                colour = ("tab:green", "tab:purple", "tab:brown")[i % 3]
                ax_metric.plot(*zip(*points), "o-", label=key.removeprefix("eval_"), color=colour)
                lowest = min(lowest, *(v for _, v in points))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_metric.set(xlabel="epoch", ylabel="score", title="evaluation", ylim=(-1.02 if evals and lowest < 0 else 0, 1.02))
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _eval_results(facts: CardFacts) -> list[EvalResult]:
    r, m = facts.recipe, facts.metrics
    name = r.data.dataset or "local data"
    results = []
    task = tasks.get(facts.task)
    for prefix, split in (("eval", facts.eval_split), ("test", facts.test_split)):
        for metric in task.metrics:
            if f"{prefix}_{metric.name}" not in m or not split:
                continue
            results.append(
                EvalResult(
                    task_type=task.pipeline_tag,
                    dataset_type=name if facts.dataset_is_hub_id else "local",
                    dataset_name=name if facts.dataset_is_hub_id else Path(name).name,
                    dataset_config=r.data.config if facts.dataset_is_hub_id else None,
                    dataset_split=split,
                    metric_type=metric.name,
                    metric_name=metric.title,
                    metric_value=round(float(m[f"{prefix}_{metric.name}"]), 4),
                )
            )
    return results


def _sam_rows(facts: CardFacts) -> list[tuple[str, Any]]:
    r, t = facts.recipe, facts.recipe.training
    if r.sam.rho == 0:
        variant, share, whole, rows = "none (rho = 0: plain training)", 0.0, False, t.batch_size
    else:
        chosen = make_variant(SAMSettings(**r.sam.arguments()))
        variant = f"ASAM, {chosen.describe()}" if r.sam.adaptive else chosen.describe()
        share, whole = chosen.extra_pass_share, chosen.climbs_from_whole_batch
        rows = chosen.climb_rows(t.batch_size)
    length = f"{t.epochs:g} epochs" if t.max_steps is None else f"{t.max_steps} steps"
    # Every other setting of every variant, from SAM's one definition (a variant's own are in its description).
    others = [
        (s.recipe_key, getattr(r.sam, s.recipe_key))
        for s in setting_specs()
        if s.variant is None and s.recipe_key not in ("rho", "adaptive", "variant")
    ]
    return [
        ("rho", r.sam.rho),
        ("adaptive (ASAM)", r.sam.adaptive),
        ("variant", variant),
        *others,
        ("expected compute per step", f"about {1 + share:.3g}x a plain step's (the variant's share of a second pass)"),
        ("base optimizer", t.optimizer),
        ("learning rate", t.learning_rate),
        ("schedule", f"{t.scheduler}, warmup {t.warmup:g}"),
        ("training length", length),
        (
            "effective batch size",
            f"{t.batch_size * t.gradient_accumulation_steps} per device "
            f"({t.batch_size} x {t.gradient_accumulation_steps} accumulation)",
        ),
        ("gradient accumulation", t.gradient_accumulation_steps),
        ("the climb's batch", _ascent_batch(t.batch_size, t.gradient_accumulation_steps, facts.metrics, whole, rows)),
        ("precision", facts.precision),
        ("seed", t.seed),
        ("optimizer steps that took SAM's two passes", facts.metrics.get("sam_climb_steps", "n/a")),
        ("sharpness L(w + e) - L(w), first / last logged", _sharpness_trend(facts.log_history)),
        ("perturbations skipped (non-finite)", facts.metrics.get("sam_perturbations_skipped", 0)),
    ]


def _ascent_batch(
    batch_size: int, accumulation: int, metrics: dict[str, Any], whole: bool, rows: int | None = None
) -> str:
    """Which examples each climb's gradient came from: one process's micro-batch, (FSDP2) all processes' together, or
    (`whole`: the variant's `climbs_from_whole_batch`) the step's whole effective batch; `rows`: the variant's
    `climb_rows` of a micro-batch, where it climbs on part of it."""
    processes = int(metrics.get("processes", 1) or 1)
    if rows is not None and rows < batch_size:
        part = f"the first {rows} of each micro-batch of {batch_size}"
        if metrics.get("fsdp") and processes > 1:
            return f"{rows * processes}: {part} on each of {processes} processes (FSDP2: averaged over them)"
        where = f", on each of {processes} processes alone" if processes > 1 else ""
        return f"{rows}: {part}{where} (m-sharpness)"
    if whole:
        return (
            f"{batch_size * accumulation * processes}: the whole effective batch ({batch_size} x {accumulation} "
            f"accumulation x {processes} process{'es' if processes > 1 else ''}), one climb per step"
        )
    if metrics.get("fsdp"):
        return f"{batch_size * processes} ({batch_size} per process x {processes} processes, FSDP2: averaged over them)"
    where = f" on each of {processes} processes alone" if processes > 1 else ""
    return f"{batch_size}: one micro-batch{where} (m-sharpness)"


def _sharpness_trend(log_history: list[dict[str, Any]]) -> str:
    """The sharpness SAM minimised, at its first and last log (none logged: no SAM step, or a climb on part of each
    batch, the default, whose two losses are of different examples)."""
    values = [h["sam_sharpness"] for h in log_history if "sam_sharpness" in h]
    if values:
        return f"{values[0]:.4g} / {values[-1]:.4g}"
    return "not logged (the climb took part of each batch, or no SAM step ran; `samtune sharpness RUN_DIR` measures it)"


def _results_table(facts: CardFacts) -> str:
    m = facts.metrics
    names = tasks.get(facts.task).metric_names  # the loss last
    rows = [
        "| split | examples | " + " | ".join(tasks.metric(k).title for k in names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for prefix, split in (("eval", facts.eval_split), ("test", facts.test_split)):
        if f"{prefix}_loss" in m:
            values = " | ".join(f"{m.get(f'{prefix}_{k}', float('nan')):.4f}" for k in names)
            rows.append(f"| {split} ({prefix}) | {m.get(f'{prefix}_samples', '')} | {values} |")
    if "train_loss" in m:
        blanks = " |" * (len(names) - 1)
        rows.append(f"| train | {m.get('train_samples', '')} |{blanks} {m['train_loss']:.4f} (mean over training) |")
    return "\n".join(rows)


def _adapter_section(facts: CardFacts) -> str:
    """What the run directory holds when only LoRA adapters trained, and how to load them."""
    a = facts.adapter
    if not a:
        return ""
    targets = a["target_modules"] if isinstance(a["target_modules"], str) else ", ".join(a["target_modules"])
    share = a["trainable_parameters"] / a["total_parameters"] if a["total_parameters"] else 0.0
    merged = (
        f"The base with the adapters merged in is in `{a['merged']}/` (a whole model: `from_pretrained` "
        "loads it without peft)."
        if a["merged"]
        else "No merged model was saved (`model.lora.merge: true` saves one)."
    )
    return f"""
## LoRA adapters

This folder holds **LoRA adapters** (peft), not a whole model: base model `{facts.recipe.model.name}`,
rank {a["r"]}, alpha {a["alpha"]:g}, dropout {a["dropout"]:g}, adapted modules: {targets}; trained in full:
{", ".join(a["modules_to_save"]) or "nothing"}. Trainable parameters: {a["trainable_parameters"]:,} of
{a["total_parameters"]:,} ({share:.2%}); the base's weights stayed frozen, and SAM's climb moved the
trainable ones only. {merged}
"""


def _errors_section(facts: CardFacts) -> str:
    """Where it errs on the eval split: the task's error report (a classifier's confusion matrix, a multi-label
    classifier's per-label scores), if it has one."""
    if facts.errors is None:
        return ""
    return f"""
## Where it errs

{facts.errors.card_section(facts.eval_split)}"""


def _sources_section(facts: CardFacts) -> str:
    """Where a model or dataset that samtune built offline (samtune.sources) came from: package, file, checksum."""
    if not facts.sources:
        return ""
    lines = ["", "## Where the base model and data came from", ""]
    for f in facts.sources:
        package = f"{f['package']} {f.get('version') or ''}".strip() if f.get("package") else "a file the user gave"
        files = ", ".join(f"`{x['name']}` (sha256 `{x['sha256']}`)" for x in f.get("files", []))
        lines.append(
            f"- `{f['source']}`: {f.get('what', '')}; from {package}: {files}; licence {f.get('license') or 'unknown'}."
        )
    return "\n".join(lines) + "\n"


def _scratch_line(facts: CardFacts) -> str:
    r = facts.recipe
    if r.model.pretrained:
        return ""
    return (
        f"\n\nTrained from random initialisation (`model.pretrained: false`): the architecture of `{r.model.name}`, "
        "none of its pretrained weights."
    )


def build_model_card(facts: CardFacts, curves: str | None = None, sharpness: str = "") -> ModelCard:
    """A Hub-valid card: metadata (base model, datasets, tags, model-index), SAM's settings, results."""
    r, task = facts.recipe, tasks.get(facts.task)
    data = ModelCardData(
        library_name="peft" if facts.adapter else "transformers",
        base_model=r.model.name if facts.base_model_is_hub_id else None,
        datasets=[r.data.dataset] if facts.dataset_is_hub_id and r.data.dataset else None,
        license=facts.license,
        tags=[*TAGS, facts.task, *(["lora"] if facts.adapter else [])],
        pipeline_tag=task.pipeline_tag,
        model_name=r.run_name(),
        eval_results=_eval_results(facts) or None,
    )
    sam_table = "\n".join(["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in _sam_rows(facts)]])
    wall = facts.metrics.get("train_runtime")
    curves_part = f"\n![Training curves]({curves})\n" if curves else ""
    sharpness_part = f"\n{sharpness}" if sharpness else ""
    body = f"""
# {r.run_name()}

`{r.model.name}` fine-tuned on `{r.data.dataset}` for {facts.task.replace("-", " ")} with
**Sharpness-Aware Minimization** (SAM, Foret et al., ICLR 2021), using samtune.
SAM takes each step from the worst point of a
rho-ball around the weights, which seeks flat minima; it costs about twice the compute of a
plain step.{_scratch_line(facts)}

{task.card_labels_line(facts)} Evaluated on {facts.eval_source}.

## How SAM was used

{sam_table}

## Results

{_results_table(facts)}
{f"{chr(10)}Training took {wall:.0f} s." if isinstance(wall, (int, float)) else ""}
{curves_part}{_errors_section(facts)}{sharpness_part}{_adapter_section(facts)}{_sources_section(facts)}
## How to use

```python
{task.card_usage(facts, r.hub.repo_id or "PATH_TO_THIS_FOLDER")}
```

## How to reproduce

```bash
{facts.command or "samtune train config.yaml"}
```

`config.yaml`, next to this card, is the resolved recipe: `samtune train config.yaml`
repeats the run with every setting as it was.

## Library versions

{chr(10).join(f"- {k}: {v}" for k, v in versions().items())}
"""
    # The body goes in as a value, never as template text: paths and labels may hold "{{" or "{#".
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n{{ body }}", body=body)


def write_model_card(run_dir: Path, facts: CardFacts) -> Path:
    """Write README.md (the model card) and the training-curve figure into the run directory, atomically."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / CURVES_FILE) as tmp:
        curves = plot_training_curves(facts.log_history, tmp)
        if curves is None:
            tmp.write_bytes(b"")
    if curves is None:
        (run_dir / CURVES_FILE).unlink(missing_ok=True)
    path = run_dir / "README.md"
    with atomic_path(path) as tmp:
        build_model_card(facts, CURVES_FILE if curves else None, sharpness_section(run_dir)).save(tmp)
    return path


def md_cell(text: Any) -> str:
    """`text` in a markdown table's cell."""
    return str(text).replace("|", "\\|")


def _num(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"  # null in sharpness.json: not finite


def sharpness_section(run_dir: Path) -> str:
    """The card's "Sharpness" section from the run's sharpness.json and figures; "" when there are none."""
    run_dir = Path(run_dir)
    try:
        s = json.loads((run_dir / SHARPNESS_FILE).read_text(encoding="utf-8"))
        runs = [s, *([s["against"]] if s.get("against") else [])]
        settings = s.get("settings", {})
        rows = [
            "| measure | " + " | ".join(md_cell(r["name"]) for r in runs) + " |",
            "|---" * (len(runs) + 1) + "|",
            "| loss at the trained weights | " + " | ".join(_num(r["loss"]) for r in runs) + " |",
            "| top Hessian eigenvalue (power iteration) | "
            + " | ".join(_num(r["hessian_top_eigenvalue"]) for r in runs)
            + " |",
            f"| Hessian trace (Hutchinson, {settings.get('trace_samples', '?')} samples) | "
            + " | ".join(f"{_num(r['hessian_trace'])} ± {_num(r['hessian_trace_stderr'], 2)}" for r in runs)
            + " |",
        ]
        for i, point in enumerate(s["sam_sharpness"]):
            rows.append(
                f"| SAM sharpness L(w + e) - L(w), rho = {point['rho']:g} | "
                + " | ".join(_num(r["sam_sharpness"][i]["loss_increase"]) for r in runs)
                + " |"
            )
    except (OSError, ValueError, KeyError, IndexError, TypeError):  # absent or not ours: no section
        return ""
    where = (
        f"{settings.get('examples', '?')} examples of `{settings.get('dataset', '?')}` [{settings.get('split', '?')}]"
    )
    figures = [
        f"![{title}]({name})"
        for name, title in ((LANDSCAPE_1D_FILE, "1-D loss landscape"), (LANDSCAPE_2D_FILE, "2-D loss landscape"))
        if (run_dir / name).is_file()
    ]
    return f"""{SHARPNESS_START}
## Sharpness

Measured with `samtune sharpness` on {where}, in eval mode (dropout off), seed {settings.get("seed", "?")}.
The landscapes follow filter-normalised random directions (Li et al., NeurIPS 2018); a flat,
wide basin around 0 is what SAM seeks.

{chr(10).join(rows)}

{chr(10).join(figures)}
{SHARPNESS_END}
"""


def update_card_sharpness(run_dir: Path) -> Path | None:
    """Put the current sharpness section into the run's existing card (replacing an older one); None without a card."""
    path = Path(run_dir) / "README.md"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    section = sharpness_section(run_dir)
    start, end = text.find(SHARPNESS_START), text.find(SHARPNESS_END)
    if start != -1 and end > start:
        rest = text[end + len(SHARPNESS_END) :]
        text = text[:start] + section + (rest[1:] if rest.startswith("\n") else rest)
    elif section:
        anchor = text.find("\n## How to use")
        text = text[: anchor + 1] + section + "\n" + text[anchor + 1 :] if anchor != -1 else text + "\n" + section
    write_text_atomic(path, text)
    return path
