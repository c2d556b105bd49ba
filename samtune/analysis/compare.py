"""`samtune compare`: the baseline and SAM arms of one recipe, trained on the same seeds, compared.

Every arm x seed is an ordinary run (`samtune.runner.train`) in `<output>/<arm>/seed-<n>/`, kept
after the comparison. Runs with the same seed see the same data in the same order and start from
the same weights: the data order comes from the seed alone (accelerate's seedable sampler), and
SAM's extra passes draw no numbers from it. So each seed pairs an arm with the baseline.

The arms (`--arms`), each the recipe (with the KEY=VALUE overrides) plus its own SAM settings:

    adamw            the base optimizer alone (sam.rho=0), whatever training.optimizer is: the baseline,
                     always trained
    recipe           the recipe's SAM as `samtune train` runs it: its variant, rho and every other sam
                     setting (samtune's default: the climb on a quarter of each batch at rho 0.1)
    sam              exact SAM (the whole batch climbs) with the recipe's rho and adaptive flag (rho 0.05,
                     or 0.5 if adaptive, where the recipe has rho 0)
    asam             ASAM (sam.adaptive=true): the recipe's rho if the recipe is adaptive already, else 0.5
                     (Kwon et al. 2021 use 0.5-2.0; SAM's usual 0.05 barely moves an adaptive climb)
    every_k, looksam, ...
                     each cheaper SAM variant (samtune.optim.variants: every registered one, described
                     by its own module) with the `sam` arm's rho and adaptive flag, and the recipe's
                     settings for that variant (sam.every_k, sam.looksam_k, ...)

An arm may carry its own SAM settings, on top of the recipe's: `NAME:KEY=VALUE,KEY=VALUE`, where KEY
is a key of the recipe's `sam` section (rho, schedule, start, stop, params, adaptive, or the arm's
variant's own, e.g. looksam_k). A `KEY=VALUE` after a comma belongs to the arm before it, so

    --arms adamw,sam:rho=0.01,sam:schedule=lr,start=0.1,looksam:looksam_k=3

is four arms: adamw, `sam:rho=0.01`, `sam:schedule=lr,start=0.1` and `looksam:looksam_k=3`. A
pattern after `params=` may be followed by more patterns (`sam:params=encoder.*,!*.bias`). The
arm's name is its text as given (its runs go to `<output>/<name with ':' as '-'>/seed-<n>/`); every
problem in every arm (an unknown arm or key, a value out of bounds, a setting of another variant)
is reported at once, before anything trains; an arm given twice runs once.

A variant's own settings given as overrides reach only that variant's arm, so
`sam.looksam_k=3 --arms adamw,sam,looksam` is fine. The recipe's output.dir is not used.

The arms are ranked by the validation metric the recipe chooses its checkpoint by
(training.metric_for_best_model on the eval split: mean over seeds), and the first is named the
best. Test-split numbers, where the data has a test split, are reported apart and never used to
rank or choose.

After the runs, every number is read back from the runs' own metrics.json and trainer_state.json
files, and written to `comparison.json` and `learning_curves.png` in the output directory; see
`samtune.analysis.paired` for the statistics. `resume=True` keeps every finished run (metrics.json
written), continues an interrupted one from its checkpoint, and trains the rest: it is also how
arms or seeds are added to an existing comparison.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from samtune import runner, tasks
from samtune.analysis.comparison import (
    BASELINE,
    COMPARISON_FILE,
    CURVES_FILE,
    RunRef,
    build_report,
    json_safe,
    plot_learning_curves,
    read_curves,
)
from samtune.errors import Interrupted, RecipeError, SamtuneError, TrainingError, UsageError
from samtune.files import write_json_atomic
from samtune.optim.settings import setting_specs
from samtune.optim.variants import variant_class, variant_names
from samtune.recipe import (
    Recipe,
    SAMSection,
    build_recipe,
    deep_merge,
    load_yaml,
    parse_overrides,
    read_recipe_file,
    recipe_dirs,
    resolve_recipe_path,
    settings_for_variant,
    yaml_scalar,
)
from samtune.rundir import (
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RunLock,
    clear_output_dir,
    contents,
    last_complete_checkpoint,
)

RECIPE_ARM = "recipe"  # the recipe's SAM as it stands

OWN_ARMS: dict[str, str] = {
    "adamw": "the base optimizer alone (sam.rho=0)",
    RECIPE_ARM: "the recipe's own SAM settings, as samtune train runs them (its variant included)",
    "sam": "exact SAM, the recipe's rho and adaptive flag",
    "asam": "ASAM (sam.adaptive=true), rho 0.5 unless the recipe is adaptive",
}


def arm_kinds() -> dict[str, str]:
    """Every kind of arm and what it is: compare's own three, then each cheaper SAM variant, as its module says."""
    return {**OWN_ARMS, **{name: variant_class(name).summary for name in variant_names() if name not in OWN_ARMS}}


