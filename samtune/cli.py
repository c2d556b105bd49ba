"""The `samtune` command line: parses, loads a recipe, calls the library, prints. No training logic here.

Exit codes: 0 success; 1 training failed (or a full disk); 2 usage or recipe error; 3 data error; 4 push failed
(local results kept); 130 interrupted.

Imports: at the top, except those that would slow `samtune --help` (tests/test_style.py checks both), which each
command imports in its body: samtune.recipe (pydantic models, ~0.1 s), samtune.runner, .trainer, .modeling, .data,
.predict, .hub, .card, .confusion, .progress, .analysis.* (torch, transformers, datasets, peft,
huggingface_hub, sklearn, matplotlib) and, in `env`, those libraries themselves.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import os
import platform
import re
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import track
from rich.syntax import Syntax
from rich.table import Table

from samtune import __version__, tasks
from samtune.errors import (
    EXIT_INTERRUPTED,
    EXIT_TRAINING,
    FREE_SPACE_HINT,
    DiskFullError,
    PushError,
    SamtuneError,
    TrainingError,
    UsageError,
    disk_full,
)
from samtune.files import atomic_path, write_json_atomic
from samtune.launch import launched, relaunch, report_exit, resume_command, without
from samtune.optim.settings import default_of
from samtune.optim.variants import variant_class, variant_names
from samtune.processes import is_main_process, process_rank
from samtune.rundir import CONFIG_FILE, check_output_dir, find_runs, refuse_if_in_use, require_model

app = typer.Typer(
    name="samtune",
    help="Fine-tune Hugging Face models with Sharpness-Aware Minimization (SAM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
recipes_app = typer.Typer(help="List, show and copy the built-in recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

MODEL_PANEL = "Model and data"
SAM_PANEL = "SAM"
TRAIN_PANEL = "Training"
RUN_PANEL = "Run"
HUB_PANEL = "Hugging Face Hub"


def _exit(code: int) -> None:
    report_exit(code)
    raise typer.Exit(code)


def _fail(e: SamtuneError, debug: bool) -> None:
    if debug:
        err_console.print_exception()
    # Most errors meet every process alike: one message is enough. A training failure may be one
    # process's own (a NaN on its batch), so each says it, naming itself.
    if is_main_process() or isinstance(e, TrainingError):
        if not is_main_process():
            e.message = f"[process {process_rank()}] {e.message}"
        hint_lines = (e.hint or "").splitlines()
        commands = [line.strip() for line in hint_lines if line.startswith("  samtune ")]
        hint = "\n".join(line for line in hint_lines if not line.startswith("  samtune "))
        body = escape(e.message) + (f"\n[dim]{escape(hint)}[/dim]" if hint else "")
        err_console.print(Panel(body, title=f"[bold red]{e.title}[/bold red]", title_align="left", border_style="red"))
        for command in commands:  # whole, unwrapped, outside the box: ready to copy
            err_console.print(command, soft_wrap=True, markup=False)
    _exit(e.exit_code)


def _guarded(fn: Any, debug: bool) -> Any:
    """Run a command body: user errors become one message and an exit code, never a traceback."""
    try:
        return fn()
    except SamtuneError as e:
        _fail(e, debug)
    except KeyboardInterrupt:
        err_console.print("[yellow]Interrupted.[/yellow]")
        _exit(EXIT_INTERRUPTED)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # an unexpected failure: one line, the traceback behind --debug
        if (reason := disk_full(e)) is not None:  # a write cut short where samtune did not name the file
            _fail(
                DiskFullError(f"a file could not be written: {reason}", f"{FREE_SPACE_HINT}, and run it again."), debug
            )
        if debug:
            err_console.print_exception()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(
            Panel(
                f"{type(e).__name__}: {first}\n[dim]Run again with --debug to see the traceback.[/dim]",
                title="[bold red]Failed[/bold red]",
                title_align="left",
                border_style="red",
            )
        )
        _exit(EXIT_TRAINING)


def _version(value: bool) -> None:
    if value:
        console.print(f"samtune {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Fine-tune Hugging Face models with Sharpness-Aware Minimization (SAM)."""


