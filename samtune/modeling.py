"""Models and processors: Auto classes from a hub id or folder, the head fitted to the labels,
tokenisation for text (word tags aligned to sub-word tokens for token classification) and the
model's own image processing for images."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

from samtune.errors import OFFLINE_HINT, UsageError, hub_unreachable
from samtune.recipe import LoraSection, ModelSection, resolve_package_path
from samtune.tasks import (
    IMAGE_CLASSIFICATION,
    MULTI_LABEL,
    PROBLEM_TYPES,
    REGRESSION,
    GENERATION,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
    TOKEN_CLASSIFICATION,
    TOKENS,
    from_problem_type,
    modality,
    problem,
    task_of,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from samtune.data import PreparedData

TEXT = TEXT_CLASSIFICATION
IMAGE = IMAGE_CLASSIFICATION
INDEX = "__samtune_index"  # each training image's row, for augmentation that resumes exactly
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's: a run directory (or checkpoint) that holds LoRA adapters
# LoRA's default targets: the attention query and value projections, as in the LoRA paper and peft's
# own per-architecture table (which names them for transformers' older layouts). Whichever pair a
# model has is used; a model with none of them gets every linear layer ("all-linear").
ATTENTION_QUERY_VALUE = (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("c_attn",))
# Causal LMs larger than this train LoRA adapters unless the recipe says otherwise (model.lora: false). Full
# fine-tuning with AdamW holds about 16 bytes per parameter (fp32 weights, gradients, two moments), SAM adds a
# copy of the weights (4 more): 20 GB at a billion parameters, before activations, more than a 24 GB GPU has left.
LORA_BY_DEFAULT_ABOVE = 1_000_000_000


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _not_found(name: str, e: BaseException) -> UsageError:
    from pathlib import Path

    if Path(name).expanduser().is_dir():
        return UsageError(
            f"'{name}' is a folder but not a model that transformers can load ({str(e).splitlines()[0]})",
            "Point at a folder written by save_pretrained (with config.json and the weights).",
        )
    if Path(name).expanduser().exists():
        return UsageError(f"'{name}' is a file, not a model folder or hub id", "Give a model folder or a hub id.")
    reason = hub_unreachable(e)
    if reason is not None and not _offline():
        return UsageError(
            f"model '{name}': the Hugging Face Hub could not be reached ({reason})",
            f"Check the network connection; {OFFLINE_HINT}; or give a local folder.",
        )
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
    from transformers import AutoConfig

    name = model_path(section)
    try:
        return AutoConfig.from_pretrained(name, revision=section.revision, trust_remote_code=section.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _not_found(section.name or name, e) from e


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
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return TOKEN_CLASSIFICATION  # a tagger (a samtune token-classification run, or an NER model)
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return TEXT_GENERATION  # a causal LM (it may still be fine-tuned as a classifier on labelled data)

    image = config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    text = config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    kind = "image" if image and not text else "text" if text and not image else None
    if kind is None:
        return None
    # A model fine-tuned for regression or multi-label says so in its config; a pretrained body says nothing.
    return task_of(kind, from_problem_type(getattr(config, "problem_type", None)))


def load_processor(section: ModelSection, task: str) -> Any:
    """The tokenizer (text) or image processor (images) saved with the model.

    Token classification takes words already split: byte-level BPE tokenizers (RoBERTa's, GPT-2's) then need
    `add_prefix_space`, as the transformers NER example sets it, so that each word is tokenised as it is mid-sentence.
    """
    name = model_path(section)
    try:
        if modality(task) == "image":
            from samtune.imaging import load_image_processor

            return load_image_processor(name, revision=section.revision)
        from transformers import AutoTokenizer

        common = dict(revision=section.revision, trust_remote_code=section.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name, **common)
        if problem(task) == TOKENS and getattr(tokenizer, "add_prefix_space", None) is False:
            tokenizer = AutoTokenizer.from_pretrained(name, add_prefix_space=True, **common)
        if problem(task) == GENERATION:
            _ready_for_causal_lm(tokenizer, section.name or name)
        elif tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:  # GPT-2-like, as a classifier
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(
            f"cannot load the {'image processor' if modality(task) == 'image' else 'tokenizer'} of '{section.name}': "
            f"{str(e).splitlines()[0]}",
            "The model folder must hold its processor files (save them with processor.save_pretrained).",
        ) from e


def _ready_for_causal_lm(tokenizer: Any, name: str) -> None:
    """A causal LM's tokenizer: it must have an end-of-text token (each example ends with it, so the model learns
    to stop); padding (labels -100, never trained) uses it when the tokenizer has no pad token, on the right."""
    if tokenizer.eos_token_id is None:
        raise UsageError(
            f"the tokenizer of '{name}' has no end-of-text (eos) token, which a causal LM's examples end with",
            "Choose a causal language model (its tokenizer names an eos_token), or set one in its tokenizer_config.json.",
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def holds_adapter(path: str) -> bool:
    """Whether a model folder holds LoRA adapters (peft's files) rather than whole weights."""
    from pathlib import Path

    return (Path(path).expanduser() / ADAPTER_CONFIG_FILE).is_file()


def load_model(section: ModelSection, task: str, labels: list[str]) -> PreTrainedModel:
    """The pretrained model with a classification head for `labels` (replaced when its size differs).

    A folder of LoRA adapters (a LoRA run) loads as its base model with the adapters merged in.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )
    from transformers.utils import logging as hf_logging

    name = model_path(section)
    if holds_adapter(name):
        return _load_adapter_run(name, section, task, labels)
    head: dict[str, Any] = {}
    if problem(task) == GENERATION:  # the pretrained language-model head: nothing new
        auto = AutoModelForCausalLM
    elif problem(task) == TOKENS:
        auto = AutoModelForTokenClassification
    else:
        auto = AutoModelForImageClassification if modality(task) == "image" else AutoModelForSequenceClassification
    if problem(task) == REGRESSION:  # one output and an MSE loss; `labels` names the target
        head = dict(num_labels=1, problem_type="regression", id2label={0: labels[0] if labels else "value"})
    elif problem(task) != GENERATION:
        head = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)})  # fmt: skip
        if problem(task) == MULTI_LABEL:  # a sigmoid per class and a binary cross-entropy loss
            head["problem_type"] = PROBLEM_TYPES[MULTI_LABEL]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is the point of fine-tuning
    try:
        return auto.from_pretrained(
            name,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            **head,
            ignore_mismatched_sizes=True,
        )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            kind = task if problem(task) in (TOKENS, GENERATION) else f"{modality(task)}-classification"
            what = "a causal language-model" if kind == TEXT_GENERATION else f"a {kind}"
            raise UsageError(
                f"model '{section.name}' has no {what} head in transformers",
                f"Choose a model made for {kind.replace('-', ' ')}, or check that the data matches the model.",
            ) from e
        raise _not_found(section.name or name, e) from e
    except OSError as e:
        raise _not_found(section.name or name, e) from e
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_adapter_run(path: str, section: ModelSection, task: str, labels: list[str]) -> PreTrainedModel:
    """A LoRA run: its base model (from the adapters' config) with the trained adapters and head merged in."""
    from peft import PeftConfig, PeftModel

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
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

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
    return [
        n for n, m in model.named_children() if n != body and any(True for _ in m.parameters())
    ]


def _adaptable_layers(model: PreTrainedModel) -> list[str]:
    """The last names of the layers LoRA can adapt (linear, convolution, embedding), for an error message."""
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
    seen = dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds))
    return list(seen)


