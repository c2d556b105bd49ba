"""SAM's settings, defined once: name, default, bound, help, whether it defines a run (and, read from the variants'
modules, the variant each belongs to).

`SAMSettings` is the single definition. Everything else is derived from it:

- `samtune.SAMArguments` (the Trainer's arguments) inherits its fields, help texts included;
- the recipe's `sam` section (`samtune.recipe`) is built from `setting_specs()`: the same
  defaults, the same bounds (as pydantic constraints), the same help;
- the variants (samtune.optim.variants) take their defaults from here, and each variant's module
  says which of these settings are its own (`Variant.settings`; `SettingSpec.variant` reads it);
- the run-change check on resume and the model card's table list `setting_specs()`.

A new setting is one `setting(...)` field below, plus its use in the step (a variant's: in its
module). Pure Python: nothing here imports transformers (or even torch).
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from samtune.optim.selection import spec_problem

ScheduleName = Literal["constant", "lr"]


def setting(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = False,
    check: Callable[[Any], str | None] | None = None,
    recipe_key: str | None = None,
    defines_run: bool = True,
    why: str = "",
) -> Any:
    """One SAM setting: a dataclass field whose metadata carries its bound, help and role.

    `check`: returns the problem with a value (None: none), for values no bound describes. `recipe_key`:
    its key in the recipe's `sam` section when it differs from the field name. `defines_run`: a
    resume that changes it trains another run (samtune warns). `why`: appended to the error
    message of a value out of bounds.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    # transformers' HfArgumentParser hands a field's whole metadata to argparse, so only `help`
    # can live there; the rest is kept beside it, keyed by the field object (which dataclasses
    # and their subclasses share).
    declared = field(default=default, metadata={"help": help})
    _DECLARED[id(declared)] = dict(
        bounds=bounds, finite=finite, check=check, recipe_key=recipe_key, defines_run=defines_run, why=why
    )
    return declared


_DECLARED: dict[int, dict[str, Any]] = {}


def _registered_variant(name: Any) -> str | None:
    """None if `name` is a registered SAM variant (samtune.optim.variants), else the problem."""
    from samtune.optim.variants import variant_names  # here: samtune.optim.variants imports this module

    names = variant_names()
    return None if name in names else f"unknown SAM variant: choose one of {', '.join(names)}"


