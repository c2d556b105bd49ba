"""The model card written into every run directory (and, later, the push to the Hub)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from samtune.recipe import Recipe


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
    command: str | None = None
    license: str | None = None


def _versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from samtune import __version__

    return {
        "samtune": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def build_model_card(facts: CardFacts) -> ModelCard:
    """A Hub-valid card: metadata (base model, datasets, tags, model-index) and SAM's settings."""
    r, m = facts.recipe, facts.metrics
    dataset_name = r.data.dataset or "local data"
    results = []
    for prefix, split in (("eval", facts.eval_split), ("test", r.data.test_split)):
        for metric in ("accuracy", "f1"):
            key = f"{prefix}_{metric}"
            if key in m and split:
                results.append(
                    EvalResult(
                        task_type=facts.task,
                        dataset_type=dataset_name if facts.dataset_is_hub_id else "local",
                        dataset_name=dataset_name if facts.dataset_is_hub_id else Path(dataset_name).name,
                        dataset_config=r.data.config if facts.dataset_is_hub_id else None,
                        dataset_split=split,
                        metric_type=metric,
                        metric_name=f"{metric} (macro)" if metric == "f1" else metric,
                        metric_value=round(float(m[key]), 4),
                    )
                )
    data = ModelCardData(
        library_name="transformers",
        base_model=r.model.name if facts.base_model_is_hub_id else None,
        datasets=[r.data.dataset] if facts.dataset_is_hub_id and r.data.dataset else None,
        license=facts.license,
        tags=["samtune", "sam", "sharpness-aware-minimization", facts.task],
        pipeline_tag=facts.task,
        model_name=r.run_name(),
        eval_results=results or None,
    )
    t = r.training
    effective = t.batch_size * t.gradient_accumulation_steps
    variant = "ASAM" if r.sam.adaptive else ("SAM" if r.sam.rho > 0 else "none (rho = 0: plain training)")
    rows = [
        ("rho", r.sam.rho),
        ("adaptive (ASAM)", r.sam.adaptive),
        ("variant", variant),
        ("base optimizer", t.optimizer),
        ("learning rate", t.learning_rate),
        ("schedule", f"{t.scheduler}, warmup {t.warmup}"),
        ("epochs", t.epochs if t.max_steps is None else f"max {t.max_steps} steps"),
        ("effective batch size (per device)", f"{effective} ({t.batch_size} x {t.gradient_accumulation_steps} accumulation)"),
        ("precision", facts.precision),
        ("seed", t.seed),
    ]
    sam_table = "\n".join(["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])
    metric_rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in m.items()
        if k.endswith(("_accuracy", "_f1", "_loss", "_samples", "train_runtime")) and not k.startswith("sam_")
    )
    versions = "\n".join(f"- {k}: {v}" for k, v in _versions().items())
    how = (
        f'```python\nfrom transformers import pipeline\n\nclassifier = pipeline("{facts.task}", model="PATH_OR_REPO_ID")\n'
        f'classifier({"Your text here" if facts.task == "text-classification" else "image.jpg"!r})\n```'
    )
    command = facts.command or f"samtune train config.yaml"
    body = f"""
# {r.run_name()}

Fine-tuned from `{r.model.name}` on `{dataset_name}` with **{variant}**
(Sharpness-Aware Minimization, Foret et al. 2021) with samtune.
Labels: {", ".join(facts.labels)}. Evaluated on {facts.eval_source}.

## How SAM was used

{sam_table}

## Results

| metric | value |
|---|---|
{metric_rows}

## How to use

{how}

## How to reproduce

```bash
{command}
```

The resolved recipe is `config.yaml`, next to this card.

## Library versions

{versions}
"""
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)


def write_model_card(run_dir: Path, facts: CardFacts) -> Path:
    """Write README.md (the model card) into the run directory."""
    path = Path(run_dir) / "README.md"
    build_model_card(facts).save(path)
    return path
