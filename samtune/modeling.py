"""Models and processors: Auto classes from a hub id or folder, the head fitted to the labels, LoRA, and the
splits as model inputs; what differs between tasks (the Auto class, the head, tokenisation, collation) is the
task's (`samtune.tasks`)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from huggingface_hub.utils import disable_progress_bars
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from peft.utils import ModulesToSaveWrapper
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from torch import nn
from transformers import AutoConfig, AutoTokenizer, TrainerCallback
from transformers.utils import logging as hf_logging

from samtune import tasks
from samtune.errors import OFFLINE_HINT, UsageError, hub_unreachable
from samtune.network import work_offline_if_unresolved
from samtune.recipe import LoraSection, ModelSection, resolve_package_path

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from samtune.data import PreparedData

ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's: a run directory (or checkpoint) that holds LoRA adapters
# LoRA's default targets: the attention query and value projections, as in the LoRA paper and peft's
# own per-architecture table (which names them for transformers' older layouts). Whichever pair a
# model has is used; a model with none of them gets every linear layer ("all-linear").
ATTENTION_QUERY_VALUE = (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("c_attn",))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _unreachable(name: str, reason: str) -> UsageError:
    return UsageError(
        f"model '{name}': the Hugging Face Hub could not be reached ({reason})",
        f"Check the network connection; {OFFLINE_HINT}; or give a local folder.",
    )


def _not_found(name: str, e: BaseException) -> UsageError:
    if Path(name).expanduser().is_dir():
        return UsageError(
            f"'{name}' is a folder but not a model that transformers can load ({str(e).splitlines()[0]})",
            "Point at a folder written by save_pretrained (with config.json and the weights).",
        )
    if Path(name).expanduser().exists():
        return UsageError(f"'{name}' is a file, not a model folder or hub id", "Give a model folder or a hub id.")
    reason = hub_unreachable(e)
    if reason is not None and not _offline():
        return _unreachable(name, reason)
    if _offline():
        hint = (
            "HF_HUB_OFFLINE=1 is set, so only local folders and models already in the cache load. "
            "Give a local folder (or package:<pkg>/<path>), or unset HF_HUB_OFFLINE with network access."
        )
    else:
        hint = "Check the id on huggingface.co/models (private models need `hf auth login`), or give a local folder."
    return UsageError(f"model '{name}' not found: it is not a local folder and could not be loaded from the Hub", hint)


def model_path(section: ModelSection) -> str:
    """The model reference as `from_pretrained` takes it (package paths resolved; a run to start from wins)."""
    if section.init_from:
        return resolve_package_path(section.init_from)
    if not section.name:
        raise UsageError("no model given", "Set model.name in the recipe, or pass --model.")
    return resolve_package_path(section.name)


def load_config(section: ModelSection) -> PretrainedConfig:
    """The model's configuration (cheap: no weights), or a clear error."""
    name = model_path(section)
    unresolved = None if Path(name).expanduser().exists() else work_offline_if_unresolved()
    try:
        return AutoConfig.from_pretrained(name, revision=section.revision, trust_remote_code=section.trust_remote_code)
    except ImportError as e:  # e.g. a timm model (TimmWrapper) without timm
        raise missing_library(section.name or name, e) from e
    except (OSError, ValueError, KeyError) as e:
        if unresolved is not None:  # the id is not in the local cache, and the Hub's name does not resolve
            raise _unreachable(section.name or name, unresolved) from e
        raise _not_found(section.name or name, e) from e


# What a missing library needs beyond `pip install NAME`.
LIBRARY_NOTES = {
    "timm": "timm imports torchvision, whose build must match PyTorch's: beside the CPU build of torch 2.13.0 that "
    "samtune installs no PyPI torchvision imports (see docs/tasks.md, 'Image models')",
}


def missing_library(model: str, e: ImportError) -> UsageError:
    """A model whose code needs a library that is not installed (transformers: 'X requires the Y library')."""
    found = re.search(r"requires the (\S+) library", str(e))
    library = found.group(1) if found else getattr(e, "name", None) or "a library"
    note = LIBRARY_NOTES.get(library)
    return UsageError(
        f"model '{model}' needs the Python package '{library}', which is not installed",
        f"Install it (pip install {library}){f'; {note}' if note else ''}, or choose another model.",
    )


