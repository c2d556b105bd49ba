"""`samtune compare`: the baseline and SAM arms of one recipe, trained on the same seeds, compared.

Every arm x seed is an ordinary run (`samtune.runner.train`) in `<output>/<arm>/seed-<n>/`, kept
after the comparison. Runs with the same seed see the same data in the same order and start from
the same weights: the data order comes from the seed alone (accelerate's seedable sampler), and
SAM's extra passes draw no numbers from it. So each seed pairs an arm with the baseline.

The arms (`--arms`), each the recipe (with the KEY=VALUE overrides) plus its own SAM settings:

    adamw            the base optimizer alone (sam.rho=0), whatever training.optimizer is: the baseline,
                     always trained
    sam              exact SAM with the recipe's rho and adaptive flag (rho 0.05, or 0.5 if adaptive,
                     where the recipe has rho 0)
    asam             ASAM (sam.adaptive=true): the recipe's rho if the recipe is adaptive already, else 0.5
                     (Kwon et al. 2021 use 0.5-2.0; SAM's usual 0.05 barely moves an adaptive climb)
    every_k, looksam, ascent_fraction, rst
                     the cheaper variant with the `sam` arm's rho and adaptive flag, and the recipe's
                     settings for that variant (sam.every_k, sam.looksam_k, ...)

A variant's own settings given as overrides reach only that variant's arm, so
`sam.looksam_k=3 --arms adamw,sam,looksam` is fine. The recipe's output.dir is not used.

After the runs, every number is read back from the runs' own metrics.json and trainer_state.json
files, and written to `comparison.json` and `learning_curves.png` in the output directory; see
`samtune.analysis.paired` for the statistics. `resume=True` keeps every finished run (metrics.json
written), continues an interrupted one from its checkpoint, and trains the rest: it is also how
arms or seeds are added to an existing comparison.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from samtune.analysis.comparison import BASELINE, COMPARISON_FILE, CURVES_FILE, RunRef, build_report, json_safe
from samtune.analysis.comparison import plot_learning_curves, read_curves
from samtune.errors import Interrupted, RecipeError, SamtuneError, TrainingError, UsageError
from samtune.recipe import Recipe, SAMSection, build_recipe, deep_merge, parse_overrides, settings_for_variant

ARMS: dict[str, str] = {
    "adamw": "the base optimizer alone (sam.rho=0)",
    "sam": "exact SAM, the recipe's rho and adaptive flag",
    "asam": "ASAM (sam.adaptive=true), rho 0.5 unless the recipe is adaptive",
    "every_k": "SAM on one step in sam.every_k",
    "looksam": "LookSAM: exact SAM every sam.looksam_k steps",
    "ascent_fraction": "the climb on sam.ascent_fraction of each batch",
    "rst": "SAM on a step with probability sam.rst_probability",
}
DEFAULT_ARMS = ("adamw", "sam")
DEFAULT_SEEDS = 3
COMPARE_MARK = ".samtune-compare"  # what --overwrite may delete
Notify = Callable[[str], None]


@dataclass
class ArmRun:
    """One run of the comparison: an arm on a seed, its recipe and its run directory."""

    arm: str
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


def parse_arms(spec: str | Sequence[str]) -> list[str]:
    """Arm names from 'adamw,sam' (or a list), in order, without repeats; the baseline first if missing."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    arms = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        close = [m for u in unknown for m in difflib.get_close_matches(u, list(ARMS), n=1)]
        plural = "s" if len(unknown) > 1 else ""
        what = f"unknown arm{plural} {', '.join(repr(u) for u in unknown)}" if unknown else "no arms"
        raise UsageError(
            f"{what}: the arms are {', '.join(ARMS)}",
            (f"Did you mean '{close[0]}'? " if close else "") + "Give them comma-separated: --arms adamw,sam,asam.",
        )
    return arms if BASELINE in arms else [BASELINE, *arms]


def arm_sam(arm: str, recipe_sam: SAMSection) -> dict[str, Any]:
    """The SAM settings (rho, adaptive, variant) an arm trains with, from the recipe's own."""
    own_rho = recipe_sam.rho or (0.5 if recipe_sam.adaptive else 0.05)
    if arm == BASELINE:
        return {"rho": 0.0, "adaptive": False, "variant": "sam"}
    if arm == "asam":
        return {"rho": recipe_sam.rho if recipe_sam.adaptive and recipe_sam.rho > 0 else 0.5, "adaptive": True,
                "variant": "sam"}  # fmt: skip
    return {"rho": own_rho, "adaptive": recipe_sam.adaptive, "variant": "sam" if arm == "sam" else arm}


