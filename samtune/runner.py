"""A whole run from a recipe: data, model, SAMTrainer, evaluation, and the run directory.

`train(recipe)` is what `samtune train` calls; notebooks and tests use the same path.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoConfig, PrinterCallback, TrainerCallback, set_seed
from transformers.utils import logging as hf_logging

from samtune import card, modeling, tasks
from samtune.card import CardFacts, base_model_license

from samtune.data import is_local, load_data
from samtune.errors import (
    FREE_SPACE_HINT,
    DataError,
    DiskFullError,
    Interrupted,
    TrainingError,
    UsageError,
    chain,
    disk_full,
)
from samtune.files import writable_problem, write_json_atomic, write_text_atomic
from samtune.hub import PushTarget, preflight, push_run
from samtune.modeling import fsdp_wrap_classes
from samtune.optim.settings import setting_specs
from samtune.processes import is_main_process
from samtune.recipe import LoraSection, Recipe, build_recipe, read_recipe_file
from samtune.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    RunLock,
    check_output_dir,
    clear_output_dir,
    find_checkpoint,
    last_complete_checkpoint,
    last_written,
    mark_as_run,
)
from samtune.sources import provenance_of
from samtune.saved import load_model, model_inputs, open_run, read_run, split_examples
from samtune.stopping import GracefulStop
from samtune.trainer import NonFiniteLossError, SAMArguments, SAMTrainer, SAMWindowError, UnsupportedSetupError

MERGED_DIR = "merged"  # a LoRA run's base with its adapters merged in (model.lora.merge)


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


# What a checkpoint's weights and its place in the data belong to: a resume that asks for other values is refused
# (the weights would not load, or the run would go on over other examples as if they were the same).
RESUME_FIXED = (
    "model.name",
    "model.revision",
    "model.lora",
    *(
        f"data.{key}"
        for key in (
            "dataset",
            "config",
            "revision",
            "train_split",
            "text_column",
            "text_pair_column",
            "label_column",
            "label_columns",
            "image_column",
            "prompt_column",
            "response_column",
            "packing",
            "labels",
            "validation_fraction",
            "max_train_samples",
        )
    ),
)
# What changes a run if it differs between a checkpoint's recipe and the one resuming it: said, and the recipe's
# values win. SAM's own come from its one definition (samtune.optim.settings: `defines_run`).
RUN_DEFINING = (
    "model.max_length",
    "data.eval_file",
    "data.eval_split",
    "data.max_eval_samples",
    "training.seed",
    "training.batch_size",
    "training.gradient_accumulation_steps",
    "training.learning_rate",
    "training.optimizer",
    "training.scheduler",
    *(f"sam.{spec.recipe_key}" for spec in setting_specs() if spec.defines_run),
)
# How long a run trains: a finished run resumed with another length is refused (--init-from trains on from it).
RUN_LENGTH = ("training.epochs", "training.max_steps")
# Left open by a recipe, chosen when the run starts (columns by their values, LoRA for a large model) and saved in
# config.yaml: a recipe that leaves one open asks for what was chosen.
CHOSEN_AT_START = ("data.text_column", "data.label_column", "model.lora")


def recipe_changes(saved: Recipe, current: Recipe, keys: tuple[str, ...] = RUN_DEFINING) -> list[str]:
    """'key: old -> new' for the settings among `keys` that differ (by default: those that change the run)."""
    changes = []
    for key in keys:
        section, field = key.split(".")
        old, new = getattr(getattr(saved, section), field), getattr(getattr(current, section), field)
        if old != new and not (new is None and key in CHOSEN_AT_START):
            changes.append(f"{key}: {old} -> {new}")
    return changes


def best_metric(recipe: Recipe, task: str) -> str:
    """The metric that picks the best checkpoint: the recipe's, else the task's default."""
    return recipe.training.metric_for_best_model or tasks.get(task).default_metric


def precision_flags(precision: str) -> tuple[dict[str, bool], str]:
    """bf16/fp16 switches for the arguments, and the precision in words."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise UsageError("precision fp16 needs a CUDA GPU", "Use training.precision=bf16 or fp32 on this machine.")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}, precision


