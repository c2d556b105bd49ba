"""Cheaper SAM: the variants, one module each, behind one small protocol, and the registry that names them.

Exact SAM takes two forward/backward passes per step, about twice plain training's cost. A variant
trades some of SAM's effect for less of the second pass: on fewer steps, on part of the batch, or by
reusing a direction it recorded. Each lives in a module of this package (its docstring gives the paper
and the trade) as a subclass of `Variant`, registered by name with `register_variant`. The Trainer
(samtune.trainer) calls a variant's hooks and never asks which variant it is:

    climbs_on(step)                     whether optimizer step `step` (0-based) takes SAM's two passes
    climbs_given(sq_norm, progress)     with `decides_on_gradient`: the same, decided after the step's first pass
    ascent_inputs(inputs)               the part of a micro-batch the ascent sees (None: all of it)
    attach(params)                      training starts: the parameters that climb (sharded under FSDP2)
    after_ascent(grads, weight)         on a SAM step, each micro-batch's ascent gradient g at w
    after_sam_step(params, complete, processes)   a SAM step's last micro-batch: `.grad` holds the SAM gradient
    after_plain_step(params, processes)           a plain step's last micro-batch: `.grad` holds the plain one
    abandon_step()                      the step failed part-way: drop what it gathered
    state_dict() / load_state_dict()    its own state across steps, for checkpoints (sharded tensors: this
                                        process's shards)

plus `describe()`, `extra_pass_share` and `climbs_from_whole_batch` for the model card. Every decision is a
function of the optimizer step (and the seed), never of the micro-batch or the process: all micro-batches of an
accumulated step and all processes agree, and a resumed run makes the same choices. A variant that
`decides_on_gradient` (AE-SAM's trigger) decides instead on ||g||^2 of the step's whole gradient at w,
which every process holds alike once the step's plain pass has reduced it; its state holds what the
decision remembers, so a resumed run decides alike too.

A variant's settings are fields of `samtune.optim.settings.SAMSettings` (SAMArguments, the recipe's
`sam` section and the card derive from them, with their defaults and bounds); its class lists them in
`settings` and finds them as attributes (`self.every_k`). A variant with no new setting is one module,
anywhere (tests/optim/test_variant_registry.py registers one from a test file)::

    @register_variant
    class OddSteps(Variant):  # SAM on odd optimizer steps only
        name = "odd_steps"
        def climbs_on(self, step): return step % 2 == 1

and `sam.variant=odd_steps` (recipe), `--variant odd_steps` or `SAMArguments(sam_variant="odd_steps")`
picks it once its module is imported. The modules here import torch only where they touch tensors, so
that listing the variants (the command line's help, a recipe's validation) stays free of it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from samtune.optim.settings import default_of, sam_setting_problems, setting_specs

if TYPE_CHECKING:
    import torch

#: The paper's exact SAM step (the variant `sam`): the one the cheaper variants are measured against.
EXACT = "sam"

__all__ = ["Processes", "Variant", "make_variant", "register_variant", "variant_class", "variant_names", "variant_of"]


@dataclass(frozen=True)
class Processes:
    """What a variant may ask of the data-parallel processes; the Trainer supplies it."""

    mean: Callable[[list[torch.Tensor]], list[torch.Tensor]]  # each tensor's mean over the processes (one all-reduce)
    ascent_averaged: bool = False  # the ascent gradients are already the processes' mean (FSDP2's reduce-scatter)
    device: Any = "cpu"  # where a flag for `mean` lives (the process's accelerator)


class Variant:
    """A SAM step: which optimizer steps climb, what the ascent sees, and hooks around the step.

    This base class is exact SAM (every step climbs, on the whole micro-batch, with no state); a
    variant overrides what it changes. Subclasses set `name`, `summary` and `settings`, and are
    registered with `register_variant`.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""  # one line: the command line's help, compare's arms
    settings: ClassVar[tuple[str, ...]] = ()  # its own SAMSettings fields, e.g. ("every_k",)

    def __init__(self, *, seed: int = 0, **values: Any) -> None:
        """Its own settings' values (the others: their defaults in SAMSettings), and the run's seed."""
        stray = sorted(set(values) - set(self.settings))
        if stray:
            raise TypeError(f"{', '.join(stray)} is not a setting of the SAM variant {self.name!r}")
        own = {setting: values[setting] if setting in values else default_of(setting) for setting in self.settings}
        if problems := sam_setting_problems(own):  # the bounds SAMSettings declares
            raise ValueError("; ".join(problems))
        for setting, value in own.items():
            setattr(self, setting, value)
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.settings)})"

    @classmethod
    def from_settings(cls, settings: Any, seed: int = 0) -> Variant:
        """This variant with its own settings' values, read from `settings` (SAMSettings, SAMArguments)."""
        return cls(seed=seed, **{k: getattr(settings, k) for k in cls.settings})

    def climbs_on(self, step: int) -> bool:
        """Whether optimizer step `step` takes SAM's two passes. `step` is the run's global optimizer step (0-based,
        counted from the run's first step, not the SAM window's); the Trainer asks only inside the window."""
        return True

    def climb_rows(self, batch_size: int) -> int:
        """How many examples of a micro-batch of `batch_size` the climb's gradient comes from (read by the model
        card and by the benchmarks' pass count)."""
        return batch_size

    decides_on_gradient: ClassVar[bool] = False  # True: `climbs_given` decides, after the step's plain pass
    # True: a climb's e(w) comes from the gradient of the step's whole effective batch (every micro-batch and process),
    # one climb per step; False: from each micro-batch (m-sharpness). The model card reads it.
    climbs_from_whole_batch: ClassVar[bool] = False

    def climbs_given(self, sq_norm: float, progress: float) -> bool:
        """With `decides_on_gradient`: whether this optimizer step takes SAM's second pass, given ||g||^2 of the
        step's gradient at w (the whole effective batch's, averaged over the processes and unscaled; not finite
        where fp16 overflowed) and `progress`, the share of the SAM window done (0 at its first step). Called once
        a step, with the same values on every process; the step's e(w) then comes from that gradient."""
        return True

    def ascent_inputs(self, inputs: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The examples of a micro-batch the ascent takes where it takes fewer than all (None: all of them).

        With part of the micro-batch, BatchNorm's running statistics come from the descent, and the logged
        sharpness leaves the step out (its ascent loss is the part's).
        """
        return None

    def attach(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Training starts (after a resume: with `load_state_dict`'s state): the parameters that climb, final
        (FSDP2's sharded ones)."""

    def after_ascent(self, grads: Sequence[torch.Tensor | None], weight: float) -> None:
        """A SAM step's micro-batch: the ascent gradient g at w (one per climbing parameter, None where it has
        none), and `weight`, what the step's loss normalisation multiplies this micro-batch's gradient by.
        Read-only: e(w) is computed from these tensors in place next."""

    def after_sam_step(self, params: Sequence[torch.nn.Parameter], complete: bool, processes: Processes) -> None:
        """A SAM step's last micro-batch is done: `.grad` holds the SAM gradient (before clipping). `complete`:
        every micro-batch of the step climbed on this process."""

    def after_plain_step(self, params: Sequence[torch.nn.Parameter], processes: Processes) -> None:
        """A plain step's (`climbs_on` False) last micro-batch is done: `.grad` holds the plain gradient, before
        clipping; the variant may change it in place."""

    def abandon_step(self) -> None:
        """The optimizer step failed part-way (the weights are back at w): drop what it gathered."""

    def state_dict(self) -> dict[str, Any]:
        """Its own state across steps (empty: none); sharded tensors as this process's shards."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what `state_dict` gave (empty: start afresh)."""

    @property
    def extra_pass_share(self) -> float:
        """The expected share of a second pass per step, over a plain step: 1.0 for SAM."""
        return 1.0

    def describe(self) -> str:
        """A short description with its settings' values, e.g. 'SAM every 2 steps'."""
        return self.summary or self.name


_REGISTRY: dict[str, type[Variant]] = {}
_LOADING = False  # set once the built-in modules start loading (they register themselves)


def _load_builtins() -> None:
    """Import every public module of this package once: each registers its variant."""
    global _LOADING
    if _LOADING:
        return
    _LOADING = True
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def register_variant(cls: type[Variant]) -> type[Variant]:
    """Class decorator: register `cls` as the SAM variant `cls.name` (a recipe's sam.variant)."""
    _load_builtins()
    name = getattr(cls, "name", None)
    if not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"{cls.__qualname__}.name must be a Python identifier (got {name!r})")
    earlier = _REGISTRY.get(name)
    if earlier is not None and (earlier.__module__, earlier.__qualname__) != (cls.__module__, cls.__qualname__):
        where = f"{earlier.__module__}.{earlier.__qualname__}"
        raise ValueError(f"a SAM variant named {name!r} is registered already ({where})")
    declared = {s.name for s in setting_specs()}
    owners = {s: other for other, c in _REGISTRY.items() if other != name for s in c.settings}
    for setting in cls.settings:
        if setting not in declared:
            raise ValueError(
                f"variant {name!r}: {setting!r} is not a SAM setting (declare it as a field of "
                "samtune.optim.settings.SAMSettings)"
            )
        if setting in owners:
            raise ValueError(f"variant {name!r}: the setting {setting!r} belongs to the variant {owners[setting]!r}")
    _REGISTRY[name] = cls
    return cls


def variant_names() -> tuple[str, ...]:
    """Every registered variant: exact SAM first, then the others (the cheaper ones, the default among them) in
    the order they registered."""
    _load_builtins()
    return (EXACT, *(n for n in _REGISTRY if n != EXACT))


def variant_class(name: str) -> type[Variant]:
    """The variant registered as `name` (ValueError naming the known ones if none is)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown SAM variant {name!r}: choose one of {', '.join(variant_names())}")
    return _REGISTRY[name]


def make_variant(settings: Any, seed: int = 0) -> Variant:
    """The variant that SAM settings (SAMSettings, SAMArguments) select, with its own settings' values."""
    return variant_class(settings.sam_variant).from_settings(settings, seed=seed)


def variant_of(setting: str) -> str | None:
    """The variant a SAM setting (its field name) belongs to; None if it belongs to every variant."""
    _load_builtins()
    return next((name for name, cls in _REGISTRY.items() if setting in cls.settings), None)