def _for_variant(raw: dict[str, Any], variant: str) -> dict[str, Any]:
    """The raw recipe without the sam settings of the variants other than `variant`."""
    sam = raw.get("sam")
    if not isinstance(sam, dict):
        return raw
    return {**raw, "sam": settings_for_variant(sam, variant)}


def _raw_recipe(recipe: Recipe | dict[str, Any] | str | Path | None) -> tuple[dict[str, Any], str]:
    """The recipe as a raw mapping (a file is read, not yet validated) and where it came from."""
    from samtune.recipe import read_recipe_file, recipe_dirs, resolve_recipe_path

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
    arm_names = parse_arms(arms)
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1 (got {seeds})")
    raw, source = _raw_recipe(recipe)
    override_map, problems = parse_overrides(list(overrides))
    if problems:
        raise RecipeError(problems, source)
    merged = deep_merge(raw, override_map)
    if isinstance(merged.get("hub"), dict):  # the arms are not pushed anywhere
        merged["hub"] = {k: v for k, v in merged["hub"].items() if k != "repo_id"}
    # The recipe as it stands, without settings of variants other than its own (they belong to one arm each).
    own = merged.get("sam", {}).get("variant", "sam") if isinstance(merged.get("sam"), dict) else "sam"
    base = build_recipe(_for_variant(merged, str(own)), source=source)
    out = Path(output_dir) if output_dir else Path("runs") / f"{base.run_name()}-compare"
    runs = []
    for seed in range(base.training.seed, base.training.seed + seeds):
        for arm in arm_names:
            sam = arm_sam(arm, base.sam)
            flags = {f"sam.{k}": v for k, v in sam.items()}
            flags.update({"training.seed": seed, "output.dir": str(out / arm / f"seed-{seed}")})
            runs.append(
                ArmRun(arm, seed, build_recipe(_for_variant(merged, sam["variant"]), flags=flags, source=source))
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
    from samtune.rundir import LOCK_FILE

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
    from samtune.rundir import CONFIG_FILE

    saved = yaml.safe_load((run.run_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(run.recipe.model_copy(update={"name": run.recipe.run_name()}).to_yaml())

    def walk(a: Any, b: Any, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)]
        return [] if a == b else [f"{key}: {a!r} -> {b!r}"]

    return [d for d in walk(saved, now, "") if not d.startswith(("hub.", "output.", "description:"))]


def _run_one(run: ArmRun, index: int, total: int, resume: bool, callbacks: list[Any] | None, notify: Notify,
             again: str) -> None:  # fmt: skip
    """Train one arm on one seed, or keep it if it finished earlier (resume); errors name the arm and seed."""
    from samtune.rundir import CONFIG_FILE, METRICS_FILE, contents, last_complete_checkpoint
    from samtune.runner import train

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
        train(run.recipe, overwrite=started and not checkpoint, resume="auto" if checkpoint else None,
              callbacks=callbacks, resume_command=again, notify=notify)  # fmt: skip
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
    from samtune.files import write_json_atomic
    from samtune.rundir import RunLock, clear_output_dir

    plan = plan_runs(recipe, overrides, arms, seeds, output_dir)
    out, runs = plan.output_dir, plan.runs
    check_compare_dir(out, overwrite, resume)
    again = resume_command or "samtune.analysis.compare.compare(..., resume=True)"
    started = time.perf_counter()
    with RunLock(out):
        if overwrite:
            clear_output_dir(out)
        (out / COMPARE_MARK).write_text("written by samtune compare; --overwrite may replace this folder\n")
        try:
            for index, run in enumerate(runs, 1):
                _run_one(run, index, len(runs), resume, callbacks, notify, again)
        finally:
            _tidy_if_empty(out)
        settings = {
            "recipe": runs[0].recipe.run_name(),
            "recipe_source": plan.source,
            "overrides": list(overrides),
            "output_dir": str(out),
            "arm_descriptions": {a: ARMS[a] for a in dict.fromkeys(r.arm for r in runs)},
        }
        report = build_report([RunRef(r.arm, r.seed, r.run_dir) for r in runs], settings)
        report["settings"]["wall_time"] = time.perf_counter() - started
        curves = {arm: [read_curves(r.run_dir) for r in runs if r.arm == arm] for arm in report["arms"]}
        plot_learning_curves(curves, out / CURVES_FILE)
        write_json_atomic(out / COMPARISON_FILE, json_safe(report))
    return report