def training_arguments(recipe: Recipe, run_dir: Path, task: str, model: Any = None) -> tuple[Any, str]:
    """SAMArguments for a recipe, and the precision in words."""
    t = recipe.training
    flags, precision = precision_flags(t.precision)
    evaluating = t.eval_strategy != "no"
    args = SAMArguments(
        output_dir=str(run_dir),
        **recipe.sam.arguments(),
        on_nonfinite=t.on_nonfinite,
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
        save_strategy=t.save_strategy or t.eval_strategy,
        save_steps=t.save_steps or t.eval_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=t.load_best_model_at_end and evaluating,
        metric_for_best_model=best_metric(recipe, task),
        greater_is_better=tasks.metric(best_metric(recipe, task)).greater_is_better,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        label_smoothing_factor=t.label_smoothing,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=tasks.get(task).remove_unused_columns,
        report_to=t.report_to or "none",
        run_name=t.run_name or recipe.run_name(),
        # FSDP2; sharded checkpoints (exact resume through Accelerate), the finished run saved whole (_save_run).
        fsdp=t.fsdp or None,
        fsdp_config=_fsdp_config(model) if t.fsdp else None,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **flags,
    )
    return args, precision


def leave_process_group() -> None:
    """End a launched multi-process `samtune train` together: wait for every process, then close the group.

    For the command line, whose processes each run one training and exit (a library caller may train
    again in the same processes, so `train` leaves the group open). Left open, each process's gloo
    threads die with the interpreter, and a process that exits while the others still work (the main
    one writing the run) sometimes aborted in gloo's teardown ("terminate called without an active
    exception", exit -6: once in four FSDP2 command-line runs here), failing a run that succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _fsdp_config(model: Any) -> dict[str, Any]:
    """FSDP2, its layers sharded one by one (`modeling.fsdp_wrap_classes`), checkpoints sharded."""
    config: dict[str, Any] = {"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}
    layers = fsdp_wrap_classes(model) if model is not None else []
    if layers:
        config["transformer_layer_cls_to_wrap"] = layers
    return config


def _prepare(recipe: Recipe, notify: Any = print) -> tuple[Any, Any, Any, str]:
    """Data, processor and model for a recipe (the data first: its errors are the commonest)."""
    config = modeling.checked_config(recipe.model)  # model.max_length: before anything is written or removed
    model_task = tasks.detect_model(config)
    if recipe.task != tasks.AUTO and model_task and model_task.modality != tasks.get(recipe.task).modality:
        raise UsageError(
            f"task is {recipe.task}, but '{recipe.model.name}' is a {model_task.modality} model",
            "Choose a model for the task, or set task: auto.",
        )
    data = load_data(recipe.data, recipe.training.seed, recipe.task, model_task.name if model_task else None)
    for line in data.dropped:
        notify(line)
    if data.picked:  # chosen by their values: written into the recipe, so config.yaml reruns the same run
        for what, column in data.picked.items():
            setattr(recipe.data, f"{what}_column", column)
        notify(describe_picked(data.picked))
    task = tasks.get(data.task)
    if model_task and task.modality != model_task.modality:
        raise DataError(
            f"'{recipe.model.name}' is a {model_task.modality} model, but the data looks like {data.task} "
            f"(columns: {', '.join(data.train.column_names)})",
            "Choose a model that matches the data, or name the columns with data.text_column / data.image_column.",
        )
    metric = recipe.training.metric_for_best_model
    if metric is not None and (wrong := task.metric_problem(metric)):
        raise UsageError(wrong, f"Choose one of {', '.join(task.metric_names)}, or leave it out.")
    if not task.smooths_labels and recipe.training.label_smoothing > 0:
        raise UsageError(
            f"training.label_smoothing smooths single class labels; this is a {task.problem} run",
            "Set training.label_smoothing=0.",
        )
    processor = modeling.load_processor(recipe.model, data.task)
    if recipe.data.packing and not task.packs:
        raise UsageError(f"data.packing joins a causal LM's texts; this is a {data.task} run", "Remove data.packing.")
    data = modeling.prepare_inputs(data, processor, recipe.model.max_length, recipe.training.seed, recipe.data.packing)
    model = modeling.load_model(recipe.model, data.task, data.labels)
    task.prepare_model(model, processor)
    if recipe.model.lora is None and task.wants_lora_by_default(model):
        recipe.model.lora = LoraSection()  # saved so in config.yaml: the run is what its recipe says
    if recipe.model.adapters() is not None:
        model = modeling.apply_lora(model, recipe.model.adapters(), data.task)
    return data, processor, model, data.task


def describe_picked(picked: dict[str, str]) -> str:
    """What column detection by content chose, and how to choose otherwise."""
    chosen = ", ".join(f"{what} '{column}'" for what, column in picked.items())
    keys = " ".join(f"data.{what}_column=COLUMN" for what in picked)
    return f"columns picked by their values: {chosen} (saved in config.yaml; {keys} chooses others)"


def _check_init_from(recipe: Recipe, labels: list[str]) -> None:
    """A run to start from must have been trained on the same labels, in the same order."""
    run = Path(recipe.model.init_from or "")
    try:
        config = AutoConfig.from_pretrained(run)
    except (OSError, ValueError) as e:
        raise UsageError(f"--init-from {run}: not a finished run directory ({str(e).splitlines()[0]})") from e
    theirs = [config.id2label[i] for i in range(len(config.id2label))]
    if theirs != labels:
        raise DataError(
            f"--init-from {run}: that run was trained on {len(theirs)} labels ({', '.join(theirs[:10])}), "
            f"the data has {len(labels)} ({', '.join(labels[:10])})",
            "Start from a run on the same labels, or fine-tune its base model (--model) instead.",
        )


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: str | None = None,
    callbacks: list[Any] | None = None,
    command: str | None = None,
    resume_command: str | None = None,
    notify: Any = print,
    on_accepted: Any = None,
) -> RunResult:
    """Fine-tune with SAM as the recipe says; write and return the run directory's results.

    `resume` is "auto" (the newest checkpoint in the run directory) or a checkpoint folder.
    `on_accepted()`, if given, is called (by the main process) once the recipe, data and model are
    accepted, before anything is written: what a caller replaces (`compare --overwrite`) goes then.
    SIGINT/SIGTERM save a checkpoint and raise `Interrupted`; nothing is written on failure but
    the checkpoints already saved.
    """
    run_dir = recipe.output_dir()
    check_output_dir(run_dir, overwrite, resume)
    lock = RunLock(run_dir) if is_main_process() else None
    if lock is not None:
        lock.acquire()  # a second run on this directory is refused while this one lives
    try:
        options = _RunOptions(
            recipe, run_dir, overwrite, resume, callbacks or [], command, resume_command, notify, on_accepted
        )
        return _train_locked(options)
    finally:
        if lock is not None:
            lock.release()


@dataclass
class _RunOptions:
    """What `train` was asked to do, for the steps of one run."""

    recipe: Recipe
    run_dir: Path
    overwrite: bool
    resume: str | None
    callbacks: list[Any]
    command: str | None
    resume_command: str | None
    notify: Any
    on_accepted: Any = None


def _train_locked(o: _RunOptions) -> RunResult:
    """One run, its directory locked: check, load, train, evaluate, save."""
    recipe, run_dir = o.recipe, o.run_dir
    saved = _resumed_recipe(o) if o.resume else None
    if o.resume and (run_dir / METRICS_FILE).is_file():
        return _finished_run(o, saved)
    checkpoint = find_checkpoint(run_dir, o.resume) if o.resume else None
    if saved is not None and is_main_process() and (changes := recipe_changes(saved, recipe)):
        o.notify(
            f"warning: resuming {checkpoint} with a recipe that differs from the one it was trained with "
            f"({'; '.join(changes)}); the recipe's values win from here on"
        )
    if recipe.hub.repo_id and is_main_process():
        preflight(push_target(recipe))  # before hours of training, not after
    modeling.quiet_transformers()
    set_seed(recipe.training.seed)
    started = time.perf_counter()

    data, processor, model, task = _prepare(recipe, o.notify if is_main_process() else (lambda _: None))
    if recipe.model.init_from and data.labels:
        _check_init_from(recipe, data.labels)
    try:
        args, precision = training_arguments(recipe, run_dir, task, model)
    except UnsupportedSetupError as e:  # an accelerate config asking for DeepSpeed
        raise UsageError(str(e)) from e
    trainer = _build_trainer(args, data, processor, model, task, o.callbacks, recipe.training.threshold)
    try:
        trainer.check_sam_window()  # the run's length is known from here on; nothing is written yet
    except SAMWindowError as e:
        raise UsageError(str(e)) from e
    notify = o.notify if is_main_process() else (lambda _: None)  # one voice in multi-process runs
    stopper = GracefulStop(announce=notify)
    trainer.add_callback(stopper)

    if is_main_process():  # everything loaded: from here on, the directory is this run's
        if o.on_accepted is not None:
            o.on_accepted()
        if o.overwrite:
            clear_output_dir(run_dir)
        resolved = recipe.model_copy(update={"name": recipe.run_name()})
        write_config = lambda: write_text_atomic(run_dir / CONFIG_FILE, resolved.to_yaml())  # noqa: E731
        if checkpoint is None:
            write_config()
        else:  # a resume is accepted once its checkpoint has loaded: config.yaml keeps the old recipe until then
            trainer.add_callback(_once_resumed(write_config))
        mark_as_run(run_dir)
    output = _fit(trainer, checkpoint, stopper, run_dir, o.resume_command)
    metrics = _final_metrics(trainer, output, data, recipe, started)
    errors = metrics.pop("errors", None)
    if getattr(trainer, "is_fsdp2", False):
        # The whole model, loadable with from_pretrained: gathering the shards is a collective, so every process
        # takes part (the main one writes); checkpoints during training stay sharded.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        try:
            _save_results(trainer, o, metrics, data, task, precision, errors)
        except Exception as e:
            if disk_full(e) is None:
                raise
            raise _cut_short(e, run_dir, f"Its metrics (not saved): {_headline(metrics)}. ") from e
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


def _resumed_recipe(o: _RunOptions) -> Recipe | None:
    """The recipe the run directory's config.yaml holds (None without one); a resume on another model or other data
    is refused (UsageError, exit 2) before anything loads."""
    path = o.run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    saved = build_recipe(read_recipe_file(path), source=str(path))
    if fixed := recipe_changes(saved, o.recipe, RESUME_FIXED):
        raise UsageError(
            f"{o.run_dir} was trained on another model or other data than this command asks for: {'; '.join(fixed)}",
            f"A resume continues the same model on the same data ({path} holds them): leave those settings as they "
            "were, or start a new run (--overwrite, or another --output-dir).",
        )
    return saved


def _finished_run(o: _RunOptions, saved: Recipe | None) -> RunResult:
    """A resume of a finished run: its results as they are (nothing trains, nothing is written) when the command asks
    for what it ran, so that running it again is safe; refused (exit 2) when it asks for other settings."""
    changes = recipe_changes(saved, o.recipe, RUN_DEFINING + RUN_LENGTH) if saved is not None else []
    if changes or o.resume != "auto":
        why = (
            f"this command asks for other settings ({'; '.join(changes)})"
            if changes
            else f"resuming {o.resume} would train its last steps again and replace its results"
        )
        raise UsageError(
            f"{o.run_dir} has finished ({METRICS_FILE}): {why}",
            f"Train on from its weights in a new run: --init-from {o.run_dir} --output-dir NEW (a schedule of its "
            "own), or train it again: --overwrite.",
        )
    if is_main_process():
        o.notify(f"{o.run_dir} finished earlier ({METRICS_FILE}): nothing to resume, nothing changed")
    metrics = json.loads((o.run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    run = read_run(o.run_dir, saved or o.recipe)
    return RunResult(
        o.run_dir, metrics, o.recipe, run.task, run.labels, metrics.get("wall_time", 0.0), metrics.get("train_steps", 0)
    )


def _once_resumed(accept: Any) -> Any:
    """A callback calling `accept()` once the Trainer has loaded the checkpoint (weights, optimizer, scheduler, RNG):
    at the first step it takes, or at the end if none was left to take."""

    class OnceResumed(TrainerCallback):
        done = False

        def _once(self) -> None:
            if not self.done:
                self.done = True
                accept()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._once()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._once()

    return OnceResumed()


def _build_trainer(
    args: Any, data: Any, processor: Any, model: Any, task: str, callbacks: list[Any], threshold: float = 0.5
) -> Any:
    """The SAMTrainer of a run (setups SAM cannot run exactly become usage errors)."""
    try:
        trainer = SAMTrainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=processor,
            callbacks=callbacks,
            **_task_hooks(task, processor, data.labels, threshold),
        )
    except UnsupportedSetupError as e:
        raise UsageError(str(e)) from e
    trainer.remove_callback(PrinterCallback)
    if data.augment is not None:
        trainer.add_callback(modeling.augmentation_epoch_callback(data.augment))
    return trainer


def _fit(trainer: Any, checkpoint: str | None, stopper: Any, run_dir: Path, resume_command: str | None) -> Any:
    """`trainer.train`, with a NaN/inf loss, a training error and a requested stop turned into samtune's errors."""
    stopper.install()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except NonFiniteLossError as e:
        last = last_complete_checkpoint(run_dir)
        keep = f"The last good checkpoint is {last} (continue with --resume auto). " if last else ""
        raise TrainingError(
            f"{e}: training stopped, nothing new was saved",
            keep + "Lower training.learning_rate or add training.warmup, check the data for broken rows, "
            "or set training.on_nonfinite=skip to skip such batches.",
        ) from e
    except UnsupportedSetupError as e:  # found once the model is prepared (FSDP2's sharding), before any update
        raise UsageError(str(e)) from e
    except Exception as e:
        if disk_full(e) is not None:  # a checkpoint's save, cut short
            raise _cut_short(e, run_dir, "Training stopped. ") from e
        if not isinstance(e, RuntimeError):
            raise
        raise TrainingError(f"training stopped: {str(e).splitlines()[0]}", "Run with --debug for the traceback.") from e
    finally:
        stopper.uninstall()
    if stopper.requested:
        where = f"a checkpoint at step {trainer.state.global_step} is in {run_dir}"
        again = resume_command or "samtune.train(recipe, resume='auto')"
        raise Interrupted(f"training stopped: {where}", f"Continue it with:\n  {again}", stopper.exit_code)
    return output