def _split_recipe_args(recipe: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """RECIPE is optional: a first argument with '=' is an override, not a recipe."""
    items = list(overrides or [])
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        return None, [recipe, *items]
    return recipe, items


RecipeArg = Annotated[
    Optional[str], typer.Argument(help="A YAML recipe file or a built-in recipe name (samtune recipes list).")
]
OverridesArg = Annotated[
    Optional[list[str]], typer.Argument(help="KEY=VALUE overrides, e.g. training.learning_rate=1e-4 sam.rho=0.1.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.", rich_help_panel=RUN_PANEL)]


# The flags that set a recipe key (the highest precedence), by option name.
_FLAG_KEYS = {
    "model": "model.name",
    "dataset": "data.dataset",
    "output_dir": "output.dir",
    "rho": "sam.rho",
    "adaptive": "sam.adaptive",
    "variant": "sam.variant",
    "epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "seed": "training.seed",
    "push_to_hub": "hub.repo_id",
    "init_from": "model.init_from",
    "private": "hub.private",
}


# The options that shape a run, shared by `train` and `validate` (which checks the command as it will run).
ModelOpt = Annotated[Optional[str], typer.Option(help="Hub id or local folder.", rich_help_panel=MODEL_PANEL)]
DatasetOpt = Annotated[Optional[str], typer.Option(help="Hub id, local file or folder.", rich_help_panel=MODEL_PANEL)]
RhoOpt = Annotated[Optional[float], typer.Option(help="SAM radius (0: no SAM).", rich_help_panel=SAM_PANEL)]
AdaptiveOpt = Annotated[
    Optional[bool], typer.Option("--adaptive/--no-adaptive", help="ASAM.", rich_help_panel=SAM_PANEL)
]


def _cheaper_variants() -> tuple[str, ...]:
    """The registered SAM variants but exact SAM (samtune.optim.variants: light, no torch)."""
    return variant_names()[1:]


def _variant_help() -> str:
    """--variant's help, from the registry of SAM variants."""
    cheaper = _cheaper_variants()
    own = [f"sam.{s}" for name in cheaper for s in variant_class(name).settings]
    return (
        f"sam (exact) or a cheaper variant: {', '.join(cheaper)} (their settings: {', '.join(own)}). "
        f"Default: {default_of('sam_variant')} (chosen on samtune's cost-gain frontier)."
    )


VariantOpt = Annotated[Optional[str], typer.Option(help=_variant_help(), rich_help_panel=SAM_PANEL)]
EpochsOpt = Annotated[Optional[float], typer.Option(rich_help_panel=TRAIN_PANEL)]
MaxStepsOpt = Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)]
BatchSizeOpt = Annotated[Optional[int], typer.Option(help="Per device.", rich_help_panel=TRAIN_PANEL)]
LearningRateOpt = Annotated[Optional[float], typer.Option(rich_help_panel=TRAIN_PANEL)]
SeedOpt = Annotated[Optional[int], typer.Option(rich_help_panel=TRAIN_PANEL)]
OutputDirOpt = Annotated[Optional[Path], typer.Option(help="The run directory.", rich_help_panel=RUN_PANEL)]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace a non-empty output directory.", rich_help_panel=RUN_PANEL)
]
NprocOpt = Annotated[
    Optional[int],
    typer.Option(help="Re-launch on N local processes through Accelerate.", min=1, rich_help_panel=RUN_PANEL),
]
ResumeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="Continue from the newest (auto) or a named checkpoint.",
        rich_help_panel=RUN_PANEL,
    ),
]
InitFromOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--init-from",
        metavar="RUN_DIR",
        help="Start from a finished run's weights, with a new schedule.",
        rich_help_panel=MODEL_PANEL,
    ),
]
LoraOpt = Annotated[
    bool,
    typer.Option(
        "--lora",
        help="Train LoRA adapters (peft) instead of every weight; their settings: model.lora.r=16, ...",
        rich_help_panel=MODEL_PANEL,
    ),
]
PushToHubOpt = Annotated[
    Optional[str],
    typer.Option("--push-to-hub", metavar="REPO_ID", help="Push the run to this Hub repo.", rich_help_panel=HUB_PANEL),
]


class LogFormat(str, Enum):
    """How training logs are written where there is no terminal."""

    text = "text"
    json = "json"


LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        help="Without a terminal (a pipe, a file, CI): one line per logging step as key value pairs (text) or JSON "
        "lines (json); a terminal shows a progress bar (json: JSON lines there too).",
        rich_help_panel=RUN_PANEL,
    ),
]
PrivateOpt = Annotated[
    Optional[bool],
    typer.Option("--private/--public", help="Visibility of a new repo (default private).", rich_help_panel=HUB_PANEL),
]