DEFAULT_ARMS = (BASELINE, RECIPE_ARM)
DEFAULT_SEEDS = 3
COMPARE_MARK = ".samtune-compare"  # what --overwrite may delete
Notify = Callable[[str], None]


@dataclass
class ArmRun:
    """One run of the comparison: an arm on a seed, its recipe and its run directory."""

    arm: str  # the arm's name: 'sam', 'sam:rho=0.01'
    seed: int
    recipe: Recipe

    @property
    def run_dir(self) -> Path:
        """Where the run is written (the recipe's output.dir)."""
        return self.recipe.output_dir()

    @property
    def label(self) -> str:
        """'sam, seed 43'."""
        return f"{self.arm}, seed {self.seed}"


@dataclass(frozen=True)
class ArmSpec:
    """One arm as given: its kind (a name of `arm_kinds()`) and its own SAM settings (recipe keys, values as text)."""

    kind: str
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """'sam' or 'sam:rho=0.01,schedule=lr': the arm's name in tables, comparison.json and messages."""
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.settings) if self.settings else "")

    @property
    def folder(self) -> str:
        """The arm's folder in the comparison's output directory."""
        return self.name.replace(":", "-").replace("/", "_")

    def values(self) -> dict[str, Any]:
        """Its settings with their values typed as in a recipe (YAML scalars)."""
        return {k: yaml_scalar(v) for k, v in self.settings}


def _sam_keys() -> dict[str, str | None]:
    """The keys an arm may set (the recipe's sam section, but the variant: the arm names it) -> their variant."""
    return {s.recipe_key: s.variant for s in setting_specs() if s.recipe_key != "variant"}