@dataclass
class SAMSettings:
    """Sharpness-Aware Minimization's settings (the paper's, ASAM's and the cheaper variants')."""

    rho: float = setting(
        0.1,
        "Radius of the neighbourhood SAM climbs in (0: no climb, one pass a step). rho=0 is the stock "
        "Trainer to the bit at gradient_accumulation_steps=1, and for any model whose loss honours "
        "num_items_in_batch; with accumulation, classification heads that accept but ignore it get their loss "
        "divided by the accumulation steps (the stock update is N times too large for them). "
        "The default, 0.1, goes with the default climb on a quarter of each batch (sam_variant=ascent_fraction, "
        "chosen on samtune's cost-gain frontier, benchmarks/frontier.py); 0.05 is the paper's value for exact SAM; "
        "ASAM's scale-invariant climb wants larger values (0.5-2.0).",
        ge=0,
        finite=True,
        why="it is the radius SAM climbs in; use 0.1 for samtune's default climb, 0.05 for the paper's SAM, "
        "0.5-2.0 for ASAM, or 0 to train without SAM.",
    )
    adaptive: bool = setting(False, "ASAM (Kwon et al., 2021): scale the climb per weight by T = |w| + asam_eta.")
    asam_eta: float = setting(
        0.01,
        "ASAM only: eta in ASAM's per-weight scale T = |w| + eta (e(w) = rho T^2 g / ||T g||). The default, 0.01, "
        "is the paper's and its official code's: a weight at exactly 0 (LoRA's B at init, a new head's bias) then "
        "climbs too, and the rho values ASAM is known for (0.5-2.0) were tuned with it. 0 is davda54/sam's form "
        "(T = |w|), in which a weight at 0 never leaves w in the climb.",
        ge=0,
        finite=True,
        why="T = |w| + eta scales the climb per weight; 0.01 is the paper's, 0 davda54/sam's form.",
    )
    sam_variant: str = setting(
        "ascent_fraction",
        "Which SAM step: 'ascent_fraction' (the default: every step, the climb's gradient from the first quarter "
        "of each micro-batch, about 1.22x a plain step's passes where 'sam' takes 2x; chosen on "
        "samtune's cost-gain frontier, benchmarks/frontier.py), 'sam' (the paper's exact step: the whole batch "
        "climbs, 2x), or another variant registered in samtune.optim.variants (one module each: SAM on some steps "
        "only, LookSAM's reused direction, AE-SAM's trigger; `samtune train --help` lists them). A variant's own "
        "settings follow.",
        recipe_key="variant",
        check=_registered_variant,
    )
    every_k: int = setting(
        2, "every_k: SAM on optimizer steps where step % every_k == 0.", ge=1, why="SAM runs on one step in k."
    )
    looksam_k: int = setting(5, "looksam: an exact SAM step every looksam_k steps.", ge=1)
    looksam_alpha: float = setting(0.7, "looksam: weight of the reused sharpness direction g_v.", ge=0, finite=True)
    ascent_fraction: float = setting(
        0.25, "ascent_fraction: share of each micro-batch the ascent gradient uses.", gt=0, le=1
    )
    rst_probability: float = setting(0.5, "rst: probability that a step is a SAM step.", ge=0, le=1)
    aesam_decay: float = setting(
        0.9,
        "aesam: decay delta of the running mean and variance of ||g||^2 (the paper's 0.9).",
        ge=0,
        lt=1,
        why="each step keeps delta of the running statistics and takes 1 - delta of the new ||g||^2.",
    )
    aesam_c_start: float = setting(
        1.0,
        "aesam: threshold c at the SAM window's first step: SAM where ||g||^2 >= mean + c * std (the paper's "
        "lambda2, 1: about 16% of steps climb if ||g||^2 is normal).",
        finite=True,
    )
    aesam_c_end: float = setting(
        -1.0,
        "aesam: threshold c at the window's end, reached linearly (the paper's lambda1, -1: about 84% climb).",
        finite=True,
    )
    params: str = setting(
        "all",
        "Which parameters climb: a preset (all, weights, norms, head, body; see samtune.optim.selection) or "
        "comma-separated patterns on parameter names, '!pattern' to leave some out (e.g. '!*.bias'). The others "
        "stay at w in the descent; ||g|| is taken over the climbing ones.",
    )
    schedule: ScheduleName = setting(
        "lr",
        "How the radius moves: 'lr' (default): rho_t = rho * lr_t / lr_0 (GSAM's rule, Zhuang et al. "
        "2022: the radius ramps up with the warmup and decays with the learning rate), lr_0 being the rate the "
        "optimizer's schedule started from (its first parameter group with a rate above 0 decides), or 'constant' "
        "(the paper's SAM). The default was chosen on samtune's pretrained fine-tune suite (benchmarks/finetune.py).",
    )
    start: float = setting(
        0.1,
        "Where SAM starts: a fraction of the optimizer steps (below 1: 0.1 = after the first 10%, the default) "
        "or a step number (from 1: SAM from that step on); plain steps, exactly the stock ones, before it. "
        "0 is the paper's SAM, from the first step; the default keeps SAM out of a 10% warmup, where it stalled "
        "fine-tunes of pretrained models (benchmarks/finetune.py).",
        ge=0,
        finite=True,
    )
    stop: float | None = setting(
        None,
        "Where SAM stops: a fraction of the optimizer steps (below 1) or the last SAM step's number (from 1); "
        "plain steps after it. None: to the end.",
        ge=0,
        finite=True,
    )

    def __post_init__(self) -> None:
        problems = sam_setting_problems({s.name: getattr(self, s.name) for s in setting_specs()})
        if problems:
            raise ValueError("; ".join(problems))
        parent = getattr(super(), "__post_init__", None)  # TrainingArguments', in SAMArguments
        if parent is not None:
            parent()


@dataclass(frozen=True)
class SettingSpec:
    """What `setting(...)` declared about one field of SAMSettings, in a form the other layers read."""

    name: str
    recipe_key: str
    type: Any
    default: Any
    help: str
    bounds: dict[str, float]
    finite: bool
    check: Callable[[Any], str | None] | None
    defines_run: bool
    why: str

    @property
    def variant(self) -> str | None:
        """The SAM variant this setting belongs to (None: every variant), as that variant's module says."""
        from samtune.optim.variants import variant_of  # here: samtune.optim.variants imports this module

        return variant_of(self.name)


@functools.cache
def setting_specs() -> tuple[SettingSpec, ...]:
    """Every SAM setting, in declaration order."""
    hints = typing.get_type_hints(SAMSettings)
    out = []
    for f in fields(SAMSettings):
        m = _DECLARED[id(f)]
        out.append(
            SettingSpec(
                name=f.name,
                recipe_key=m["recipe_key"] or f.name,
                type=hints[f.name],
                default=None if f.default is MISSING else f.default,
                help=f.metadata["help"],
                bounds=m["bounds"],
                finite=m["finite"],
                check=m["check"],
                defines_run=m["defines_run"],
                why=m["why"],
            )
        )
    return tuple(out)