# The options that shape a run, in the order --help lists them: `train` and `validate` take the same ones (validate
# checks the command as it will run), declared once here and given to both by `run_command`.
RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (ModelOpt, None),
    "dataset": (DatasetOpt, None),
    "rho": (RhoOpt, None),
    "adaptive": (AdaptiveOpt, None),
    "variant": (VariantOpt, None),
    "epochs": (EpochsOpt, None),
    "max_steps": (MaxStepsOpt, None),
    "batch_size": (BatchSizeOpt, None),
    "learning_rate": (LearningRateOpt, None),
    "seed": (SeedOpt, None),
    "output_dir": (OutputDirOpt, None),
    "overwrite": (OverwriteOpt, False),
    "nproc": (NprocOpt, None),
    "resume": (ResumeOpt, None),
    "init_from": (InitFromOpt, None),
    "lora": (LoraOpt, False),
    "push_to_hub": (PushToHubOpt, None),
    "private": (PrivateOpt, None),
    "log_format": (LogFormatOpt, LogFormat.text),
    "debug": (DebugOpt, False),
}


def run_command(fn: Any) -> Any:
    """`fn(own parameters..., **run)` as a command whose options are its own followed by RUN_OPTIONS (in `run`)."""
    own = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in RUN_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        return fn(**kwargs)

    command.__signature__ = inspect.Signature([*own, *shared])  # what Typer reads the options from
    command.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    return command


def _run_recipe_args(
    recipe: str | None, overrides: list[str] | None, run: dict[str, Any]
) -> tuple[str | None, list[str], dict[str, Any]]:
    """The recipe reference, overrides and flags of a `train` (or `validate`) command line."""
    ref, items = _split_recipe_args(recipe, overrides)
    if run["lora"]:  # the recipe's own LoRA settings, if any, stay; KEY=VALUE overrides still win
        items = ["model.lora={}", *items]
    flags = {key: run[name] for name, key in _FLAG_KEYS.items() if run[name] is not None}
    return ref, items, {key: str(v) if isinstance(v, Path) else v for key, v in flags.items()}


@app.command()
@run_command
def train(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    **run: Any,
) -> None:
    """Fine-tune a model with SAM and write a run directory (model, config.yaml, metrics.json, card)."""
    from samtune.recipe import load_recipe

    ref, items, flags = _run_recipe_args(recipe, overrides, run)
    overwrite, resume, debug, nproc = run["overwrite"], run["resume"], run["debug"], run["nproc"]

    def body() -> None:
        resolved = load_recipe(ref, items, flags)
        from samtune.modeling import quiet_transformers

        quiet_transformers()
        if nproc and nproc > 1 and not launched():
            _check_before_launch(resolved, overwrite, resume)
            argv = without(sys.argv[1:], set(), {"--nproc"})
            say, warn = console.print, lambda text: err_console.print(f"[red]{escape(text)}[/red]")
            raise typer.Exit(relaunch(argv, nproc, debug, say, warn))
        _train(resolved, overwrite, resume, debug, LogFormat(run["log_format"]).value)

    _guarded(body, debug)


def _check_before_launch(recipe: Any, overwrite: bool, resume: str | None) -> None:
    """What fails the same in every process fails here, once: the output directory, the Hub, the model."""
    from samtune.modeling import checked_config

    check_output_dir(recipe.output_dir(), overwrite, resume)
    if recipe.hub.repo_id:
        from samtune.hub import preflight
        from samtune.runner import push_target

        preflight(push_target(recipe))
    checked_config(
        recipe.model
    )  # a missing model (or a max_length it cannot take) fails here, once, not in every process


