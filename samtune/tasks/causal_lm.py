"""Causal language modelling: the next token, on every token of a text or on a prompt's response; text only.

Detected from prompt and response columns, or a causal LM (its config's architecture) given text with no label
column. `AutoModelForCausalLM` keeps its own language-model head; the metric is the perplexity over the split.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING, Any, Callable

from samtune.errors import DataError, UsageError
from samtune.tasks.base import Metric, PredictSettings, Task, model_outputs, register
from samtune.tasks.columns import LABEL_COLUMNS, TEXT_COLUMNS, pick

if TYPE_CHECKING:
    from datasets import Dataset

    from samtune.recipe import DataSection

TEXT_GENERATION = "text-generation"
PROMPT_COLUMNS = ("prompt", "instruction")  # a prompt (not trained on) ...
RESPONSE_COLUMNS = ("response", "completion", "output")  # ... and its response (trained on)
NO_TEXT_HINT = (
    "Name it with data.text_column=COLUMN (samtune looks for 'text' or 'sentence'), or give prompts and "
    "responses (data.prompt_column, data.response_column; found by themselves as prompt/response, "
    "instruction/output or prompt/completion)."
)
# Causal LMs larger than this train LoRA adapters unless the recipe says otherwise (model.lora: false). Full
# fine-tuning with AdamW holds about 16 bytes per parameter (fp32 weights, gradients, two moments), SAM adds a
# copy of the weights (4 more): 20 GB at a billion parameters, before activations, more than a 24 GB GPU has left.
LORA_BY_DEFAULT_ABOVE = 1_000_000_000
MAX_NEW_TOKENS = 50  # `samtune predict`'s completion length, unless --max-new-tokens says


def _prompt_and_response(columns: list[str], data: DataSection) -> tuple[str | None, str | None]:
    """Causal LM: the prompt and response columns, named or found (None, None: there are none)."""
    prompt = pick(columns, data.prompt_column, PROMPT_COLUMNS, "prompts", "data.prompt_column")
    response = pick(columns, data.response_column, RESPONSE_COLUMNS, "responses", "data.response_column")
    if (prompt is None) != (response is None):
        missing, key = ("response", "response_column") if response is None else ("prompt", "prompt_column")
        raise DataError(
            f"causal LM: a {'prompt' if prompt else 'response'} column but no {missing} column "
            f"(columns: {', '.join(columns)})",
            f"Name it with data.{key}=COLUMN, or train on whole texts with data.text_column=COLUMN.",
        )
    return prompt, response


def _generation_columns(columns: list[str], data: DataSection) -> dict[str, str | None]:
    """Causal LM: a prompt and its response (the loss on the response only), or one text column (the loss on all)."""
    if data.text_column is None:
        prompt, response = _prompt_and_response(columns, data)
        if prompt is not None:
            return {"label": None, "image": None, "text": prompt, "pair": None, "response": response}
    text = pick(columns, data.text_column, TEXT_COLUMNS, "text", "data.text_column")
    if text is None:
        raise DataError(f"causal LM: no text column found (columns: {', '.join(columns)})", NO_TEXT_HINT)
    return {"label": None, "image": None, "text": text, "pair": None, "response": None}


def _looks_like_generation(ds: Dataset, data: DataSection, causal_model: bool) -> bool:
    """With task auto and no label column: prompt and response columns, or a causal LM (and text)."""
    columns = list(ds.column_names)
    if data.label_column is not None or data.label_columns or any(c in columns for c in LABEL_COLUMNS):
        return False
    if data.text_column is None:
        try:
            if _prompt_and_response(columns, data)[0] is not None:
                return True
        except DataError:  # one of the two: a causal LM's recipe says which is missing; anything else is not one
            pass
    return causal_model


def _ready_for_causal_lm(tokenizer: Any, name: str) -> None:
    """A causal LM's tokenizer: it must have an end-of-text token (each example ends with it, so the model learns
    to stop); padding (labels -100, never trained) uses it when the tokenizer has no pad token, on the right."""
    if tokenizer.eos_token_id is None:
        raise UsageError(
            f"the tokenizer of '{name}' has no end-of-text (eos) token, which a causal LM's examples end with",
            "Choose a causal language model (its tokenizer names an eos_token), "
            "or set one in its tokenizer_config.json.",
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


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

    out = ds.map(
        encode, batched=True, batch_size=None if packing else 1000, remove_columns=ds.column_names, desc="Tokenizing"
    )
    return out.filter(lambda labels: any(t != -100 for t in labels[1:]), input_columns="labels")


def next_token_losses(logits: Any, labels: Any) -> Any:
    """A causal LM's `preprocess_logits_for_metrics`: per sequence, the summed negative log-likelihood of its
    targets (each token predicted from those before it: `labels` shifted by one, -100 not scored) and their
    count, so that evaluation keeps two numbers per sequence rather than a vocabulary's worth per token."""
    import torch

    logits = logits[0] if isinstance(logits, tuple) else logits
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
    )
    return torch.stack([nll.sum(-1), (targets != -100).sum(-1).to(nll.dtype)], dim=-1)