def apply_lora(model: PreTrainedModel, lora: LoraSection, task: str) -> Any:
    """The model wrapped with LoRA adapters (peft): the base frozen, the adapters and `modules_to_save` trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = lora_targets(model, lora)
    if lora.modules_to_save is not None:
        keep = lora.modules_to_save
    else:  # the new task head; a causal LM's language-model head is pretrained (and often tied to the embeddings)
        keep = [] if problem(task) == GENERATION else head_modules(model)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=keep or None,
        task_type={TOKENS: TaskType.TOKEN_CLS, GENERATION: TaskType.CAUSAL_LM}.get(
            problem(task), TaskType.SEQ_CLS if modality(task) == "text" else None
        ),
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


def wants_lora_by_default(model: PreTrainedModel, task: str) -> bool:
    """Whether a recipe that says nothing of LoRA gets it: causal LMs over LORA_BY_DEFAULT_ABOVE parameters."""
    return problem(task) == GENERATION and model.num_parameters() > LORA_BY_DEFAULT_ABOVE


def modules_trained_in_full(model: Any) -> list[str]:
    """The modules a LoRA model trains whole beside its adapters (peft's `modules_to_save` that exist in it)."""
    from peft.utils import ModulesToSaveWrapper

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)})


def tokenize_split(ds: Any, tokenizer: Any, text_column: str, pair_column: str | None, max_length: int) -> Any:
    """One split as token ids (padding is left to the collator), the label kept."""

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        args = [batch[text_column]] + ([batch[pair_column]] if pair_column else [])
        return tokenizer(*args, truncation=True, max_length=max_length)

    drop = [c for c in ds.column_names if c != "labels"]
    return ds.map(encode, batched=True, remove_columns=drop, desc="Tokenizing")


