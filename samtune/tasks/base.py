"""The task protocol and the registry.

A task is one object, registered under its name (what the recipe's `task:` takes), that answers everything
that differs between tasks: how it is recognised in a model and in data, its columns and label encoding,
its Auto class and head, tokenisation and collation, its metrics, what `samtune predict` adds and what the
model card says. The rest of samtune looks a task up (`get`) and asks it; it never tests a task's name.

A new task is a subclass of `Task` (or of a family's class) in a module of its own, and `register(instance)`.
Nothing heavy is imported here: recipes validate against the registry in milliseconds.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from samtune.errors import UsageError

AUTO = "auto"  # the recipe's task when the model and the data decide it


@dataclass(frozen=True)
class Metric:
    """A number a task's evaluations report (as `eval_<name>`): its name in words, and which way is better."""

    name: str
    title: str
    greater_is_better: bool


LOSS = Metric("loss", "loss", greater_is_better=False)  # every task reports it, last


@dataclass(frozen=True)
class PredictSettings:
    """What `samtune predict` tells `Task.predict_batch` for every batch of a run."""

    columns: dict[str, str]  # `Task.input_columns`: the columns of the rows that hold the model's inputs
    max_length: int  # the run's model.max_length
    generation: dict[str, Any]  # the generation settings given (`generates` tasks only)


def model_outputs(eval_pred: Any) -> Any:
    """The model's outputs (logits, or the regression value) in an EvalPrediction (the first, if it holds several)."""
    return eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions


class Task:
    """What differs between tasks. Subclass it per task family, override what differs, register an instance per name.

    Detection runs in two phases (`samtune.tasks.detection`), each in registration order: first the tasks that
    recognise a model by its architecture or data by the shape of its rows; then the tasks of the modality found,
    by the model's `problem_type` or the label column's values, a `fallback` task last.
    """

    # ---- what it is -----------------------------------------------------------------------------------
    metrics: ClassVar[tuple[Metric, ...]] = ()  # reported at each evaluation besides the loss; the first is the default
    problem: ClassVar[str] = ""  # what it predicts, in a word, for messages ("this is a regression run")
    problem_type: ClassVar[str | None] = None  # transformers' config.problem_type of a model fine-tuned for it
    fallback: ClassVar[bool] = False  # detected when no other task of its modality claims the model or the data
    drops_unlabelled_rows: ClassVar[bool] = True  # rows with no label are left out (and counted), not an error
    smooths_labels: ClassVar[bool] = False  # training.label_smoothing applies
    packs: ClassVar[bool] = False  # data.packing applies
    predicts: ClassVar[bool] = False  # `samtune predict` scores its examples
    generates: ClassVar[bool] = False  # `samtune predict` generates text (and takes generation settings)
    # What its final evaluation reports of where it errs, in words ("confusion matrix"); None: nothing. Its
    # `compute_metrics` is then a samtune.confusion.ErrorRecorder, whose `report` the run and `samtune eval` write.
    error_report: ClassVar[str | None] = None
    new_head: ClassVar[bool] = True  # the head is new: trained in full beside LoRA's adapters
    lora_task_type: ClassVar[str | None] = None  # peft's TaskType name
    preprocess_logits: ClassVar[Callable[[Any, Any], Any] | None] = None  # the Trainer's preprocess_logits_for_metrics
    pipeline_options: ClassVar[str] = ""  # the model card's pipeline arguments, after the model
    peft_auto_class: ClassVar[str] = "AutoPeftModelForSequenceClassification"  # the card's loader of text adapters

    def __init__(self, name: str, modality: str = "text") -> None:
        if modality not in ("text", "image"):
            raise ValueError(f"a task's modality is 'text' or 'image', not {modality!r}")
        self.name = name
        self.modality = modality

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.modality!r})"

    @property
    def pipeline_tag(self) -> str:
        """The Hub pipeline its models serve (regression and multi-label heads are classifiers too)."""
        return f"{self.modality}-classification"

    @property
    def head_name(self) -> str:
        """The head a model needs for it, in words."""
        return f"a {self.pipeline_tag}"

    @property
    def processor_name(self) -> str:
        return "image processor" if self.modality == "image" else "tokenizer"

    @property
    def uses_max_length(self) -> bool:
        """Whether model.max_length applies: text is cut to it (images are resized instead)."""
        return self.modality == "text"

    @property
    def remove_unused_columns(self) -> bool:
        """The Trainer's remove_unused_columns: images are transformed on the fly from their own columns."""
        return self.modality != "image"

    @property
    def card_example(self) -> str:
        """What the model card's example feeds the model."""
        return "image.jpg" if self.modality == "image" else "This film was a delight from start to finish."

    # ---- metrics --------------------------------------------------------------------------------------
    @property
    def default_metric(self) -> str:
        """The metric that chooses the best checkpoint when the recipe names none."""
        return self.metrics[0].name

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics its evaluations report, the loss last."""
        return (*(m.name for m in self.metrics), LOSS.name)

    def metric_problem(self, metric: str) -> str | None:
        """What is wrong with choosing checkpoints by `metric` (None: nothing)."""
        if metric in self.metric_names:
            return None
        return (
            f"training.metric_for_best_model is '{metric}', which a {self.name} run does not compute "
            f"(it reports {', '.join(self.metric_names)})"
        )

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        """The Trainer's `compute_metrics` (`labels`: the class or tag names; `threshold`: training.threshold)."""
        raise NotImplementedError

    # ---- detection ------------------------------------------------------------------------------------
    def claims_architecture(self, architectures: list[str]) -> bool:
        """Whether a model of these architectures does this task, whatever its modality."""
        return False

    def claims_problem_type(self, problem_type: str | None) -> bool:
        """Whether a model of this task's modality with this config.problem_type does this task."""
        return False

    def claims_rows(self, rows: Any, section: Any, model_task: Task | None) -> bool:
        """With task auto: whether the rows' shape alone says it is this task (`model_task`: the model's own)."""
        return False

    def claims_labels(self, rows: Any, label_column: str, model_task: Task | None) -> bool:
        """With task auto, after the columns were found: whether the label column's values make it this task."""
        return False

    # ---- data -----------------------------------------------------------------------------------------
    def columns(self, names: list[str], features: Any, section: Any, rows: Any = None) -> dict[str, Any]:
        """Which columns hold what: "label", "text", "pair", "image" (and "response", "picked") -> a column or None."""
        raise NotImplementedError

    def check_data(self, train: Any, cols: dict[str, Any], section: Any) -> None:
        """Refuse recipe keys or columns that do not fit the task, before any work."""
        if section.labels:
            raise UsageError(
                f"data.labels keeps some classes of a single-label column; this is a {self.problem} run",
                "Remove data.labels, or set task to a -classification task.",
            )

    def recipe_classes(self, section: Any) -> list[str] | None:
        """The class names the recipe gives, in their order (None: the train split's)."""
        return None

    def encode(self, splits: dict[str, Any], cols: dict[str, Any], names: list[str] | None = None) -> tuple[dict, list]:
        """Each split's labels as `labels`, encoded over `names` (default: the train split's); and the names."""
        raise NotImplementedError

    def prepared_data(self, raw: Any, section: Any, cols: dict[str, Any], seed: int, from_hub: bool) -> Any:
        """The splits to train and evaluate on (a samtune.data.PreparedData)."""
        from samtune.data import labelled_data  # (samtune.data imports this package)

        return labelled_data(self, raw, section, cols, seed, from_hub)

    def eval_examples(
        self, ds: Any, cols: dict[str, Any], names: list[str], split: str, dropped: Any
    ) -> tuple[Any, dict]:
        """The split `split` (`ds`) to evaluate a saved run on, its labels encoded over the run's `names`, its unusable
        rows left out and counted in `dropped` (a samtune.data.DroppedRows); and its input columns."""
        from samtune.data import drop_unusable_rows  # (samtune.data imports this package)

        keep = [c for c in (cols["label"], cols["text"], cols["pair"], cols["image"]) if c]
        rows = drop_unusable_rows({"eval": ds.select_columns(keep)}, cols, self, {"eval": split}, dropped)
        encoded, _ = self.encode(rows, cols, names=names)
        return encoded["eval"], {"text": cols["text"], "pair": cols["pair"], "image": cols["image"]}

    def saved_labels(self, config: Any) -> list[str]:
        """A trained model's labels, from its config."""
        return [config.id2label[i] for i in range(len(config.id2label))]

    def describe_targets(self, data: Any, packing: bool) -> tuple[str, str]:
        """What `samtune validate` shows of the targets: a row name and its value."""
        shown = ", ".join(data.labels[:10]) + (" ..." if len(data.labels) > 10 else "")
        return "labels", f"{len(data.labels)}: {shown}"

    # ---- model ----------------------------------------------------------------------------------------
    def load_processor(self, path: str, section: Any) -> Any:
        """The tokenizer or image processor saved with the model at `path` (`section`: the recipe's model)."""
        raise NotImplementedError

    def auto_class(self) -> Any:
        """The transformers Auto class of its models."""
        raise NotImplementedError

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        """What `from_pretrained` takes to fit the head to `labels` (classes: one output each, their names)."""
        return dict(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )

    def prepare_model(self, model: Any, processor: Any) -> None:
        """Set up a loaded model to train: a text model's pad token (a decoder's classifier reads the last non-pad)."""
        if self.modality == "text" and model.config.pad_token_id is None:
            model.config.pad_token_id = processor.pad_token_id

    def wants_lora_by_default(self, model: Any) -> bool:
        """Whether a recipe that says nothing of LoRA gets it."""
        return False

    # ---- inputs ---------------------------------------------------------------------------------------
    def train_inputs(self, data: Any, processor: Any, max_length: int, seed: int, packing: bool) -> tuple[Any, Any]:
        """The train split of `data` (a samtune.data.PreparedData) as model inputs, and the augmentation told each
        epoch (None: none)."""
        return self.eval_inputs(data.train, processor, data.columns, max_length), None

    def eval_inputs(self, ds: Any, processor: Any, columns: dict[str, Any], max_length: int) -> Any:
        """A split ready to evaluate."""
        raise NotImplementedError

    def collator(self, processor: Any) -> Any:
        """The Trainer's data collator (None: the default stacking)."""
        return None

    # ---- predict --------------------------------------------------------------------------------------
    def read_inputs(self, source: Any, skip_bad: bool) -> tuple[Any, list[str]]:
        """`samtune predict`'s examples (`samtune.predict.read_inputs`: a file, a folder of images, or texts), and the
        image files skipped."""
        from samtune.predict import read_inputs  # (samtune.predict imports this package)

        return read_inputs(source, self.modality == "image", skip_bad)

    def input_columns(self, rows: Any, section: Any) -> dict[str, str]:
        """The columns of `read_inputs`' rows that hold the model's inputs (`section`: the run's data section)."""
        raise NotImplementedError

    def predict_batch(self, model: Any, processor: Any, batch: dict[str, list], how: PredictSettings) -> list:
        """The model's output for each row of `batch` (a slice of `read_inputs`' rows), as `prediction_columns` takes
        them; `how`: its input columns, max length and generation settings."""
        raise NotImplementedError

    def prediction_names(self, labels: list[str]) -> list[str]:
        """The columns `samtune predict` writes its predictions under."""
        raise NotImplementedError

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        """Add the predictions to `table` (a DataFrame, in place) under `prediction_names`; those names. `logits`:
        `predict_batch`'s outputs, one per row."""
        raise NotImplementedError

    # ---- model card -----------------------------------------------------------------------------------
    def card_labels_line(self, facts: Any) -> str:
        """The card's sentence on the labels (`facts`: a samtune.card.CardFacts)."""
        return f"Labels ({len(facts.labels)}): {', '.join(facts.labels)}."

    def card_usage(self, facts: Any, where: str) -> str:
        """The card's Python example: transformers' pipeline on the model at `where` (through peft for adapters)."""
        tag, options, example = self.pipeline_tag, self.pipeline_options, self.card_example
        if not facts.adapter:
            return f"""from transformers import pipeline

classifier = pipeline("{tag}", model="{where}"{options})
print(classifier({example!r}))"""
        if self.modality == "text":
            load = f"""from peft import {self.peft_auto_class}
from transformers import AutoConfig, AutoTokenizer, pipeline

labels = AutoConfig.from_pretrained("{where}").id2label  # the run's labels: config.json beside the adapters
model = {self.peft_auto_class}.from_pretrained(
    "{where}", id2label=labels, label2id={{v: k for k, v in labels.items()}},
    ignore_mismatched_sizes=True,  # the head comes from the adapters' folder
)
processor = AutoTokenizer.from_pretrained("{where}")"""
        else:
            load = f"""from peft import PeftModel
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline

labels = AutoConfig.from_pretrained("{where}").id2label  # the run's labels: config.json beside the adapters
base = AutoModelForImageClassification.from_pretrained(
    "{facts.recipe.model.name}", id2label=labels, label2id={{v: k for k, v in labels.items()}},
    ignore_mismatched_sizes=True,  # the head comes from the adapters' folder
)
model = PeftModel.from_pretrained(base, "{where}")
processor = AutoImageProcessor.from_pretrained("{where}")"""
        kind = "tokenizer" if self.modality == "text" else "image_processor"
        return f"""{load}
classifier = pipeline("{tag}", model=model, {kind}=processor{options})
print(classifier({example!r}))"""