def read_arms(spec: str | Sequence[str]) -> tuple[list[ArmSpec], list[str]]:
    """The arms in `spec` ('adamw,sam:rho=0.01,...' or a list of such strings) and every problem found in them.

    Checks the syntax, the arm names and the keys; the values are checked when the arms' recipes are
    built (`plan_runs`).
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    tokens = [t.strip() for item in items for t in item.split(",") if t.strip()]
    keys, kinds = _sam_keys(), arm_kinds()
    arms: list[list[Any]] = []  # [kind, [(key, text), ...]]
    problems: list[str] = []
    for token in tokens:
        head, colon, rest = token.partition(":")
        if colon or "=" not in token:
            name = head.strip()
            if name not in kinds:
                if arms and arms[-1][1] and arms[-1][1][-1][0] == "params" and not colon:
                    arms[-1][1][-1] = ("params", f"{arms[-1][1][-1][1]},{token}")  # one more params pattern
                    continue
                close = difflib.get_close_matches(name, list(kinds), n=1)
                problems.append(
                    f"unknown arm '{name}': the arms are {', '.join(kinds)}"
                    + (f" (did you mean '{close[0]}'?)" if close else "")
                )
                arms.append([None, []])
                continue
            arms.append([name, []])
            if not colon:
                continue
            if not rest.strip():
                problems.append(f"arm '{token}': give its settings after the colon (e.g. {name}:rho=0.02) or none")
                continue
            token = rest
        if not arms:
            problems.append(f"'{token}' comes before any arm: write the arm first, e.g. sam:{token}")
            continue
        key, sep, value = token.partition("=")
        key = key.strip().removeprefix("sam.")
        kind = arms[-1][0]
        if not sep or not key:
            problems.append(f"'{token}' is not KEY=VALUE (arm settings look like sam:rho=0.02,schedule=lr)")
        elif key == "variant":
            problems.append(f"'{token}': the arm's name sets its variant (write {value.strip()}:... as an arm)")
        elif key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            problems.append(
                f"unknown SAM setting '{key}' in arm '{kind}': the settings are {', '.join(keys)}"
                + (f" (did you mean '{close[0]}'?)" if close else "")
            )
        elif kind not in (None, RECIPE_ARM) and keys[key] not in (None, kind):
            problems.append(
                f"'{key}' is a setting of the {keys[key]} arm, not of '{kind}': write {keys[key]}:{key}=..."
            )
        elif kind == BASELINE:
            problems.append(f"the {BASELINE} arm is the baseline (rho 0) and takes no SAM settings (got {key})")
        elif kind == "asam" and key == "adaptive":
            problems.append("the asam arm is adaptive by definition: for a non-adaptive climb use a sam arm")
        elif key in dict(arms[-1][1]):
            problems.append(f"'{key}' is given twice in one arm ({kind})")
        else:
            arms[-1][1].append((key, value.strip()))
    specs = [ArmSpec(kind, tuple(settings)) for kind, settings in arms if kind is not None]
    if not tokens:
        problems.append(f"no arms: give them comma-separated, e.g. --arms {BASELINE},sam,sam:rho=0.02")
    unique = list({a.name: a for a in specs}.values())
    if not any(a.kind == BASELINE for a in unique):
        unique.insert(0, ArmSpec(BASELINE))
    return unique, problems


def parse_arms(spec: str | Sequence[str]) -> list[str]:
    """Arm names from 'adamw,sam' (or a list), in order, without repeats; the baseline first if missing.

    Raises UsageError naming every problem (see `read_arms`).
    """
    arms, problems = read_arms(spec)
    if problems:
        raise UsageError(
            "; ".join(problems)
            if len(problems) == 1
            else f"{len(problems)} problems in --arms:\n" + "\n".join(f"  - {p}" for p in problems),
            "Arms are comma-separated names with optional settings: --arms adamw,sam,sam:rho=0.02,schedule=lr.",
        )
    return [a.name for a in arms]


def describe_arm(name: str) -> str:
    """What an arm is: its kind's description, and the settings it sets on top."""
    kind, _, settings = name.partition(":")
    return arm_kinds()[kind] + (f"; with {settings.replace(',', ', ')}" if settings else "")


def rank_arms(report: dict[str, Any], metric: str) -> dict[str, Any]:
    """The arms ordered by the mean validation metric over seeds (best first); test numbers play no part."""
    key = f"eval_{metric}"
    higher = tasks.metric(metric).greater_is_better
    scored = [(a, e["metrics"][key]["mean"]) for a, e in report["arms"].items() if key in e["metrics"]]
    order = sorted(scored, key=lambda x: -x[1] if higher else x[1])
    return {
        "metric": key,
        "greater_is_better": higher,
        "order": [a for a, _ in order],
        "best": order[0][0] if order else None,
        "chosen_on": "the eval (validation) split, mean over seeds; test-split numbers are never used to choose",
    }


def _ranking_metric(run: Any) -> str:
    """The metric that ranks the arms: the recipe's metric_for_best_model, else the default of the task it trained."""
    if run.recipe.training.metric_for_best_model:
        return run.recipe.training.metric_for_best_model
    metrics = json.loads((Path(run.run_dir) / METRICS_FILE).read_text(encoding="utf-8"))
    # Each task's default (its first metric), for the task whose metrics the run computed.
    return next((name for name in tasks.default_metrics() if f"eval_{name}" in metrics), "accuracy")