def tokenize_words(ds: Any, tokenizer: Any, words_column: str, max_length: int) -> Any:
    """Token classification: each row's words as token ids, its tags aligned to them as the transformers examples
    do: a word's tag on its first sub-word token, -100 (ignored by the loss and the metrics) on the others and on
    special tokens. Words cut off by `max_length` are neither trained nor scored."""
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"token classification needs a fast tokenizer (to map sub-word tokens to words); "
            f"'{getattr(tokenizer, 'name_or_path', '')}' has a {type(tokenizer).__name__}",
            "Choose a model whose tokenizer has a tokenizer.json (a fast, Rust tokenizer).",
        )

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        encoded = tokenizer(batch[words_column], is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = []
        for row, tags in enumerate(batch["labels"]):
            previous, labels = None, []
            for word in encoded.word_ids(row):
                labels.append(-100 if word is None or word == previous else tags[word])
                previous = word
            aligned.append(labels)
        encoded["labels"] = aligned
        return encoded

    from datasets import Sequence, Value

    drop = [c for c in ds.column_names if c != "labels"]
    ds = ds.cast_column("labels", Sequence(Value("int64")))  # tag ids: -100 is not a class
    return ds.map(encode, batched=True, remove_columns=drop, desc="Tokenizing")


def tokenize_causal(
    ds: Any, tokenizer: Any, text_column: str, response_column: str | None, max_length: int, packing: bool = False
) -> Any:
    """A causal LM's examples as token ids with their targets, `labels` (the model shifts them by one).

    A text: every token is a target. A prompt and its response: tokenised apart and joined, the prompt's tokens
    labelled -100 (no loss), the response's the targets. Each example ends with the end-of-text token (a target:
    the model learns to stop). Without packing, an example is cut at `max_length` tokens, and one left with no
    target (a prompt that fills the window) is dropped; with packing, the examples are joined and cut into blocks
    of `max_length` (the last, shorter block dropped), as the transformers `run_clm` example does.
    """
    from itertools import chain

    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        ids, targets = [], []
        if response_column is None:
            for tokens in tokenizer(batch[text_column])["input_ids"]:
                ids.append(tokens + [eos])
                targets.append(tokens + [eos])
        else:
            prompts = tokenizer(batch[text_column])["input_ids"]
            responses = tokenizer(batch[response_column], add_special_tokens=False)["input_ids"]
            for prompt, response in zip(prompts, responses):
                ids.append(prompt + response + [eos])
                targets.append([-100] * len(prompt) + response + [eos])
        if packing:
            flat_ids, flat_targets = list(chain.from_iterable(ids)), list(chain.from_iterable(targets))
            blocks = range(0, len(flat_ids) - max_length + 1, max_length)
            ids = [flat_ids[i : i + max_length] for i in blocks]
            targets = [flat_targets[i : i + max_length] for i in blocks]
        else:
            ids, targets = [x[:max_length] for x in ids], [y[:max_length] for y in targets]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": targets}

    out = ds.map(encode, batched=True, batch_size=None if packing else 1000, remove_columns=ds.column_names,
                 desc="Tokenizing")  # fmt: skip
    return out.filter(lambda labels: any(t != -100 for t in labels[1:]), input_columns="labels")


def eval_inputs(ds: Any, task: str, processor: Any, columns: dict[str, str | None], max_length: int) -> Any:
    """A split ready to evaluate: tokenized text (or words, tags aligned), or images resized by the model's own
    processor."""
    if problem(task) == TOKENS:
        return tokenize_words(ds, processor, columns["text"], max_length)
    if problem(task) == GENERATION:  # evaluation never packs: each example scored whole (up to max_length)
        return tokenize_causal(ds, processor, columns["text"], columns.get("response"), max_length)
    if modality(task) == "image":
        from samtune.imaging import EvalTransform

        return ds.with_transform(EvalTransform(processor, image_column=columns["image"], label_column="labels"))
    return tokenize_split(ds, processor, columns["text"], columns["pair"], max_length)


def prepare_inputs(data: PreparedData, processor: Any, max_length: int, seed: int, packing: bool = False) -> PreparedData:
    """Every split as model inputs; training images are augmented (seeded per epoch and example)."""
    columns = {"text": data.text_column, "pair": data.text_pair_column, "image": data.image_column,
               "response": data.response_column}  # fmt: skip
    if modality(data.task) == "image":
        from samtune.imaging import TrainTransform

        augment = TrainTransform(
            processor, image_column=data.image_column, label_column="labels", seed=seed, index_column=INDEX
        )
        data.train = data.train.add_column(INDEX, list(range(len(data.train)))).with_transform(augment)
        data.augment = augment
    elif problem(data.task) == TOKENS:
        data.train = tokenize_words(data.train, processor, data.text_column, max_length)
    elif problem(data.task) == GENERATION:
        data.train = tokenize_causal(data.train, processor, data.text_column, data.response_column, max_length, packing)
    else:
        data.train = tokenize_split(data.train, processor, data.text_column, data.text_pair_column, max_length)
    data.eval = eval_inputs(data.eval, data.task, processor, columns, max_length)
    if data.test is not None:
        data.test = eval_inputs(data.test, data.task, processor, columns, max_length)
    return data


def collator(task: str, processor: Any) -> Any:
    """Dynamic padding for text (token classification: its tags padded with -100 too); the default stacking for
    images."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if problem(task) == TOKENS:
        return DataCollatorForTokenClassification(processor)
    if problem(task) == GENERATION:  # input ids padded with the pad token, targets with -100
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(processor, label_pad_token_id=-100)
    return DataCollatorWithPadding(processor) if modality(task) == "text" else None


def augmentation_epoch_callback(augment: Any) -> Any:
    """A TrainerCallback that tells the image augmentation which epoch starts (its draws depend on it)."""
    from transformers import TrainerCallback

    class AugmentationEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            augment.epoch = int(state.epoch or 0)

    return AugmentationEpoch()


def quiet_transformers() -> None:
    """Keep transformers' and datasets' own warnings and bars out of samtune's output."""
    import datasets
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors reach the user as DataError
    disable_progress_bars()


def fsdp_wrap_classes(model: Any) -> list[str]:
    """The layer classes FSDP2 shards one by one: the model's `_no_split_modules`, less any holding the input embeddings.

    Accelerate 1.15 shards the input embedding module on its own after wrapping these classes; when one of
    them contains it (BERT's and ViT's `*Embeddings`), that second `fully_shard` meets parameters already
    sharded and fails. Left out, the embeddings are sharded with the model's root (or on their own).
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    holding = {type(m).__name__ for m in model.modules() if embed is not None and any(c is embed for c in m.modules())}
    return sorted(names - holding)