def _cut_short(error: Exception, run_dir: Path, said: str) -> DiskFullError:
    """One message for a write into the run directory that was cut short (a full disk, a file-size limit): the file
    (the one written last, where the write did not name it), what `said`, and how to go on."""
    if isinstance(error, DiskFullError):
        message = error.message
    else:  # the file an OSError names, else the one written last (a save cut short leaves it half written)
        named = next((e.filename for e in chain(error) if isinstance(e, OSError) and e.filename), None)
        message = f"could not write {named or last_written(run_dir)}: {disk_full(error)}"
    last = last_complete_checkpoint(run_dir)
    then = f"then continue from its last complete checkpoint ({last}): --resume auto" if last else "then run it again"
    return DiskFullError(message, f"{said}{FREE_SPACE_HINT}, {then}.")


def _headline(metrics: dict[str, Any]) -> str:
    """A run's evaluation metrics in one line ('eval_accuracy 0.9120, eval_loss 0.2710, ...')."""
    shown = {
        k: v
        for k, v in metrics.items()
        if k.startswith(("eval_", "test_")) and isinstance(v, float) and not k.endswith(("_runtime", "_per_second"))
    }
    return ", ".join(f"{k} {v:.4f}" for k, v in shown.items())


def _task_hooks(task: str, processor: Any, labels: list[str], threshold: float) -> dict[str, Any]:
    """What the Trainer takes from the task: its collator, its metrics, and the logits' summary its metrics read."""
    task_ = tasks.get(task)
    return {
        "data_collator": task_.collator(processor),
        "compute_metrics": task_.compute_metrics(labels, threshold),
        "preprocess_logits_for_metrics": task_.preprocess_logits,
    }