def arm_sam(arm: str, recipe_sam: SAMSection) -> dict[str, Any]:
    """The SAM settings (rho, adaptive, variant) an arm trains with, from the recipe's own."""
    own_rho = recipe_sam.rho or (0.5 if recipe_sam.adaptive else 0.05)
    if arm == BASELINE:
        return {"rho": 0.0, "adaptive": False, "variant": "sam"}
    if arm == "asam":
        return {
            "rho": recipe_sam.rho if recipe_sam.adaptive and recipe_sam.rho > 0 else 0.5,
            "adaptive": True,
            "variant": "sam",
        }
    if arm == RECIPE_ARM:
        return {"rho": own_rho, "adaptive": recipe_sam.adaptive, "variant": recipe_sam.variant}
    return {"rho": own_rho, "adaptive": recipe_sam.adaptive, "variant": "sam" if arm == "sam" else arm}


def _for_variant(raw: dict[str, Any], variant: str) -> dict[str, Any]:
    """The raw recipe without the sam settings of the variants other than `variant`."""
    sam = raw.get("sam")
    if not isinstance(sam, dict):
        return raw
    return {**raw, "sam": settings_for_variant(sam, variant)}


def _raw_recipe(recipe: Recipe | dict[str, Any] | str | Path | None) -> tuple[dict[str, Any], str]:
    """The recipe as a raw mapping (a file is read, not yet validated) and where it came from."""
    if isinstance(recipe, Recipe):
        return yaml.safe_load(recipe.to_yaml()), "the recipe given"
    if isinstance(recipe, dict):
        return dict(recipe), "the recipe given"
    if recipe is None:
        return {}, "the command line"
    path = resolve_recipe_path(str(recipe))
    raw = read_recipe_file(path)
    if not raw.get("name") and path.parent not in recipe_dirs():
        raw = {**raw, "name": path.stem}  # as load_recipe names it
    return raw, str(path)


@dataclass
class Plan:
    """A comparison before it runs: where it goes, its runs (seed by seed), and where the recipe came from."""

    output_dir: Path
    runs: list[ArmRun]
    source: str


def plan_runs(
    recipe: Recipe | dict[str, Any] | str | Path | None,
    overrides: Sequence[str] = (),
    arms: str | Sequence[str] = DEFAULT_ARMS,
    seeds: int = DEFAULT_SEEDS,
    output_dir: Path | None = None,
) -> Plan:
    """The comparison's directory and its runs, seed by seed (each seed's arms together), all validated."""
    arm_specs, problems = read_arms(arms)
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1 (got {seeds})")
    raw, source = _raw_recipe(recipe)
    override_map, override_problems = parse_overrides(list(overrides))
    if override_problems:
        raise RecipeError(override_problems, source)
    merged = deep_merge(raw, override_map)
    if isinstance(merged.get("hub"), dict):  # the arms are not pushed anywhere
        merged["hub"] = {k: v for k, v in merged["hub"].items() if k != "repo_id"}
    # The recipe as it stands, without settings of variants other than its own (they belong to one arm each).
    own = merged.get("sam", {}).get("variant", "sam") if isinstance(merged.get("sam"), dict) else "sam"
    base = build_recipe(_for_variant(merged, str(own)), source=source)
    out = Path(output_dir) if output_dir else Path("runs") / f"{base.run_name()}-compare"
    arm_recipes: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for arm in arm_specs:  # every arm's settings checked before any problem is raised
        sam = {**arm_sam(arm.kind, base.sam), **arm.values()}
        flags = {f"sam.{k}": v for k, v in sam.items()}
        try:
            build_recipe(_for_variant(merged, sam["variant"]), flags=flags, source=source)
        except RecipeError as e:
            problems += [f"arm '{arm.name}': {p.removeprefix('sam.').removeprefix('sam: ')}" for p in e.problems]
        arm_recipes[arm.name] = (sam, flags)
    if problems:
        raise RecipeError(
            problems,
            "--arms",
            "Arms look like --arms adamw,sam,sam:rho=0.02,schedule=lr,start=0.1 "
            "(keys: the recipe's sam section; see samtune compare --help).",
        )
    runs = []
    for seed in range(base.training.seed, base.training.seed + seeds):
        for arm in arm_specs:
            sam, flags = arm_recipes[arm.name]
            flags = {**flags, "training.seed": seed, "output.dir": str(out / arm.folder / f"seed-{seed}")}
            runs.append(
                ArmRun(arm.name, seed, build_recipe(_for_variant(merged, sam["variant"]), flags=flags, source=source))
            )
    return Plan(out, runs, source)


