"""Causal-LM fine-tuning (task text-generation): texts or prompt/response pairs, packing, perplexity, SAM exact
under the Trainer's token-level loss normalisation (`num_items_in_batch`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import causal_tokenizer, measure_sharpness, review_texts, run_card_example, sam_and_reference, write_jsonl
from tiny import causal_rows, max_abs_diff, micro_batches, reference_token_level_sam_sgd, tiny_gpt2
from transformers import EvalPrediction
from typer.testing import CliRunner

from samtune.cli import app
from samtune.tasks.causal_lm import tokenize_causal
from samtune.tasks.causal_lm import compute_perplexity, next_token_losses

runner = CliRunner()
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture
def texts_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "texts.jsonl", [{"text": r["text"]} for r in review_texts(96)])


@pytest.fixture
def prompts_jsonl(tmp_path) -> Path:
    return write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": r["prompt"], "response": r["response"]} for r in review_texts(96)]
    )


def test_texts_prompts_truncation_and_packing_become_the_right_targets():
    import datasets

    tok = causal_tokenizer()
    ids = {w: tok.convert_tokens_to_ids(w) for w in ["the", "film", "was", "good", "bad", "review", ":", "positive"]}
    eos = tok.eos_token_id
    texts = datasets.Dataset.from_dict({"text": ["the film was good", "bad"]})
    out = tokenize_causal(texts, tok, "text", None, max_length=16)
    assert out[0]["input_ids"] == [ids["the"], ids["film"], ids["was"], ids["good"], eos] == out[0]["labels"]
    assert out[1]["input_ids"] == [ids["bad"], eos] and out[1]["attention_mask"] == [1, 1]
    # Packed into blocks of 3: 5 + 2 tokens make two blocks, the last token left over is dropped.
    packed = tokenize_causal(texts, tok, "text", None, max_length=3, packing=True)
    assert packed["input_ids"] == [[ids["the"], ids["film"], ids["was"]], [ids["good"], eos, ids["bad"]]]
    assert packed["labels"] == packed["input_ids"]
    # A prompt's tokens carry no loss; the response and the end-of-text token are the targets.
    pairs = datasets.Dataset.from_dict({"prompt": ["review : good", "review : bad"], "response": ["positive", "bad"]})
    out = tokenize_causal(pairs, tok, "prompt", "response", max_length=16)
    assert out[0]["input_ids"] == [ids["review"], ids[":"], ids["good"], ids["positive"], eos]
    assert out[0]["labels"] == [-100, -100, -100, ids["positive"], eos]
    # Cut at 4 tokens: the response's first token is still a target; at 3 nothing is, and the row is dropped.
    assert tokenize_causal(pairs, tok, "prompt", "response", max_length=4)[0]["labels"] == [
        -100,
        -100,
        -100,
        ids["positive"],
    ]
    assert len(tokenize_causal(pairs, tok, "prompt", "response", max_length=3)) == 0


def test_perplexity_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[3, 1, 4, 1, 5], [-100, -100, 2, 6, -100]])  # row 1: a prompt, a response, padding
    nll, count = 0.0, 0
    for b in range(2):
        for t in range(4):  # position t predicts token t + 1
            target = int(labels[b, t + 1])
            if target != -100:
                row = [float(x) for x in logits[b, t]]
                log_z = math.log(sum(math.exp(x) for x in row))
                nll += log_z - row[target]
                count += 1
    assert count == 6
    sums = next_token_losses(logits, labels)  # what the Trainer keeps per sequence
    got = compute_perplexity(EvalPrediction(predictions=sums.numpy(), label_ids=labels.numpy()))
    assert got["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)  # float32 logits vs float64 sums


@pytest.mark.parametrize(("batch_size", "accumulation"), [(8, 1), (4, 2)], ids=["ga1", "ga2"])
def test_sam_on_a_causal_lm_matches_the_hand_written_token_level_loop(tmp_path, batch_size, accumulation):
    model = tiny_gpt2(64, **NO_DROPOUT)
    ours, reference, no_climb, batches = sam_and_reference(
        tmp_path, model, causal_rows(24, 64), batch_size, accumulation, reference_token_level_sam_sgd
    )
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    assert accumulation == 1 or counts[0] != counts[1]  # padding: micro-batches with different target counts
    assert max_abs_diff(ours, reference) <= 1e-6  # same formula, different code: rounding only
    assert max_abs_diff(no_climb, reference) > 1e-4  # the climb mattered
    if accumulation == 2:  # the mean of the micro-batches' own means is another objective: the test tells them apart
        from tiny import reference_sam_sgd

        steps = [batches[i * 2 : i * 2 + 2] for i in range(3)]
        assert max_abs_diff(reference_sam_sgd(model, steps, 0.05, 0.5), reference) > 1e-5


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _train_plain(tmp_path, trainer_class, args_class, model, rows, **extra):
    from tiny import ListDataset

    args = args_class(
        output_dir=str(tmp_path / trainer_class.__name__),
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        train_sampling_strategy="sequential",
        **extra,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=ListDataset(rows))
    trainer.train()
    return trainer.model


def test_rho_zero_is_the_stock_trainer_to_the_bit_on_a_causal_lm(tmp_path):
    """Llama: with accumulation and uneven target counts the stock token-level normalisation is kept exactly."""
    from transformers import Trainer, TrainingArguments

    from samtune import SAMArguments, SAMTrainer

    rows = causal_rows(16, 64)
    stock = _train_plain(tmp_path, Trainer, TrainingArguments, _tiny_llama(), rows)
    ours = _train_plain(tmp_path, SAMTrainer, SAMArguments, _tiny_llama(), rows, rho=0.0)
    a, b = stock.state_dict(), ours.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_targets_are_counted_as_its_loss_predicts_them(tmp_path):
    """GPT2LMHeadModel's loss_type is unset in transformers 5.24, so the stock Trainer counts every label (one per row
    too many); samtune counts labels[..., 1:], and rho 0 is then plain SGD on the mean over the predicted targets."""
    from transformers import Trainer, TrainingArguments

    from samtune import SAMArguments, SAMTrainer

    rows = causal_rows(16, 64)
    ours = _train_plain(tmp_path, SAMTrainer, SAMArguments, tiny_gpt2(64, **NO_DROPOUT), rows, rho=0.0)
    steps = [micro_batches(rows[i : i + 8], 4) for i in (0, 8)]
    by_hand = reference_token_level_sam_sgd(tiny_gpt2(64, **NO_DROPOUT), steps, 0.0, 0.1)
    assert max_abs_diff(ours, by_hand) <= 1e-6
    stock = _train_plain(tmp_path, Trainer, TrainingArguments, tiny_gpt2(64, **NO_DROPOUT), rows)
    assert max_abs_diff(stock, by_hand) > 1e-5  # what transformers does today: a step a few percent short


def _train_causal(out: Path, model_dir: Path, data: Path, max_length: int):
    """Three epochs of the tiny GPT-2 on `data` through the command line."""
    return runner.invoke(
        app,
        [
            "train",
            "--model",
            str(model_dir),
            "--dataset",
            str(data),
            "--output-dir",
            str(out),
            "--epochs",
            "3",
            "--learning-rate",
            "1e-2",
            "--batch-size",
            "8",
            f"model.max_length={max_length}",
        ],
    )


def test_causal_lm_on_texts_end_to_end(tmp_path, causal_model_dir, texts_jsonl):
    out = tmp_path / "run"
    result = _train_causal(out, causal_model_dir, texts_jsonl, 16)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_perplexity", "eval_loss"} <= set(metrics) and "eval_accuracy" not in metrics
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    ppl = [h["eval_perplexity"] for h in history if "eval_perplexity" in h]
    vocab = len(causal_tokenizer())
    assert ppl[-1] < ppl[0] and ppl[-1] < vocab / 4  # learned the reviews' words (uniform guessing: the vocabulary)
    card = (out / "README.md").read_text()
    assert "text-generation" in card and "every token of the text" in card
    assert run_card_example(out)[0].startswith("This film was")  # the prompt, continued
    # Perplexity counts every target once, whatever the batching: `eval` (batches of 64) gives training's figure.
    evaluated = runner.invoke(app, ["eval", str(out), "--dataset", str(texts_jsonl), "--split", "train"])
    assert evaluated.exit_code == 0, evaluated.output
    from samtune.runner import evaluate_run

    assert evaluate_run(out, str(texts_jsonl), split="train", batch_size=64)["eval_perplexity"] == pytest.approx(
        evaluate_run(out, str(texts_jsonl), split="train", batch_size=5)["eval_perplexity"], rel=1e-5
    )  # float32 logits, summed in other groupings
    measure_sharpness(out)


def test_prompts_and_responses_train_on_the_response_only(tmp_path, causal_model_dir, prompts_jsonl):
    out = tmp_path / "run"
    result = _train_causal(out, causal_model_dir, prompts_jsonl, 24)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # Two targets per example: the sentiment word (which the review's words give away) and the end of text.
    assert metrics["eval_perplexity"] < 2.0
    assert "each prompt's response (`response`" in (out / "README.md").read_text()


def test_packing_trains_on_full_blocks(tmp_path, causal_model_dir, texts_jsonl):
    from samtune.recipe import build_recipe
    from samtune.runner import train

    recipe = build_recipe(
        {
            "model": {"name": str(causal_model_dir), "max_length": 16},
            "data": {"dataset": str(texts_jsonl), "packing": True},
            "training": {"max_steps": 2, "batch_size": 4},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(recipe, notify=lambda _: None)
    batch = next(iter(result.trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and bool(batch["attention_mask"].all())  # no padding
    # 86 training texts of 7 tokens (6 words, end of text) = 602 tokens: 37 blocks of 16.
    assert result.metrics["train_samples"] == 37


def test_big_causal_lms_get_lora_unless_the_recipe_says_no(tmp_path, causal_model_dir, texts_jsonl, monkeypatch):
    from samtune.tasks import causal_lm

    monkeypatch.setattr(causal_lm, "LORA_BY_DEFAULT_ABOVE", 1000)  # the tiny GPT-2 counts as big
    args = [
        "train",
        "--model",
        str(causal_model_dir),
        "--dataset",
        str(texts_jsonl),
        "--max-steps",
        "2",
        "model.max_length=16",
    ]
    result = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "big")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "big" / "adapter_model.safetensors").is_file()
    assert "r: 8" in (tmp_path / "big" / "config.yaml").read_text()  # the recipe saved says what ran
    assert run_card_example(tmp_path / "big")[0].startswith("This film was")  # through AutoPeftModelForCausalLM
    full = runner.invoke(app, [*args, "--output-dir", str(tmp_path / "full"), "model.lora=false"])
    assert full.exit_code == 0, full.output
    assert (tmp_path / "full" / "model.safetensors").is_file() and not (
        tmp_path / "full" / "adapter_config.json"
    ).exists()


def test_causal_lm_errors_name_the_problem(tmp_path, causal_model_dir, text_model_dir, text_csv):
    unlabelled = write_jsonl(tmp_path / "numbers.jsonl", [{"id": i, "score": 0.5} for i in range(20)])
    no_text = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(causal_model_dir),
            "--dataset",
            str(unlabelled),
            "--output-dir",
            str(tmp_path / "a"),
            "task=text-generation",
        ],
    )
    assert no_text.exit_code == 3 and "causal LM: no text column found" in no_text.output
    half = write_jsonl(tmp_path / "half.jsonl", [{"prompt": "review : good", "text2": "x"}] * 8)
    one_sided = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(causal_model_dir),
            "--dataset",
            str(half),
            "--output-dir",
            str(tmp_path / "b"),
            "task=text-generation",
        ],
    )
    assert one_sided.exit_code == 3 and "no response column" in one_sided.output
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": r["text"]} for r in review_texts(16)])
    no_eos = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(texts),
            "--output-dir",
            str(tmp_path / "c"),
            "task=text-generation",
        ],
    )
    assert no_eos.exit_code == 2 and "no end-of-text (eos) token" in no_eos.output
    for out in ("a", "b", "c"):
        assert not (tmp_path / out).exists()
    packed = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(text_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(tmp_path / "d"),
            "data.packing=true",
        ],
    )
    assert packed.exit_code == 2 and "data.packing" in packed.output


def test_a_labelled_dataset_on_a_causal_lm_still_trains_a_classifier(tmp_path, causal_model_dir, text_csv):
    """GPT-2's config says causal LM, but labelled data (text + label) makes a sequence-classification run."""
    from transformers import AutoConfig

    tok = causal_tokenizer()
    assert np.all([w in tok.get_vocab() for w in ["good", "bad"]])
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            str(causal_model_dir),
            "--dataset",
            str(text_csv),
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert AutoConfig.from_pretrained(out).architectures == ["GPT2ForSequenceClassification"]