def _errors_of(trainer: Any, task: str, labels: list[str]) -> Any:
    """Where the trainer's latest evaluation erred: its task's error report (None if the task has none)."""
    return trainer.compute_metrics.report(labels) if tasks.get(task).error_report else None


def _final_metrics(trainer: Any, output: Any, data: Any, recipe: Recipe, started: float) -> dict[str, Any]:
    """The flat metrics of a finished run: training, evaluation (and test), SAM's counters, wall time; the eval
    split's error report (a samtune.confusion.ErrorReport, if the task has one) under "errors", which is not saved
    in metrics.json."""
    metrics: dict[str, Any] = dict(output.metrics)
    metrics.update(trainer.evaluate(data.eval, metric_key_prefix="eval"))
    metrics["errors"] = _errors_of(trainer, data.task, data.labels)
    if data.test is not None:
        metrics.update(trainer.evaluate(data.test, metric_key_prefix="test"))
    metrics.update(
        train_steps=trainer.state.global_step,
        train_samples=len(data.train),
        eval_samples=len(data.eval),
        sam_rho=recipe.sam.rho,
        sam_adaptive=recipe.sam.adaptive,
        sam_variant=recipe.sam.variant,
        sam_climb_steps=trainer.sam_climb_steps,
        sam_perturbations_skipped=trainer.sam_perturbations_skipped,
        sam_nonfinite_skipped=trainer.sam_nonfinite_skipped,
        processes=trainer.args.world_size,
        fsdp=bool(getattr(trainer, "is_fsdp2", False)),
        wall_time=time.perf_counter() - started,
    )
    if data.test is not None:
        metrics["test_samples"] = len(data.test)
    return metrics


