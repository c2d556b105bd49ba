"""A whole run from a recipe: data, model, SAMTrainer, evaluation, and the run directory.

`train(recipe)` is what `samtune train` calls; notebooks and tests use the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samtune.errors import DataError, TrainingError, UsageError
from samtune.recipe import Recipe

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict[str, Any]
    recipe: Recipe
    task: str
    labels: list[str]
    wall_time: float
    steps: int
    trainer: Any = None  # the SAMTrainer, for callers that want the in-memory model


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """Accuracy and macro F1 (scikit-learn) of the argmax predictions."""
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    preds = np.asarray(logits).argmax(-1)
    labels = np.asarray(eval_pred.label_ids)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(f1_score(labels, preds, average="macro")),
    }


def is_main_process() -> bool:
    """True outside multi-process runs, and on rank 0 inside them."""
    return int(os.environ.get("RANK", "0")) == 0


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty run directory unless overwriting; refuse one that cannot be written."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"output directory {path} is a file", "Choose another --output-dir.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UsageError(
                f"output directory {path} exists and is not empty",
                "Pass --overwrite to replace it, or choose another --output-dir.",
            )
        if not looks_like_a_run(path):
            raise UsageError(
                f"output directory {path} is not a samtune run directory, so --overwrite will not delete it",
                "Choose an empty or new --output-dir.",
            )
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise UsageError(f"output directory {path} is not writable", "Choose a writable --output-dir.")


def looks_like_a_run(path: Path) -> bool:
    """Whether a folder was written by samtune train (the only kind --overwrite may delete)."""
    marks = ("config.yaml", "metrics.json", "trainer_state.json")
    return any((path / m).exists() for m in marks) or any(path.glob("checkpoint-*"))


def _clear_output_dir(path: Path) -> None:
    if path.is_dir() and any(path.iterdir()) and is_main_process():
        shutil.rmtree(path)


def precision_flags(precision: str) -> tuple[dict[str, bool], str]:
    """bf16/fp16 switches for the arguments, and the precision in words."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise UsageError("precision fp16 needs a CUDA GPU", "Use training.precision=bf16 or fp32 on this machine.")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}, precision


def training_arguments(recipe: Recipe, run_dir: Path, task: str) -> tuple[Any, str]:
    """SAMArguments for a recipe, and the precision in words."""
    import torch

    from samtune.trainer import SAMArguments

    t = recipe.training
    flags, precision = precision_flags(t.precision)
    evaluating = t.eval_strategy != "no"
    args = SAMArguments(
        output_dir=str(run_dir),
        rho=recipe.sam.rho,
        adaptive=recipe.sam.adaptive,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        optim=t.optimizer,
        lr_scheduler_type=t.scheduler,
        warmup_steps=int(t.warmup) if t.warmup >= 1 else t.warmup,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=t.eval_strategy if evaluating else "no",
        save_steps=t.eval_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end and evaluating,
        metric_for_best_model=t.metric_for_best_model,
        greater_is_better=t.metric_for_best_model != "loss",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        label_smoothing_factor=t.label_smoothing,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=task != "image-classification",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **flags,
    )
    return args, precision


def _prepare(recipe: Recipe) -> tuple[Any, Any, Any, str]:
    """Data, processor and model for a recipe (the data first: its errors are the commonest)."""
    from samtune import modeling
    from samtune.data import load_data

    config = modeling.load_config(recipe.model)
    model_task = modeling.model_task(config)
    task = recipe.task if recipe.task != "auto" else (model_task or "auto")
    if recipe.task != "auto" and model_task and model_task != recipe.task:
        raise UsageError(
            f"task is {recipe.task}, but '{recipe.model.name}' is a {model_task} model",
            "Choose a model for the task, or set task: auto.",
        )
    data = load_data(recipe.data, recipe.training.seed, task)
    if model_task and data.task != model_task:
        raise DataError(
            f"'{recipe.model.name}' is a {model_task} model, but the data looks like {data.task} "
            f"(columns: {', '.join(data.train.column_names)})",
            "Choose a model that matches the data, or name the columns with data.text_column / data.image_column.",
        )
    processor = modeling.load_processor(recipe.model, data.task)
    if data.task == modeling.IMAGE:
        data = modeling.attach_image_transforms(data, processor, recipe.training.seed)
    else:
        data = modeling.tokenize(data, processor, recipe.model.max_length)
    model = modeling.load_model(recipe.model, data.task, data.labels)
    return data, processor, model, data.task


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
    command: str | None = None,
) -> RunResult:
    """Fine-tune with SAM as the recipe says; write and return the run directory's results."""
    from transformers import DataCollatorWithPadding, PrinterCallback, set_seed

    from samtune import modeling
    from samtune.data import is_local
    from samtune.card import CardFacts, base_model_license, write_model_card
    from samtune.trainer import SAMTrainer

    run_dir = recipe.output_dir()
    check_output_dir(run_dir, overwrite)
    if recipe.hub.repo_id and is_main_process():
        from samtune.hub import preflight

        preflight(push_target(recipe))  # before hours of training, not after
    modeling.quiet_transformers()
    set_seed(recipe.training.seed)
    started = time.perf_counter()

    data, processor, model, task = _prepare(recipe)
    args, precision = training_arguments(recipe, run_dir, task)
    if overwrite:
        _clear_output_dir(run_dir)
    trainer = SAMTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=processor,
        data_collator=DataCollatorWithPadding(processor) if task == modeling.TEXT else None,
        compute_metrics=compute_metrics,
        callbacks=callbacks or [],
    )
    trainer.remove_callback(PrinterCallback)
    try:
        output = trainer.train()
    except (DataError, UsageError):
        raise
    except RuntimeError as e:
        raise TrainingError(f"training stopped: {str(e).splitlines()[0]}", "Run with --debug for the traceback.") from e

    metrics: dict[str, Any] = dict(output.metrics)
    metrics.update(trainer.evaluate(data.eval, metric_key_prefix="eval"))
    if data.test is not None:
        metrics.update(trainer.evaluate(data.test, metric_key_prefix="test"))
    metrics.update(
        train_steps=trainer.state.global_step,
        train_samples=len(data.train),
        eval_samples=len(data.eval),
        sam_rho=recipe.sam.rho,
        sam_adaptive=recipe.sam.adaptive,
        sam_perturbations_skipped=trainer.sam_perturbations_skipped,
        wall_time=time.perf_counter() - started,
    )
    if data.test is not None:
        metrics["test_samples"] = len(data.test)

    if trainer.is_world_process_zero():
        trainer.save_model(str(run_dir))  # the model and its processor, loadable with from_pretrained
        trainer.save_state()
        saved = recipe.model_copy(update={"name": recipe.run_name()})
        (run_dir / CONFIG_FILE).write_text(saved.to_yaml(), encoding="utf-8")
        _write_json(run_dir / METRICS_FILE, metrics)
        write_model_card(
            run_dir,
            CardFacts(
                recipe=recipe,
                metrics=metrics,
                task=task,
                labels=data.labels,
                base_model_is_hub_id=not is_local(recipe.model.name or ""),
                dataset_is_hub_id=data.is_hub_dataset,
                eval_source=data.eval_source,
                eval_split=data.eval_split,
                test_split=data.test_split,
                precision=precision,
                command=command,
                license=recipe.hub.license or base_model_license(modeling.model_path(recipe.model)),
                log_history=trainer.state.log_history,
            ),
        )
    return RunResult(
        run_dir=run_dir,
        metrics=metrics,
        recipe=recipe,
        task=task,
        labels=data.labels,
        wall_time=metrics["wall_time"],
        steps=trainer.state.global_step,
        trainer=trainer,
    )


