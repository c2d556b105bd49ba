"""Which parameters climb: `sam.params`, as a preset or include/exclude patterns on parameter names.

SAM perturbs every trainable parameter by default. Fine-tuning studies perturb fewer: FSAM (Zhong
et al., EMNLP Findings 2022) never perturbs biases and embeddings, SAM-ON (Mueller et al., 2023)
only normalisation layers (with a much larger rho), and the official ASAM scales weight tensors
only. Parameters left out stay at w in the descent pass, and ||g|| is taken over the climbing ones
only (so their gradient is not even computed in the ascent).

A specification is a preset name, or comma-separated fnmatch patterns on parameter names
(`model.named_parameters()`), applied in order: a pattern adds the names it matches, `!pattern`
removes them; a specification that starts with `!` starts from every trainable parameter. A pattern that
matches no parameter name is refused (with the nearest that does), as is a specification that selects nothing.

Pure PyTorch: a model's own `base_model_prefix` (Hugging Face models have one) names its body.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when a model is matched: the recipe checks the syntax without it
    from torch import nn

PRESETS: dict[str, str] = {
    "all": "every trainable parameter (SAM as in the paper)",
    "weights": "weight matrices only: no biases, no normalisation layers, no embeddings (FSAM, ASAM's official code)",
    "norms": "normalisation layers only (SAM-ON)",
    "head": "the task head only: what lies outside the pretrained body (e.g. BERT's classifier)",
    "body": "the pretrained body only: everything but the task head",
}


# A normalisation layer's class says so, its name ending in the word Norm (LayerNorm, BatchNorm2d, GroupNorm,
# T5LayerNorm, LlamaRMSNorm, Mamba2RMSNormGated): architectures write their own (T5's scale-only LayerNorm, the
# RMSNorms of Llama-style models), so torch's classes alone miss them. Ending in it: a model named after its norms
# (RobertaPreLayerNormLMHead, which holds the head's bias) is no norm.
_NORM_CLASS = re.compile(r"Norm(\d*d|Gated)?$")


def _is_norm(module: nn.Module) -> bool:
    """Whether a module is a normalisation layer, by its class (or a class it derives from)."""
    return any(_NORM_CLASS.search(cls.__name__) for cls in type(module).__mro__)


def _norm_or_embedding(model: nn.Module) -> tuple[set[str], set[str]]:
    """Names of the parameters that belong to normalisation layers, and to embeddings."""
    from torch import nn

    norms: set[str] = set()
    embeddings: set[str] = set()
    for prefix, module in model.named_modules():
        is_norm = _is_norm(module)
        target = norms if is_norm else embeddings if isinstance(module, nn.Embedding) else None
        if target is not None:
            target.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return norms, embeddings


def _body_prefix(model: nn.Module) -> str:
    """The qualified name of the model's pretrained body (`bert`; inside a peft wrapper `base_model.model.bert`)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's adapters wrap the model
    prefix = getattr(inner, "base_model_prefix", "") or ""
    body = getattr(inner, prefix, None) if prefix else None
    if body is None:
        return ""
    return next((n for n, m in model.named_modules() if m is body), prefix)


def _preset(model: nn.Module, name: str) -> Callable[[str], bool]:
    norms, embeddings = _norm_or_embedding(model)
    body = _body_prefix(model)
    in_body = (
        (lambda n: n.startswith(body + "."))
        if body and any(n.startswith(body + ".") for n, _ in model.named_parameters())
        else (lambda n: True)
    )
    return {
        "all": lambda n: True,
        "weights": lambda n: not n.endswith("bias") and n not in norms and n not in embeddings,
        "norms": lambda n: n in norms,
        "head": lambda n: not in_body(n),
        "body": in_body,
    }[name]


def spec_problem(spec: str) -> str | None:
    """What is wrong with a specification's syntax (None if nothing); matching needs the model."""
    if spec in PRESETS:
        return None
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p or p == "!" for p in parts):
        return (
            f"params must be a preset ({', '.join(PRESETS)}) or comma-separated name patterns, "
            f"'!pattern' to leave some out (got {spec!r})"
        )
    return None


class SelectionError(ValueError):
    """A specification that cannot be what was meant: a pattern that matches no parameter, or nothing selected."""


def _unmatched(pattern: str, model: nn.Module) -> str:
    """A pattern that matches no parameter, quoted, with the nearest one that does (difflib: a parameter name,
    `module.*` or `*.leaf`), its `!` kept."""
    bare = pattern.removeprefix("!")
    names = [n for n, _ in model.named_parameters()]
    modules = [f"{m}.*" for m, _ in model.named_modules() if m]
    candidates = sorted({*names, *modules, *(f"*.{n.rsplit('.', 1)[-1]}" for n in names)})
    close = difflib.get_close_matches(bare, candidates, n=1, cutoff=0.6)
    return repr(pattern) + (f" (did you mean {pattern[: len(pattern) - len(bare)] + close[0]!r}?)" if close else "")


def _check_patterns(model: nn.Module, spec: str, parts: list[str]) -> None:
    """Refuse the patterns that match no parameter name, all in one message: a typo in one (`!*.Bias`) would
    otherwise go unseen whenever the others match. A pattern on frozen parameters (LoRA's base) is no typo."""
    every = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in parts if not any(fnmatch.fnmatchcase(n, p.removeprefix("!")) for n in every)]
    if unmatched:
        one = len(unmatched) == 1
        raise SelectionError(
            f"sam.params={spec!r}: {'this pattern matches' if one else 'these patterns match'} no parameter: "
            f"{', '.join(_unmatched(p, model) for p in unmatched)}. Patterns match the names model.named_parameters() "
            f"gives (fnmatch, case-sensitive, e.g. {every[0]}): correct or remove {'it' if one else 'them'}, "
            f"or use a preset ({', '.join(PRESETS)})"
        )


def climbing_names(model: nn.Module, spec: str) -> list[str]:
    """The names of the trainable parameters that `spec` selects, in the model's order.

    Raises SelectionError when a pattern matches no parameter name, or when nothing trainable is selected.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if spec in PRESETS:
        keep = _preset(model, spec)
        picked = {n for n in names if keep(n)}
    else:
        parts = [p.strip() for p in spec.split(",")]
        _check_patterns(model, spec, parts)
        picked = set(names) if parts[0].startswith("!") else set()
        for part in parts:
            matched = {n for n in names if fnmatch.fnmatchcase(n, part.removeprefix("!"))}
            picked = picked - matched if part.startswith("!") else picked | matched
    if not picked:
        raise SelectionError(
            f"sam.params={spec!r} selects no trainable parameter: use a preset "
            f"({', '.join(PRESETS)}) or patterns that match names such as {', '.join(names[:3])}"
        )
    return [n for n in names if n in picked]