def _save_results(
    trainer: Any, o: _RunOptions, metrics: dict[str, Any], data: Any, task: str, precision: str, errors: Any = None
) -> None:
    """The model and processor (loadable with from_pretrained), the Trainer's state, the card and metrics.json."""
    recipe = o.recipe
    if not getattr(trainer, "is_fsdp2", False):  # FSDP2: saved by every process already (run)
        trainer.save_model(str(o.run_dir))
    if errors is not None:
        errors.plot(o.run_dir / errors.figure_file, f"{recipe.run_name()} on {data.eval_split}")
        write_json_atomic(o.run_dir / errors.json_file, errors.to_json())
    adapter = _save_adapter_extras(trainer, o.run_dir, recipe) if recipe.model.adapters() is not None else None
    trainer.save_state()
    card.write_model_card(  # (looked up on the module: tests replace it)
        o.run_dir,
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
            command=o.command,
            license=recipe.hub.license or base_model_license(modeling.model_path(recipe.model)),
            log_history=trainer.state.log_history,
            adapter=adapter,
            response_column=data.response_column,
            errors=errors,
            sources=[f for f in (provenance_of(recipe.model.name), provenance_of(recipe.data.dataset)) if f],
        ),
    )
    write_json_atomic(o.run_dir / METRICS_FILE, metrics)  # last: the mark of a finished run (rundir)


