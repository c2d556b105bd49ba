"""Small learnable datasets of the task families beyond single-label text: tags, scores, topics."""

from __future__ import annotations

import random

import torch
from conftest import FILLER, NEGATIVE, POSITIVE

PEOPLE = ["ada", "alan", "grace"]  # ... tagged PER; the sentiment words are tagged as a two-word "REV" entity


def tagged_examples(n: int, seed: int = 0) -> list[dict]:
    """Rows of words with BIO tags: a name is B-PER; 'really' + a sentiment word is a B-REV I-REV entity."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            kind = rng.random()
            if kind < 0.2:
                words.append(rng.choice(PEOPLE)), tags.append("B-PER")
            elif kind < 0.35:
                words += ["really", rng.choice(POSITIVE + NEGATIVE)]
                tags += ["B-REV", "I-REV"]
            else:
                words.append(rng.choice([w for w in FILLER if w != "really"])), tags.append("O")
        rows.append({"tokens": words, "ner_tags": tags})
    return rows


def score_examples(n: int, seed: int = 0) -> list[dict]:
    """Sentences with k positive and 3 - k negative words; the score k/3 plus a little noise (fractions: regression)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 3)
        words = (
            rng.sample(FILLER, 3)
            + [rng.choice(POSITIVE) for _ in range(k)]
            + [rng.choice(NEGATIVE) for _ in range(3 - k)]
        )
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": round(k / 3 + rng.uniform(-0.05, 0.05), 3)})
    return rows


def regression_rows(n: int, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Token ids with a float target each (for a one-output regression head)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, 8), generator=g)
    targets = torch.rand(n, generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": targets[i]} for i in range(n)
    ]


TOPICS = {"acting": ["acting", "cast"], "plot": ["plot", "story"], "music": ["music", "score"]}


def topic_examples(n: int, seed: int = 0) -> list[dict]:
    """Sentences that mention any subset of three topics (by their words), with a sentiment word; tags = topics."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = [t for t in TOPICS if rng.random() < 0.5]
        words = rng.sample(FILLER, 2) + [rng.choice(TOPICS[t]) for t in tags] + [rng.choice(POSITIVE + NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "tags": tags})
    return rows