# ---- the registry -----------------------------------------------------------------------------------------

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task under its name (a name already taken is refused); the task, for use as an expression."""
    if task.name == AUTO or task.name in _REGISTRY:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def names() -> list[str]:
    """Every registered task's name, in registration order."""
    return list(_REGISTRY)


def registered() -> list[Task]:
    """Every registered task, in registration order (the order detection tries them)."""
    return list(_REGISTRY.values())


def get(task: str | Task) -> Task:
    """The task of a name (a task is returned as it is)."""
    if isinstance(task, Task):
        return task
    if task not in _REGISTRY:
        close = difflib.get_close_matches(str(task), _REGISTRY, n=1)
        raise UsageError(
            f"unknown task '{task}'" + (f": did you mean '{close[0]}'?" if close else ""),
            f"The tasks: {', '.join(_REGISTRY)}; a task of your own is registered with samtune.tasks.register "
            "before it is used.",
        )
    return _REGISTRY[task]


def all_metrics() -> dict[str, Metric]:
    """Every registered task's metrics by name, the loss last."""
    found = {m.name: m for task in _REGISTRY.values() for m in task.metrics}
    return {**found, LOSS.name: LOSS}


def metric(name: str) -> Metric:
    """A registered task's metric (or the loss) by its name."""
    return all_metrics()[name]


def default_metrics() -> list[str]:
    """Each registered task's default metric, once each."""
    return list(dict.fromkeys(task.default_metric for task in _REGISTRY.values()))