def _save_adapter_extras(trainer: Any, run_dir: Path, recipe: Recipe) -> dict[str, Any]:
    """Beside the adapters the Trainer saved: the base's config with the labels (what `eval`, `sharpness` and
    `--init-from` read), the merged model if asked, and what the card says of the adapters."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model()
    base.config.architectures = [type(base).__name__]  # as save_pretrained writes it: the task a run reads back
    base.config.save_pretrained(run_dir)
    trainable, total = model.get_nb_trainable_parameters()  # peft's count: the base once, plus the adapters
    lora = recipe.model.adapters()
    peft_config = model.peft_config["default"]
    if lora.merge:
        hf_logging.disable_progress_bar()  # "Writing model shards"
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(run_dir / MERGED_DIR)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(run_dir / MERGED_DIR)
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": sorted(peft_config.target_modules)
        if not isinstance(peft_config.target_modules, str)
        else peft_config.target_modules,
        "modules_to_save": modeling.modules_trained_in_full(model),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "merged": MERGED_DIR if lora.merge else None,
    }


def push_target(recipe: Recipe) -> Any:
    """Where the recipe's hub block says to push."""
    return PushTarget(recipe.hub.repo_id or "", recipe.hub.private, recipe.hub.revision)


def push(result: RunResult) -> str:
    """Push a finished run to the Hub as its recipe says; the repo URL."""
    return push_run(result.run_dir, push_target(result.recipe))


def evaluate_run(
    run_dir: Path,
    dataset: str,
    split: str | None = None,
    config: str | None = None,
    batch_size: int = 64,
    figure_dir: Path | None = None,
    notify: Any = print,
) -> dict[str, float]:
    """Evaluate a saved run directory on a dataset split (labels matched to the model's by name).

    `figure_dir`: where the caller will draw the task's error report (a classifier's confusion matrix, a multi-label
    classifier's per-label F1), checked writable before anything loads;
    `notify` is told how many rows were dropped (no text, no label).
    """
    run_dir = Path(run_dir)
    recipe, run = open_run(run_dir)
    report = tasks.get(run.task).error_report
    if figure_dir is not None and report and (why := writable_problem(figure_dir)):
        raise UsageError(
            f"cannot write the {report} figure into {figure_dir}: {why}",
            "Choose a writable place for it: --figure PATH.",
        )
    section = recipe.data.model_copy(update={"dataset": dataset, "config": config, "eval_file": None})
    examples = split_examples(run, section, split)
    for line in examples.dropped:
        notify(line)
    processor, inputs = model_inputs(run, examples)
    model = load_model(run)
    with tempfile.TemporaryDirectory(prefix="samtune-eval-") as scratch:
        args = SAMArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            disable_tqdm=True,
            rho=0.0,
            remove_unused_columns=tasks.get(run.task).remove_unused_columns,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = SAMTrainer(
            model=model,
            args=args,
            processing_class=processor,
            **_task_hooks(run.task, processor, run.labels, recipe.training.threshold),
        )
        trainer.remove_callback(PrinterCallback)
        metrics = trainer.evaluate(inputs, metric_key_prefix="eval")
    metrics["eval_samples"] = len(inputs)
    metrics["eval_split"] = examples.split
    metrics["errors"] = _errors_of(trainer, run.task, run.labels)  # None if the task has no error report
    return metrics