def fit_max_length(section: ModelSection, config: PretrainedConfig) -> None:
    """Hold model.max_length to the model's position embeddings (`max_position_embeddings`; GPT-2's `n_positions`
    under that name): a longer batch would crash training. The default is lowered to them (and saved so in
    config.yaml); a value the recipe sets above them is a usage error. Models without such a limit keep it."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or section.max_length <= limit:
        return
    if "max_length" not in section.model_fields_set:
        section.max_length = limit
        return
    raise UsageError(
        f"model.max_length is {section.max_length}, but the model takes at most {limit} tokens "
        f"(max_position_embeddings in the config of '{section.init_from or section.name}')",
        f"Set model.max_length={limit} or less (longer examples are cut), or choose a model that reads longer inputs.",
    )


def checked_config(section: ModelSection) -> PretrainedConfig:
    """The model's configuration, with the recipe's model section checked against it (`fit_max_length`)."""
    config = load_config(section)
    fit_max_length(section, config)
    return config


def model_task(config: PretrainedConfig) -> str | None:
    """The task a model's architecture (and, once fine-tuned, its config) does; None if it could do either/neither."""
    task = tasks.detect_model(config)
    return task.name if task is not None else None


def load_processor(section: ModelSection, task: str) -> Any:
    """The tokenizer (text) or image processor (images) saved with the model, as the task wants it."""
    task_ = tasks.get(task)
    name = model_path(section)
    try:
        return task_.load_processor(name, section)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(
            f"cannot load the {task_.processor_name} of '{section.name}': {str(e).splitlines()[0]}",
            "The model folder must hold its processor files (save them with processor.save_pretrained).",
        ) from e


def load_tokenizer(path: str, section: ModelSection, **kwargs: Any) -> Any:
    """The tokenizer saved with the model at `path`; one with no pad token pads with its end-of-text token (GPT-2's,
    as a classifier)."""
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=section.revision, trust_remote_code=section.trust_remote_code, **kwargs
    )
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def holds_adapter(path: str) -> bool:
    """Whether a model folder holds LoRA adapters (peft's files) rather than whole weights."""
    return (Path(path).expanduser() / ADAPTER_CONFIG_FILE).is_file()


def load_model(section: ModelSection, task: str, labels: list[str]) -> PreTrainedModel:
    """The pretrained model with the task's head for `labels` (replaced when its size differs).

    A folder of LoRA adapters (a LoRA run) loads as its base model with the adapters merged in.
    """
    name = model_path(section)
    if holds_adapter(name):
        return _load_adapter_run(name, section, task, labels)
    task_ = tasks.get(task)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is the point of fine-tuning
    try:
        if not section.pretrained:  # the architecture only: random weights, seeded like the head of any run
            config = AutoConfig.from_pretrained(
                name,
                revision=section.revision,
                trust_remote_code=section.trust_remote_code,
                **task_.head_config(labels),
            )
            return from_scratch(task_.auto_class(), config, section.trust_remote_code)
        return task_.auto_class().from_pretrained(
            name,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            **task_.head_config(labels),
            ignore_mismatched_sizes=True,
        )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise UsageError(
                f"model '{section.name}' has no {task_.head_name} head in transformers",
                f"Choose a model made for {task_.pipeline_tag.replace('-', ' ')}, or check that the data matches "
                "the model.",
            ) from e
        raise _not_found(section.name or name, e) from e
    except OSError as e:
        raise _not_found(section.name or name, e) from e
    finally:
        hf_logging.set_verbosity(verbosity)


def from_scratch(auto_class: Any, config: PretrainedConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """The architecture with random weights: the model's own initialisation, except that normalisation layers start
    as PyTorch starts them (weight 1, bias 0, fresh running statistics). transformers' EfficientNet draws BatchNorm
    weights from N(0, 0.02) like its convolutions, which scales every block's output by ~0.02: a from-scratch
    Lite0 then never leaves the uniform prediction (measured: loss ln 10 for all 282 steps of its recipe)."""
    model = auto_class.from_config(config, trust_remote_code=trust_remote_code)
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            module.reset_parameters()
    return model


def _load_adapter_run(path: str, section: ModelSection, task: str, labels: list[str]) -> PreTrainedModel:
    """A LoRA run: its base model (from the adapters' config) with the trained adapters and head merged in."""
    base_name = PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base_name:
        raise UsageError(f"the LoRA adapters in {path} do not name their base model", "Re-save them with peft.")
    base_section = ModelSection(name=base_name, revision=None, trust_remote_code=section.trust_remote_code)
    try:
        base = load_model(base_section, task, labels)
    except UsageError as e:
        raise UsageError(
            f"the LoRA adapters in {path} need their base model '{base_name}', which does not load ({e.message})",
            "Make the base model available there (or in the Hub cache), then try again.",
        ) from e
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
    for p in model.parameters():  # a whole model again, every weight trainable, as from_pretrained gives it
        p.requires_grad_(True)
    return model


def lora_targets(model: PreTrainedModel, lora: LoraSection) -> list[str] | str:
    """The modules that get adapters: the recipe's, else peft's per-architecture default, else all-linear."""
    if lora.target_modules is not None:
        return lora.target_modules
    layers = set(_adaptable_layers(model))
    for names in (PEFT_TARGETS.get(model.config.model_type), *ATTENTION_QUERY_VALUE):
        if names and set(names) <= layers:
            return list(names)
    return "all-linear"


def head_modules(model: PreTrainedModel) -> list[str]:
    """The task head: the model's top-level modules with weights outside its pretrained body (e.g. `classifier`)."""
    body = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != body and any(True for _ in m.parameters())]