def push_target(recipe: Recipe) -> Any:
    """Where the recipe's hub block says to push."""
    from samtune.hub import PushTarget

    return PushTarget(recipe.hub.repo_id or "", recipe.hub.private, recipe.hub.revision)


def push(result: RunResult) -> str:
    """Push a finished run to the Hub as its recipe says; the repo URL."""
    from samtune.hub import push_run

    return push_run(result.run_dir, push_target(result.recipe))


def evaluate_run(
    run_dir: Path, dataset: str, split: str | None = None, config: str | None = None, batch_size: int = 64
) -> dict[str, float]:
    """Evaluate a saved run directory on a dataset split (labels matched to the model's by name)."""
    from transformers import DataCollatorWithPadding, PrinterCallback

    from samtune import modeling
    from samtune.data import PreparedData, detect_columns, encode_labels, load_raw, pick_eval_split
    from samtune.recipe import ModelSection, build_recipe, read_recipe_file
    from samtune.trainer import SAMArguments, SAMTrainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} is not a samtune run directory (no config.json)", "Give the folder `samtune train` wrote.")
    recipe = build_recipe(read_recipe_file(run_dir / CONFIG_FILE)) if (run_dir / CONFIG_FILE).is_file() else build_recipe()
    section = recipe.data.model_copy(update={"dataset": dataset, "config": config, "eval_file": None})
    raw, _ = load_raw(section)
    split_name = pick_eval_split(raw, split)
    ds = raw[split_name]
    modeling.quiet_transformers()
    model_section = ModelSection(name=str(run_dir), max_length=recipe.model.max_length)
    model_config = modeling.load_config(model_section)
    task = modeling.model_task(model_config) or recipe.task
    cols = detect_columns(list(ds.column_names), ds.features, section, task)
    names = [model_config.id2label[i] for i in range(len(model_config.id2label))]
    keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
    encoded, _ = encode_labels({"eval": ds.select_columns(keep)}, cols["label"], names=names)
    data = PreparedData(
        task=task, train=encoded["eval"], eval=encoded["eval"], labels=names,
        text_column=cols["text"], text_pair_column=cols["pair"], image_column=cols["image"],
    )  # fmt: skip
    processor = modeling.load_processor(model_section, task)
    if task == modeling.IMAGE:
        data = modeling.attach_image_transforms(data, processor, 0)
    else:
        data = modeling.tokenize(data, processor, recipe.model.max_length)
    model = modeling.load_model(model_section, task, names)
    args = SAMArguments(
        output_dir=tempfile.mkdtemp(prefix="samtune-eval-"), per_device_eval_batch_size=batch_size, report_to="none",
        disable_tqdm=True, rho=0.0, remove_unused_columns=task != modeling.IMAGE,
        use_cpu=not __import__("torch").cuda.is_available(),
    )  # fmt: skip
    trainer = SAMTrainer(
        model=model, args=args, processing_class=processor, compute_metrics=compute_metrics,
        data_collator=DataCollatorWithPadding(processor) if task == modeling.TEXT else None,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    metrics = trainer.evaluate(data.eval, metric_key_prefix="eval")
    metrics["eval_samples"] = len(data.eval)
    metrics["eval_split"] = split_name
    return metrics