def _train(recipe: Any, overwrite: bool, resume: str | None, debug: bool, log_format: str = "text") -> None:
    from samtune.progress import ProgressCallback
    from samtune.runner import leave_process_group, train

    main = is_main_process()
    if main:
        console.print(
            f"[bold]samtune[/bold] {recipe.run_name()}: {recipe.model.name} on {recipe.data.dataset} "
            f"(rho={recipe.sam.rho}{', ASAM' if recipe.sam.adaptive else ''}"
            f"{'' if recipe.sam.variant == 'sam' else ', ' + recipe.sam.variant}) -> {recipe.output_dir()}"
        )
    command = shlex.join(["samtune", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("samtune", "__main__.py") else None
    result = train(
        recipe,
        overwrite=overwrite,
        resume=resume,
        callbacks=[ProgressCallback(console, log_format)],
        command=command,
        resume_command=resume_command(sys.argv[1:]),
        notify=lambda text: err_console.print(f"[yellow]{text}[/yellow]"),
    )
    leave_process_group()  # one run per process: end it together (the main one has written the run)
    if main:
        _summary(result)
        if recipe.hub.repo_id:
            from samtune.runner import push

            console.print(f"pushing {result.run_dir} to {recipe.hub.repo_id} ...")
            console.print(f"[green]pushed[/green]: {push(result)}")


def _summary(result: Any) -> None:
    m = result.metrics
    table = Table(title=f"{result.recipe.run_name()}: done", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    shown = [f"{split}_{k}" for split in ("eval", "test") for k in tasks.get(result.task).metric_names]
    for key in (*shown, "train_loss"):
        if key in m:
            table.add_row(key, f"{m[key]:.4f}")
    table.add_row("steps", str(result.steps))
    table.add_row("train / eval examples", f"{m.get('train_samples')} / {m.get('eval_samples')}")
    table.add_row("wall time", f"{result.wall_time:.1f} s")
    table.add_row("run directory", str(result.run_dir))
    console.print(table)


@app.command()
@run_command
def validate(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    schema_only: Annotated[bool, typer.Option("--schema-only", help="Check the recipe, not the data.")] = False,
    **run: Any,
) -> None:
    """Check a recipe, or a whole `train` command line (the same arguments and flags), every problem at once;
    unless --schema-only, that the output directory takes the run and that the data loads."""
    from samtune.recipe import load_recipe

    ref, items, flags = _run_recipe_args(recipe, overrides, run)
    overwrite, resume, debug = run["overwrite"], run["resume"], run["debug"]

    def body() -> None:
        resolved = load_recipe(ref, items, flags)
        console.print(f"[green]recipe ok[/green]: {resolved.run_name()}")
        if schema_only:
            return
        check_output_dir(resolved.output_dir(), overwrite, resume)  # (--nproc changes nothing to check here)
        from samtune import modeling
        from samtune.data import load_data

        modeling.quiet_transformers()
        # As train reads it: the model's own task helps detect the data's (causal LM + text); max_length must fit it.
        model_task = modeling.model_task(modeling.checked_config(resolved.model))
        data = load_data(resolved.data, resolved.training.seed, resolved.task, model_task)
        table = Table(title="data pre-flight", show_header=False)
        table.add_row("task", data.task)
        columns = (data.text_column, data.text_pair_column, data.image_column, data.response_column)
        table.add_row("columns", ", ".join(c for c in columns if c))
        if data.picked:
            from samtune.runner import describe_picked

            table.add_row("picked", describe_picked(data.picked))
        task = tasks.get(data.task)
        table.add_row(*task.describe_targets(data, resolved.data.packing))
        if task.uses_max_length:
            table.add_row("max_length", f"{resolved.model.max_length} tokens")
        table.add_row("train / eval", f"{len(data.train)} / {len(data.eval)} (eval: {data.eval_source})")
        console.print(table)
        console.print("[green]data ok[/green]")

    _guarded(body, debug)


@app.command("eval")
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by samtune train.")],
    dataset: Annotated[str, typer.Option(help="Hub id, local file or folder.")],
    split: Annotated[Optional[str], typer.Option(help="Split to evaluate (default: validation/test).")] = None,
    config_name: Annotated[Optional[str], typer.Option("--config-name", help="Hub dataset configuration.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    figure: Annotated[
        Optional[Path],
        typer.Option(
            help="Where the figure of where it errs goes (classification: the confusion matrix; multi-label: "
            "per-label F1), its JSON beside it as eval-<data>-<split>-confusion.json (per_label.json); default: "
            "in the run directory, eval-<data>-<split>-confusion_matrix.png (per_label_f1.png)."
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Evaluate a saved run on a dataset: its metrics (per task), and for a classifier per-class precision, recall
    and F1 with the confusion matrix, for a multi-label classifier per-label precision, recall, F1, examples and
    predictions (tables, a figure and its JSON)."""

    def body() -> None:
        require_model(run_dir)  # a mistyped folder is refused at once, before torch and transformers load
        from samtune.modeling import quiet_transformers
        from samtune.runner import evaluate_run

        quiet_transformers()
        metrics = evaluate_run(run_dir, dataset, split, config_name, batch_size, figure.parent if figure else run_dir)
        table = Table(title=f"{run_dir} on {dataset} [{metrics['eval_split']}]")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            if k.startswith("eval_") and "per_second" not in k and k != "eval_split":
                table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        console.print(table)
        report = metrics.get("errors")
        if report is not None:
            for part in report.printed():
                console.print(part)
            stem = re.sub(r"[^\w.-]+", "-", Path(dataset).name.split(".")[0]).strip("-") or "data"
            prefix = f"eval-{stem}-{metrics['eval_split']}-"
            path = figure or Path(run_dir) / f"{prefix}{report.figure_file}"
            title = f"{Path(run_dir).name} on {dataset} [{metrics['eval_split']}]"
            with atomic_path(path) as tmp:
                report.plot(tmp, title)
            saved = path.parent / f"{prefix}{report.json_file}"
            write_json_atomic(saved, report.to_json())
            console.print(f"wrote {path} and {saved}")

    _guarded(body, debug)


@app.command("predict")
def predict_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by samtune train.")],
    source: Annotated[
        Optional[Path], typer.Argument(metavar="INPUT", help="A csv/jsonl/parquet file, or a folder of images.")
    ] = None,
    text: Annotated[
        Optional[list[str]], typer.Option("--text", help="A text to predict on, instead of INPUT (repeat for several).")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="Write every row with its prediction here (.csv or .jsonl).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Skip images that do not decode or are over Pillow's decompression-bomb limit (and say which).",
        ),
    ] = False,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Causal LMs: tokens to generate per prompt (default 50).")
    ] = None,
    do_sample: Annotated[
        bool, typer.Option("--do-sample", help="Causal LMs: sample the tokens (default: greedy, the likeliest).")
    ] = False,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Causal LMs, with --do-sample.")] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Causal LMs, with --do-sample.")] = None,
    debug: DebugOpt = False,
) -> None:
    """Predict with a saved run: each input row with its predicted label and every class's probability; a tagger's
    entities and tags; a causal LM's completion of each prompt."""

    def body() -> None:
        require_model(run_dir)  # before torch and transformers load
        from samtune.predict import OUTPUT_FORMATS, predict, write_predictions

        if (source is None) == (not text):
            raise UsageError(
                "give INPUT (a file or a folder of images) or --text, " + ("not both" if text else "one"),
                'e.g. samtune predict RUN_DIR reviews.csv, or samtune predict RUN_DIR --text "a text".',
            )
        if output is not None and output.suffix.lower() not in OUTPUT_FORMATS:
            raise UsageError(f"cannot tell the format of --output {output}", "End it with .csv or .jsonl.")
        if (temperature is not None or top_p is not None) and not do_sample:
            raise UsageError(
                "--temperature and --top-p shape sampling; without --do-sample generation is greedy",
                "Add --do-sample, or drop them.",
            )
        given = dict(max_new_tokens=max_new_tokens, do_sample=do_sample or None, temperature=temperature, top_p=top_p)
        generation = {k: v for k, v in given.items() if v is not None}
        result = predict(
            run_dir,
            source if source is not None else list(text or []),
            batch_size,
            skip_bad,
            progress=lambda it, total: track(
                it, total=total, description="predicting", console=err_console, transient=True
            ),
            generation=generation,
        )
        if result.skipped:
            err_console.print(
                f"[yellow]skipped {len(result.skipped)} image(s) that cannot be read: "
                f"{', '.join(result.skipped[:10])}[/yellow]"
            )
        if output is not None:
            write_predictions(result, output)
            console.print(f"[green]wrote[/green] {len(result.table)} predictions to {output}")
            return
        shown = result.table.head(20)
        table = Table(title=f"{run_dir}: {len(result.table)} prediction(s)")
        for c in shown.columns:
            table.add_column(str(c), overflow="fold", justify="right" if c.startswith(("prob_", "score")) else "left")
        for _, row in shown.iterrows():
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else escape(str(v))[:80] for v in row])
        console.print(table)
        if len(result.table) > len(shown):
            console.print(f"(the first {len(shown)} rows: --output FILE.csv writes all {len(result.table)})")

    _guarded(body, debug)


@app.command("runs")
def runs_command(
    root: Annotated[Path, typer.Argument(help="Where the run directories are.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON, for scripts.")] = False,
    debug: DebugOpt = False,
) -> None:
    """The run directories under ROOT (default runs/), newest first: model, data, SAM, metric, steps, status."""

    def body() -> None:
        runs = find_runs(root)
        if as_json:
            print(json.dumps(runs, indent=1))
            return
        if not runs:
            console.print(f"no run directories under {root}")
            return
        table = Table(title=f"runs under {root}, newest first")
        for name in ("run", "model", "data", "SAM", "eval metric", "steps", "wall time", "status", "modified"):
            table.add_column(name, overflow="fold", justify="right" if name in ("steps", "wall time") else "left")
        for r in runs:
            metric = f"{r['metric'].removeprefix('eval_')} {r['value']:.4f}" if r["value"] is not None else "—"
            wall = f"{r['wall_time']:.0f} s" if r["wall_time"] is not None else "—"
            when = datetime.datetime.fromtimestamp(r["modified"]).strftime("%Y-%m-%d %H:%M")
            steps = str(r["steps"] if r["steps"] is not None else "—")
            table.add_row(
                escape(r["run"]),
                escape(str(r["model"] or "")),
                escape(str(r["data"] or "")),
                escape(str(r["sam"] or "")),
                metric,
                steps,
                wall,
                escape(r["status"]),
                when,
            )
        console.print(table)

    _guarded(body, debug)


MEASURE_PANEL = "Measurement"


@app.command("sharpness")
def sharpness_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by samtune train.")],
    dataset: Annotated[
        Optional[str], typer.Option(help="Hub id, local file or folder (default: the run's own eval split).")
    ] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to measure on (default: validation/test).")] = None,
    batches: Annotated[
        int, typer.Option(min=1, help="Batches the loss is averaged over.", rich_help_panel=MEASURE_PANEL)
    ] = 4,
    batch_size: Annotated[
        Optional[int], typer.Option(min=1, help="Default: the run's eval batch size.", rich_help_panel=MEASURE_PANEL)
    ] = None,
    against: Annotated[
        Optional[Path],
        typer.Option("--against", metavar="RUN_DIR2", help="A second run of the same model, measured beside it."),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Examples, random directions and vectors.", rich_help_panel=MEASURE_PANEL)
    ] = 0,
    grid: Annotated[int, typer.Option(min=3, help="Landscape points per axis.", rich_help_panel=MEASURE_PANEL)] = 21,
    span: Annotated[
        float, typer.Option(min=0.0, help="Landscapes from -span to span.", rich_help_panel=MEASURE_PANEL)
    ] = 1.0,
    rho: Annotated[
        Optional[list[float]],
        typer.Option(
            help="SAM sharpness radius; repeat for several (default 0.01 0.05 0.1 0.2).", rich_help_panel=MEASURE_PANEL
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=2, help="Hutchinson samples for the Hessian trace.", rich_help_panel=MEASURE_PANEL)
    ] = 32,
    power_iterations: Annotated[
        int,
        typer.Option(
            min=1,
            help="Power iterations for the Hessian's top eigenvalue at most (fewer: faster on a large model; the "
            "report says whether it converged).",
            rich_help_panel=MEASURE_PANEL,
        ),
    ] = 100,
    debug: DebugOpt = False,
) -> None:
    """Measure how sharp a run's minimum is: Hessian top eigenvalue and trace, SAM sharpness, loss landscapes."""

    def body() -> None:
        require_model(run_dir, "RUN_DIR")  # before torch and transformers load
        if against is not None:
            require_model(against, "--against")
        from samtune.analysis.report import DEFAULT_RHOS, measure_sharpness

        report = measure_sharpness(
            run_dir,
            dataset,
            split,
            batches=batches,
            batch_size=batch_size,
            against=against,
            seed=seed,
            grid_points=grid,
            span=span,
            rhos=rho or DEFAULT_RHOS,
            trace_samples=samples,
            power_max_iter=power_iterations,
            console=err_console,
        )
        _sharpness_table(report)

    _guarded(body, debug)


def _sharpness_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    runs = [report, *([report["against"]] if "against" in report else [])]
    table = Table(title=escape(f"sharpness on {s['examples']} examples of {s['dataset']} [{s['split']}]"))
    table.add_column("measure")
    for r in runs:
        table.add_column(escape(r["name"]), justify="right")

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}"  # null in the JSON: not finite

    table.add_row("loss", *[fmt(r["loss"]) for r in runs])
    table.add_row(
        "top Hessian eigenvalue",
        *[fmt(r["hessian_top_eigenvalue"]) + ("" if r["power_converged"] else " (not converged)") for r in runs],
    )
    table.add_row(
        f"Hessian trace (± s.e., {s['trace_samples']} samples)",
        *[f"{fmt(r['hessian_trace'])} ± {fmt(r['hessian_trace_stderr'])}" for r in runs],
    )
    for i, point in enumerate(report["sam_sharpness"]):
        table.add_row(
            f"SAM sharpness, rho={point['rho']:g}", *[fmt(r["sam_sharpness"][i]["loss_increase"]) for r in runs]
        )
    console.print(table)
    console.print(
        f"wrote sharpness.json, {report['figures']['landscape_1d']} and "
        f"{report['figures']['landscape_2d']} in {report['run_dir']}",
        markup=False,
    )


COMPARE_PANEL = "Comparison"


@app.command("compare")
def compare_command(
    recipe: RecipeArg = None,
    overrides: OverridesArg = None,
    arms: Annotated[
        str,
        typer.Option(
            help="Comma-separated: adamw (the baseline, always run), recipe (the recipe's SAM as train runs it: "
            f"samtune's default is {default_of('sam_variant')} at rho {default_of('rho')}), sam (exact SAM), asam, "
            f"{', '.join(_cheaper_variants())}; each may carry its own SAM settings: "
            "sam:rho=0.02,schedule=lr,start=0.1 (a KEY=VALUE after a comma belongs to the arm before it).",
            rich_help_panel=COMPARE_PANEL,
        ),
    ] = "adamw,recipe",
    seeds: Annotated[
        int, typer.Option(min=1, help="Seeds per arm: training.seed, +1, ...", rich_help_panel=COMPARE_PANEL)
    ] = 3,
    output_dir: Annotated[
        Optional[Path], typer.Option(help="Default: runs/<recipe name>-compare.", rich_help_panel=RUN_PANEL)
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier comparison there.", rich_help_panel=RUN_PANEL)
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep its finished runs, continue an interrupted one, train the rest (also adds arms or seeds).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Train the baseline (rho=0) and SAM arms on the same seeds; rank them on validation, compare (comparison.json)."""
    ref, items = _split_recipe_args(recipe, overrides)

    def body() -> None:
        from samtune.analysis.compare import compare
        from samtune.analysis.comparison import (
            COMPARISON_FILE,
            CURVES_FILE,
            best_arm_line,
            comparison_table,
            cost_table,
            has_test_metrics,
        )
        from samtune.modeling import quiet_transformers
        from samtune.progress import ProgressCallback

        quiet_transformers()
        again = shlex.join(["samtune", *without(sys.argv[1:], {"--overwrite", "--resume"}, set()), "--resume"])
        report = compare(
            ref,
            items,
            arms=arms,
            seeds=seeds,
            output_dir=output_dir,
            overwrite=overwrite,
            resume=resume,
            callbacks=[ProgressCallback(console)],
            resume_command=again,
            notify=lambda text: console.print(text, markup=False),
        )
        console.print(comparison_table(report))
        console.print(best_arm_line(report), markup=False)
        if has_test_metrics(report):
            console.print(comparison_table(report, split="test"))
        console.print(cost_table(report))
        out = report["settings"]["output_dir"]
        console.print(
            f"wrote {COMPARISON_FILE} and {CURVES_FILE} in {out}; each run in {out}/<arm>/seed-<n>", markup=False
        )

    _guarded(body, debug)


@app.command("push")
def push_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by samtune train.")],
    repo_id: Annotated[
        Optional[str], typer.Option("--repo-id", help="namespace/name (default: the run's hub.repo_id).")
    ] = None,
    private: Annotated[
        Optional[bool], typer.Option("--private/--public", help="Visibility of a new repo (default private).")
    ] = None,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing).")] = None,
    debug: DebugOpt = False,
) -> None:
    """Push an existing run directory (again) to the Hugging Face Hub."""

    def body() -> None:
        from samtune.hub import preflight, push_run
        from samtune.recipe import build_recipe, read_recipe_file
        from samtune.runner import push_target

        # The run's own hub block, with the options on top (the usual precedence and validation).
        config = run_dir / CONFIG_FILE
        saved = read_recipe_file(config) if config.is_file() else {}
        flags = {"hub.repo_id": repo_id, "hub.private": private, "hub.revision": revision}
        recipe = build_recipe(saved, flags=flags, source=str(config) if config.is_file() else "the command line")
        if not recipe.hub.repo_id:
            raise UsageError("no repo to push to", "Pass --repo-id namespace/name.")
        target = push_target(recipe)
        refuse_if_in_use(run_dir, "Push it once that run ends.")
        preflight(target, unreachable=PushError)
        console.print(f"pushing {run_dir} to {target.repo_id} ...")
        url = push_run(run_dir, target, notify=lambda text: err_console.print(text, style="yellow", markup=False))
        console.print(f"[green]pushed[/green]: {url}")

    _guarded(body, debug)


@app.command("source")
def source_command(
    name: Annotated[Optional[str], typer.Argument(help="A source's name; none: list them.")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Build into this new or empty folder, not samtune's cache.")
    ] = None,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="A model source: convert this .pth file, not the package's.")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Build a model or dataset offline from files installed packages ship (source:NAME in a recipe), or list them."""

    def body() -> None:
        from samtune import sources

        if name is None:
            table = Table(show_header=True, header_style="bold")
            for col in ("name", "kind", "what"):
                table.add_column(col, overflow="fold")
            for source in sources.sources().values():
                table.add_row(source.name, source.kind, source.description)
            console.print(table)
            return
        folder = sources.build(name, out, weights)
        facts = sources.read_provenance(folder)
        console.print(f"[green]{facts.get('what', name)}[/green]: {folder}", highlight=False)
        console.print(f"use it as {sources.SOURCE_PREFIX}{name} in a recipe, or as the folder", highlight=False)

    _guarded(body, debug)


@recipes_app.command("list")
def recipes_list() -> None:
    """The built-in recipes, with their task, model and dataset."""

    from samtune.recipe import builtin_recipes, load_yaml

    table = Table(show_header=True, header_style="bold")
    for col in ("name", "task", "model", "dataset", "description"):
        table.add_column(col, overflow="fold")
    for name, path in builtin_recipes().items():
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
        data = raw.get("data", {}) or {}
        dataset = data.get("dataset", "")
        if data.get("config"):
            dataset += f" ({data['config']})"
        table.add_row(
            name, raw.get("task", "auto"), (raw.get("model") or {}).get("name", ""), dataset, raw.get("description", "")
        )
    console.print(table)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="A built-in recipe name (samtune recipes list).")]) -> None:
    """Print a built-in recipe."""
    from samtune.recipe import builtin_recipe

    _guarded(lambda: console.print(Syntax(builtin_recipe(name).read_text(encoding="utf-8"), "yaml")), False)


@recipes_app.command("copy")
def recipes_copy(
    name: Annotated[str, typer.Argument(help="A built-in recipe name (samtune recipes list).")],
    dest: Annotated[
        str, typer.Argument(help="A new file, or a folder for NAME.yaml (one ending in / is created if missing).")
    ],
) -> None:
    """Copy a built-in recipe to edit it; an existing file is never written over."""
    from samtune.recipe import copy_builtin_recipe

    _guarded(lambda: console.print(f"copied {name} to {copy_builtin_recipe(name, dest)}"), False)


@app.command()
def env() -> None:
    """Versions, devices and Hub settings: what to paste into a bug report."""

    import accelerate
    import datasets
    import torch
    import transformers

    table = Table(show_header=False)
    table.add_row("samtune", __version__)
    table.add_row("python", platform.python_version())
    table.add_row("platform", platform.platform())
    for mod in (torch, transformers, accelerate, datasets):
        table.add_row(mod.__name__, mod.__version__)
    cuda = torch.cuda.is_available()
    table.add_row("cuda", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda else "not available")
    table.add_row("bf16", str(cuda and torch.cuda.is_bf16_supported()))
    table.add_row("cpu cores", str(os.cpu_count()))
    table.add_row("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "unset"))
    table.add_row("HF_HOME", os.environ.get("HF_HOME", "~/.cache/huggingface"))
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="samtune")


if __name__ == "__main__":
    main()