def default_of(name: str) -> Any:
    """The default of one setting."""
    return next(s.default for s in setting_specs() if s.name == name)


_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _kind(spec: SettingSpec) -> str:
    return "a whole number" if spec.type is int else "a finite number" if spec.finite else "a number"


def sam_setting_problems(values: dict[str, Any]) -> list[str]:
    """Every problem with these values (by field name), each naming the setting, its bound and the value."""
    problems = []
    for spec in setting_specs():
        if spec.name not in values:
            continue
        value = values[spec.name]
        if spec.check is not None:
            if (problem := spec.check(value)) is not None:
                problems.append(f"{problem} (got {value!r})")
            continue
        if typing.get_origin(spec.type) is Literal:
            if value not in typing.get_args(spec.type):
                problems.append(f"{spec.name} must be one of {', '.join(typing.get_args(spec.type))} (got {value!r})")
            continue
        if value is None and type(None) in typing.get_args(spec.type):
            continue
        if spec.type not in (int, float, float | None):
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = numeric and (spec.type is not int or float(value).is_integer())
        ok = ok and (not spec.finite or math.isfinite(value)) and not (isinstance(value, float) and math.isnan(value))
        ok = ok and all(_holds(value, op, bound) for op, bound in spec.bounds.items())
        if not ok:
            bound = " and ".join(f"{_WORDS[op]} {b:g}" for op, b in spec.bounds.items())
            problems.append(
                f"{spec.name} must be {_kind(spec)}{' ' + bound if bound else ''} (got {value!r})"
                + (f": {spec.why}" if spec.why else "")
            )
    if isinstance(values.get("params"), str) and (problem := spec_problem(values["params"])):
        problems.append(problem)
    return problems + window_problems(values.get("start"), values.get("stop"))


def window_problems(start: Any, stop: Any) -> list[str]:
    """A step number is whole, and the window ends after it starts (where both are of one kind)."""
    problems = []
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, (int, float)) and value >= 1 and not float(value).is_integer():
            problems.append(f"{name} must be a fraction below 1 or a whole step number (got {value!r})")
    both_numbers = isinstance(start, (int, float)) and isinstance(stop, (int, float))
    if both_numbers and (start < 1) == (stop < 1) and stop <= start and not (start >= 1 and stop >= start):
        problems.append(f"stop ({stop!r}) must come after start ({start!r})")
    return problems


def sam_window(start: float, stop: float | None, total_steps: int) -> tuple[int, int]:
    """The 0-based optimizer steps [first, end) on which SAM runs, for a run of `total_steps` steps.

    A value below 1 is a fraction of the steps (start 0.1 of 188: from step index 19); one from 1 is
    a step number counted from 1 (start 19: from the 19th step; stop 100: through the 100th).
    """
    first = math.ceil(start * total_steps - 1e-9) if start < 1 else int(start) - 1
    end = total_steps if stop is None else (math.ceil(stop * total_steps - 1e-9) if stop < 1 else int(stop))
    return first, end


def empty_window_problem(start: float, stop: float | None, total_steps: int) -> str | None:
    """Why the SAM window holds no step of a run of `total_steps` optimizer steps (None if it holds one).

    `window_problems` compares start and stop only where both are of one kind; a fraction and a step
    number, or a start past the run's end, can only be compared once the run's length is known.
    """
    first, end = sam_window(start, stop, total_steps)
    if first < min(end, total_steps):
        return None
    starts = f"start={start:g} puts its first step at step {first + 1}"
    ends = (
        f"after the run's last, step {total_steps}" if first >= total_steps else f"stop={stop:g} its last at step {end}"
    )
    return (
        f"the SAM window holds no step of this {total_steps}-step run ({starts}, {ends}): SAM would never climb. "
        "Move start before stop and the run's end (sam.start / sam.stop in a recipe: a fraction of the steps below "
        "1, a step number from 1), or set rho=0 to train without SAM."
    )


def _holds(value: float, op: str, bound: float) -> bool:
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]


def variant_of(recipe_key: str) -> str | None:
    """The variant a setting (by its recipe key) belongs to; None if it belongs to every variant."""
    return next((s.variant for s in setting_specs() if s.recipe_key == recipe_key), None)


def settings_for_variant(sam: dict[str, Any], variant: str) -> dict[str, Any]:
    """A recipe `sam` mapping without the settings of the variants other than `variant` (they would not load)."""
    return {k: v for k, v in sam.items() if variant_of(k) in (None, variant)}