def compute_perplexity(eval_pred: Any) -> dict[str, float]:
    """Perplexity over every scored token of the split: exp(total negative log-likelihood / tokens). (The Trainer's
    eval_loss averages its batches' means instead, so batches with fewer tokens weigh more there.)"""
    import numpy as np

    sums = np.asarray(model_outputs(eval_pred), dtype=np.float64).reshape(-1, 2)
    return {"perplexity": float(np.exp(sums[:, 0].sum() / max(sums[:, 1].sum(), 1.0)))}


class CausalLM(Task):
    """The next token."""

    metrics = (Metric("perplexity", "perplexity", False),)
    problem = "generation"
    smooths_labels = True
    packs = True
    new_head = False  # the language-model head is pretrained (and often tied to the embeddings)
    lora_task_type = "CAUSAL_LM"
    pipeline_tag = TEXT_GENERATION  # type: ignore[assignment]
    head_name = "a causal language-model"  # type: ignore[assignment]
    card_example = "This film was"  # type: ignore[assignment]
    preprocess_logits = staticmethod(next_token_losses)
    predicts = True
    generates = True

    def claims_architecture(self, architectures: list[str]) -> bool:
        # (it may still be fine-tuned as a classifier on labelled data)
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)

    def claims_rows(self, rows: Any, section: Any, model_task: Task | None) -> bool:
        return _looks_like_generation(rows, section, model_task is self)

    def columns(self, names: list[str], features: Any, section: Any, rows: Any = None) -> dict[str, Any]:
        return _generation_columns(names, section)

    def prepared_data(self, raw: Any, section: Any, cols: dict[str, Any], seed: int, from_hub: bool) -> Any:
        """A causal LM's splits: the text (or prompt and response) columns only, rows with text; no labels (the
        tokens are the targets). The eval split is named or found, else carved from train at random."""
        from samtune.data import EVAL_SPLITS, DroppedRows, PreparedData, has_text  # (samtune.data imports this package)

        data = section
        eval_name = data.eval_split or next(
            (s for s in EVAL_SPLITS if s in raw and s not in (data.train_split, data.test_split)), None
        )
        test_name = data.test_split or ("test" if "test" in raw and data.eval_split != "test" else None)
        names = {"train": data.train_split, "eval": eval_name, "test": test_name}
        keep = [c for c in (cols["text"], cols["response"]) if c]
        splits: dict[str, Any] = {}
        dropped = DroppedRows()
        for key, name in names.items():
            if name is None:
                continue
            ds = raw[name]
            missing = [c for c in keep if c not in ds.column_names]
            if missing:
                raise DataError(
                    f"the '{name}' split lacks column(s) {', '.join(missing)} (it has: {', '.join(ds.column_names)})"
                )
            splits[key] = dropped.filter(name, ds.select_columns(keep), has_text, keep, "with no text")
        notes: list[str] = []
        if "eval" in splits:
            eval_source = f"the '{eval_name}' split"
        else:
            parts = splits["train"].train_test_split(test_size=data.validation_fraction, seed=seed)
            splits["train"], splits["eval"] = parts["train"], parts["test"]
            eval_source = f"{data.validation_fraction:.0%} of '{data.train_split}', random"
        for key, cap in (("train", data.max_train_samples), ("eval", data.max_eval_samples)):
            if cap and cap < len(splits[key]):
                splits[key] = splits[key].shuffle(seed=seed).select(range(cap))
        for key, ds in splits.items():
            if len(ds) == 0:
                raise DataError(
                    f"the {key} split has no text after dropping empty rows",
                    f"Check the column{'s' if len(keep) > 1 else ''} {', '.join(keep)}.",
                )
        return PreparedData.of(self.name, splits, [], cols, eval_source, eval_name, test_name, notes, dropped, from_hub)

    def check_data(self, train: Any, cols: dict[str, Any], section: Any) -> None:
        if section.labels or section.label_columns:
            raise UsageError(
                "data.labels / data.label_columns name classes; a causal LM (text-generation) has none",
                "Remove them, or set task to a classification task.",
            )

    def eval_examples(
        self, ds: Any, cols: dict[str, Any], names: list[str], split: str, dropped: Any
    ) -> tuple[Any, dict]:
        """No labels: the text (or prompt and response) is all, rows without it left out."""
        from samtune.data import has_text

        keep = [c for c in (cols["text"], cols["response"]) if c]
        rows = dropped.filter(split, ds.select_columns(keep), has_text, keep, "with no text")
        return rows, {"text": cols["text"], "response": cols["response"]}

    def saved_labels(self, config: Any) -> list[str]:
        return []  # its config keeps transformers' placeholder labels: it has none

    def describe_targets(self, data: Any, packing: bool) -> tuple[str, str]:
        what = f"the responses ({data.response_column})" if data.response_column else "every token of the text"
        return "targets", f"{what}{', packed' if packing else ''}"

    def load_processor(self, path: str, section: Any) -> Any:
        from samtune.modeling import load_tokenizer

        tokenizer = load_tokenizer(path, section)
        _ready_for_causal_lm(tokenizer, section.name or path)
        return tokenizer

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def head_config(self, labels: list[str]) -> dict[str, Any]:
        return {}  # the pretrained language-model head: nothing new

    def wants_lora_by_default(self, model: Any) -> bool:
        """Over LORA_BY_DEFAULT_ABOVE parameters."""
        return model.num_parameters() > LORA_BY_DEFAULT_ABOVE

    def train_inputs(self, data: Any, processor: Any, max_length: int, seed: int, packing: bool) -> tuple[Any, Any]:
        return tokenize_causal(data.train, processor, data.text_column, data.response_column, max_length, packing), None

    def eval_inputs(self, ds: Any, processor: Any, columns: dict[str, Any], max_length: int) -> Any:
        """Evaluation never packs: each example scored whole (up to max_length)."""
        return tokenize_causal(ds, processor, columns["text"], columns.get("response"), max_length)

    def collator(self, processor: Any) -> Any:
        """Input ids padded with the pad token, targets with -100."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(processor, label_pad_token_id=-100)

    def compute_metrics(self, labels: list[str], threshold: float = 0.5) -> Callable[[Any], dict[str, float]]:
        return compute_perplexity

    def input_columns(self, rows: Any, section: Any) -> dict[str, str]:
        """The prompts: the run's prompt (or text) column, else 'prompt', 'instruction', 'text' or 'sentence'."""
        from samtune.predict import input_column

        return {
            "text": input_column(
                rows,
                section.prompt_column or section.text_column,
                PROMPT_COLUMNS + TEXT_COLUMNS,
                "prompt",
                "data.prompt_column",
            )
        }

    def predict_batch(self, model: Any, processor: Any, batch: dict[str, list], how: PredictSettings) -> list:
        """Each prompt's completion: `generate` on the batch, padded on the left, greedy unless `how.generation` says
        do_sample; the new tokens decoded without special tokens, as transformers' text-generation pipeline does with
        return_full_text=False. The prompt is tokenised as in training (the tokenizer's own special tokens)."""
        prompts = [str(t) if t is not None else "" for t in batch[how.columns["text"]]]
        processor.padding_side = "left"  # the new tokens follow each prompt's last token
        try:
            encoded = processor(prompts, padding=True, return_tensors="pt").to(model.device)
        finally:
            processor.padding_side = "right"
        settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, **how.generation}
        out = model.generate(**encoded, **settings, pad_token_id=processor.pad_token_id)
        return processor.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)

    def prediction_names(self, labels: list[str]) -> list[str]:
        return ["completion"]

    def prediction_columns(self, table: Any, logits: Any, labels: list[str], threshold: float) -> list[str]:
        table["completion"] = list(logits)
        return self.prediction_names(labels)

    def card_labels_line(self, facts: Any) -> str:
        what = (
            f"each prompt's response (`{facts.response_column}`; the prompt's tokens carry no loss)"
            if facts.response_column
            else "every token of the text"
        )
        packed = f", packed into blocks of {facts.recipe.model.max_length} tokens" if facts.recipe.data.packing else ""
        return (
            f"Causal language model: trained to predict {what}, each example ended by the end-of-text "
            f"token{packed}. Perplexity: exp of the mean negative log-likelihood per predicted token."
        )

    def card_usage(self, facts: Any, where: str) -> str:
        """Continue a prompt with transformers' text-generation pipeline (adapters loaded through peft)."""
        if not facts.adapter:
            load = f"""from transformers import pipeline

generator = pipeline("text-generation", model="{where}")"""
        else:
            load = f"""from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer, pipeline

model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # the base named in adapter_config.json, adapters on
generator = pipeline("text-generation", model=model, tokenizer=AutoTokenizer.from_pretrained("{where}"))"""
        return f"""{load}
print(generator({self.card_example!r}, max_new_tokens=20, do_sample=False)[0]["generated_text"])"""


register(CausalLM(TEXT_GENERATION, "text"))