def check_compare_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty output directory unless replacing (--overwrite) or continuing (--resume) a comparison."""
    if overwrite and resume:
        raise UsageError(
            "--overwrite and --resume contradict each other", "Continue a comparison, or replace it: not both."
        )
    if path.exists() and not path.is_dir():
        raise UsageError(f"output directory {path} is a file", "Choose another --output-dir.")
    if not _holds_files(path):
        return
    if not (overwrite or resume):
        raise UsageError(
            f"output directory {path} exists and is not empty",
            "Pass --resume to continue it (finished runs are kept), --overwrite to replace it, "
            "or choose another --output-dir.",
        )
    if not (path / COMPARE_MARK).is_file():
        flag = "--overwrite" if overwrite else "--resume"
        raise UsageError(
            f"output directory {path} is not a samtune comparison, so {flag} will not use it",
            "Choose an empty or new --output-dir.",
        )


def _holds_files(path: Path) -> bool:
    """Whether a folder holds any file but a lock or the comparison's mark (empty folders do not count)."""
    return path.is_dir() and any(p.name not in (LOCK_FILE, COMPARE_MARK) and not p.is_dir() for p in path.rglob("*"))


def _tidy_if_empty(out: Path) -> None:
    """After a failure before any run wrote a file: no mark, no empty folders, so the same command works again."""
    if _holds_files(out):
        return
    (out / COMPARE_MARK).unlink(missing_ok=True)
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _saved_differences(run: ArmRun) -> list[str]:
    """'key: saved -> now' for every setting where the run directory's config.yaml differs from the run's recipe."""
    saved = load_yaml((run.run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(run.recipe.model_copy(update={"name": run.recipe.run_name()}).to_yaml())

    def walk(a: Any, b: Any, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)]
        return [] if a == b else [f"{key}: {a!r} -> {b!r}"]

    return [d for d in walk(saved, now, "") if not d.startswith(("hub.", "output.", "description:"))]


def _run_one(
    run: ArmRun,
    index: int,
    total: int,
    resume: bool,
    callbacks: list[Any] | None,
    notify: Notify,
    again: str,
    on_accepted: Callable[[], None] | None = None,
) -> None:
    """Train one arm on one seed, or keep it if it finished earlier (resume); errors name the arm and seed.

    `on_accepted` is called once the run's inputs are accepted, before it writes anything (see `runner.train`).
    """
    run_dir = run.run_dir
    if resume and (run_dir / CONFIG_FILE).is_file():
        changed = _saved_differences(run)
        if changed:
            raise UsageError(
                f"{run_dir} was trained with other settings than this comparison asks for: {'; '.join(changed[:5])}",
                "Continue with the same recipe and overrides, or compare into a new --output-dir (or --overwrite).",
            )
    if (run_dir / METRICS_FILE).is_file():
        notify(f"[{index}/{total}] {run.label}: finished earlier, kept ({run_dir})")
        return
    checkpoint = last_complete_checkpoint(run_dir) if resume else None
    started = bool(contents(run_dir))
    notify(f"[{index}/{total}] {run.label}{' (continued from its checkpoint)' if checkpoint else ''} -> {run_dir}")
    done = f"{index - 1} run{'s' if index != 2 else ''} finished before it"
    kept = f"{done} and {'are' if index != 2 else 'is'} kept; continue the comparison with:\n  {again}"
    try:
        runner.train(  # (looked up on the module: tests replace it)
            run.recipe,
            overwrite=started and not checkpoint,
            resume="auto" if checkpoint else None,
            callbacks=callbacks,
            resume_command=again,
            notify=notify,
            on_accepted=on_accepted,
        )
    except Interrupted as e:
        hint = f"{done}. Continue the comparison (and this run) with:\n  {again}"
        raise Interrupted(f"the comparison stopped during {run.label}: {e.message}", hint, e.exit_code) from e
    except KeyboardInterrupt as e:
        hint = f"{done}. Continue the comparison with:\n  {again}"
        raise Interrupted(f"the comparison stopped during {run.label}", hint) from e
    except SamtuneError as e:
        e.message = f"{run.label}: {e.message}"
        if index > 1:
            e.hint = (f"{e.hint}\n" if e.hint else "") + kept
        raise
    except Exception as e:  # an unexpected failure, still named by its arm and seed
        first = (str(e).strip().splitlines() or [""])[0]
        hint = "Run again with --debug to see the traceback." + (f"\n{kept[0].upper()}{kept[1:]}" if index > 1 else "")
        raise TrainingError(f"{run.label} failed: {type(e).__name__}: {first}", hint) from e


def compare(
    recipe: Recipe | dict[str, Any] | str | Path | None,
    overrides: Sequence[str] = (),
    *,
    arms: str | Sequence[str] = DEFAULT_ARMS,
    seeds: int = DEFAULT_SEEDS,
    output_dir: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[Any] | None = None,
    notify: Notify = print,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Train the baseline and every arm on `seeds` seeds, then compare them; the comparison.json content.

    `recipe` is a YAML path, a built-in name, a raw mapping or a Recipe; `overrides` are KEY=VALUE
    strings for every arm. Raises UsageError before training if an arm, the recipe or the output
    directory is wrong; a failed run raises its own error, named by its arm and seed.
    """
    plan = plan_runs(recipe, overrides, arms, seeds, output_dir)
    out, runs = plan.output_dir, plan.runs
    check_compare_dir(out, overwrite, resume)
    again = resume_command or "samtune.analysis.compare.compare(..., resume=True)"
    started = time.perf_counter()
    with RunLock(out):
        (out / COMPARE_MARK).write_text("written by samtune compare; --overwrite may replace this folder\n")
        # --overwrite: the previous comparison goes once the first run has accepted its data and model, not before
        # (a refused input leaves it as it was); that run's own folder is replaced by the run itself.
        first = runs[0].run_dir
        replace = (lambda: clear_output_dir(out, keep=first)) if overwrite else None
        try:
            for index, run in enumerate(runs, 1):
                _run_one(run, index, len(runs), resume, callbacks, notify, again, replace if index == 1 else None)
        finally:
            _tidy_if_empty(out)
        settings = {
            "recipe": runs[0].recipe.run_name(),
            "recipe_source": plan.source,
            "overrides": list(overrides),
            "output_dir": str(out),
            "arm_descriptions": {a: describe_arm(a) for a in dict.fromkeys(r.arm for r in runs)},
        }
        report = build_report([RunRef(r.arm, r.seed, r.run_dir) for r in runs], settings)
        for arm in report["arms"]:  # every SAM setting the arm trained with, from its recipe
            first = next(r for r in runs if r.arm == arm)
            report["arms"][arm]["sam"] = first.recipe.sam.model_dump(mode="json")
        report["ranking"] = rank_arms(report, _ranking_metric(runs[0]))
        report["settings"]["wall_time"] = time.perf_counter() - started
        curves = {arm: [read_curves(r.run_dir) for r in runs if r.arm == arm] for arm in report["arms"]}
        plot_learning_curves(curves, out / CURVES_FILE)
        write_json_atomic(out / COMPARISON_FILE, json_safe(report))
    return report