def _adaptable_layers(model: PreTrainedModel) -> list[str]:
    """The last names of the layers LoRA can adapt (linear, convolution, embedding), for an error message."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
    seen = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds))
    return list(seen)


def apply_lora(model: PreTrainedModel, lora: LoraSection, task: str) -> Any:
    """The model wrapped with LoRA adapters (peft): the base frozen, the adapters and `modules_to_save` trainable."""
    task_ = tasks.get(task)
    targets = lora_targets(model, lora)
    if lora.modules_to_save is not None:
        keep = lora.modules_to_save
    else:  # the task's new head (a pretrained head, such as a causal LM's, is not trained in full)
        keep = head_modules(model) if task_.new_head else []
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=keep or None,
        task_type=TaskType[task_.lora_task_type] if task_.lora_task_type else None,
    )
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError is a ValueError
        layers = ", ".join(_adaptable_layers(model)[:12])
        what = ", ".join(targets) if isinstance(targets, list) else targets
        raise UsageError(
            f"LoRA: no module of '{model.config.model_type}' matches model.lora.target_modules ({what}): "
            f"{str(e).splitlines()[0]}",
            f"Set model.lora.target_modules to names of its layers, e.g. from: {layers}.",
        ) from e


def modules_trained_in_full(model: Any) -> list[str]:
    """The modules a LoRA model trains whole beside its adapters (peft's `modules_to_save` that exist in it)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)})


def eval_inputs(ds: Any, task: str, processor: Any, columns: dict[str, str | None], max_length: int) -> Any:
    """A split ready to evaluate, as the task prepares it (tokenized text, words or images)."""
    return tasks.get(task).eval_inputs(ds, processor, columns, max_length)


def prepare_inputs(
    data: PreparedData, processor: Any, max_length: int, seed: int, packing: bool = False
) -> PreparedData:
    """Every split as model inputs; the training split as the task trains on it (images augmented, seeded per epoch
    and example; a causal LM's texts packed if asked)."""
    task = tasks.get(data.task)
    data.train, data.augment = task.train_inputs(data, processor, max_length, seed, packing)
    data.eval = task.eval_inputs(data.eval, processor, data.columns, max_length)
    if data.test is not None:
        data.test = task.eval_inputs(data.test, processor, data.columns, max_length)
    return data


def collator(task: str, processor: Any) -> Any:
    """The task's data collator (None: the default stacking)."""
    return tasks.get(task).collator(processor)


def augmentation_epoch_callback(augment: Any) -> Any:
    """A TrainerCallback that tells the image augmentation which epoch starts (its draws depend on it)."""

    class AugmentationEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            augment.epoch = int(state.epoch or 0)

    return AugmentationEpoch()


def quiet_transformers() -> None:
    """Keep transformers' and datasets' own warnings and bars out of samtune's output."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as DataError
    disable_progress_bars()


def fsdp_wrap_classes(model: Any) -> list[str]:
    """The layer classes FSDP2 shards one by one: the model's `_no_split_modules`, less any holding the input
    embeddings.

    Accelerate 1.15 shards the input embedding module on its own after wrapping these classes; when one of
    them contains it (BERT's and ViT's `*Embeddings`), that second `fully_shard` meets parameters already
    sharded and fails. Left out, the embeddings are sharded with the model's root (or on their own).
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    holding = {type(m).__name__ for m in model.modules() if embed is not None and any(c is embed for c in m.modules())}
    return sorted(names - holding)
