"""The arms both benchmarks compare: name -> the `SAMArguments` keyword arguments that differ from plain training.

`rho=0` is the stock Trainer step (plain AdamW). The cost benchmark uses the paper's radii (the cost
of a step does not depend on rho); the accuracy benchmark passes the radii tuned for its task.
"""

from __future__ import annotations

from typing import Any


#: The paper's SAM: the exact step (the whole batch climbs), a constant radius from the first step (samtune's
#: defaults differ: see finetune.py and frontier.py). An arm's own variant replaces `sam_variant`.
PAPER = {"sam_variant": "sam", "schedule": "constant", "start": 0.0}


def make_arms(sam_rho: float, asam_rho: float) -> dict[str, dict[str, Any]]:
    """AdamW, exact SAM, ASAM and each efficient variant with its default settings, at these radii.

    Every SAM arm is the paper's (constant radius, from the first step), and `sam-defaults` is SAM at
    `sam_rho` with samtune's shipped schedule and window (whatever SAMArguments' defaults are).
    """
    arms = {
        "adamw": {"rho": 0.0},
        "sam": {"rho": sam_rho},
        "asam": {"rho": asam_rho, "adaptive": True},
        "every_2": {"rho": sam_rho, "sam_variant": "every_k", "every_k": 2},
        "every_5": {"rho": sam_rho, "sam_variant": "every_k", "every_k": 5},
        "looksam": {"rho": sam_rho, "sam_variant": "looksam", "looksam_k": 5, "looksam_alpha": 0.7},
        "ascent_quarter": {"rho": sam_rho, "sam_variant": "ascent_fraction", "ascent_fraction": 0.25},
        "rst": {"rho": sam_rho, "sam_variant": "rst", "rst_probability": 0.5},
    }
    arms = {name: kw if name == "adamw" else {**PAPER, **kw} for name, kw in arms.items()}
    arms["sam-defaults"] = {"rho": sam_rho}
    return arms
