"""Pushing a run directory to the Hugging Face Hub, and the checks made before training starts.

Every call to the Hub goes through `make_client()`, the one seam tests replace with a double.
The token comes from HF_TOKEN or the saved login (`hf auth login`), never from a recipe.
"""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import HfApi
from huggingface_hub import get_token as hub_token
from huggingface_hub.utils import enable_progress_bars

from samtune.card import CURVES_FILE, LANDSCAPE_1D_FILE, LANDSCAPE_2D_FILE, SHARPNESS_FILE
from samtune.confusion import Confusion
from samtune.per_label import PerLabel
from samtune.errors import PushError, UsageError
from samtune.rundir import CHECKPOINT_PREFIX, CONFIG_FILE, METRICS_FILE, TRAINER_STATE_FILE, require_model

# What a saved model is made of (transformers' and peft's save_pretrained: weights, configs, the tokenizer's or
# image processor's files); in a run directory and, for a merged LoRA run, in its merged/ folder. fnmatch patterns.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "preprocessor_config.json",
    "processor_config.json",
)
# Left out of a push without a word: checkpoints (optimizer state, large), the pickled TrainingArguments (it can
# hold a hub token), hidden files (the run's mark and lock), TensorBoard's event files.
NOT_PUSHED = (f"{CHECKPOINT_PREFIX}*", "training_args.bin", ".*", "runs")
LOGIN_HINT = "Log in with `hf auth login` (a token with write access), or set HF_TOKEN in the environment."


def make_client() -> Any:
    """The Hub client (an `HfApi`). Tests replace this function."""
    return HfApi()


def get_token() -> str | None:
    """The token from HF_TOKEN or the saved login, if any."""
    return hub_token()


def offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids reaching the Hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PushTarget:
    """Where a run goes: repo, visibility, branch."""

    repo_id: str
    private: bool = True
    revision: str | None = None


def retry_command(run_dir: Path, target: PushTarget) -> str:
    """The exact `samtune push` command that retries a failed push."""
    args = ["samtune", "push", str(run_dir), "--repo-id", target.repo_id, "--private" if target.private else "--public"]
    if target.revision:
        args += ["--revision", target.revision]
    return shlex.join(args)


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def preflight(target: PushTarget, unreachable: type[UsageError] | type[PushError] = UsageError) -> str:
    """Check, before any training, that a push to `target` can work; returns the user name.

    Refuses (exit 2) when offline, without a token, with an invalid or read-only token, or when
    the token's user cannot write to the repo's namespace.
    """
    if offline():
        raise UsageError(
            f"cannot push to {target.repo_id}: HF_HUB_OFFLINE=1 is set, so the Hub cannot be reached",
            "Unset HF_HUB_OFFLINE (and check the network) to push, or drop --push-to-hub / hub.repo_id.",
        )
    token = get_token()
    if not token:
        raise UsageError(f"cannot push to {target.repo_id}: no Hugging Face token found", LOGIN_HINT)
    try:
        me = make_client().whoami(token=token)
    except Exception as e:
        if _status(e) == 401:
            raise UsageError(f"cannot push to {target.repo_id}: the Hugging Face token is not valid", LOGIN_HINT) from e
        raise unreachable(
            f"cannot push to {target.repo_id}: the Hugging Face Hub could not be reached ({str(e).splitlines()[0]})",
            "Check the network connection, or drop --push-to-hub and push later with `samtune push`.",
        ) from e
    user = me.get("name", "")
    role = (me.get("auth", {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UsageError(f"cannot push to {target.repo_id}: the Hugging Face token is read-only", LOGIN_HINT)
    namespace = target.repo_id.split("/")[0] if "/" in target.repo_id else user
    orgs = {o.get("name"): o.get("roleInOrg") for o in me.get("orgs", [])}
    if namespace != user:
        if namespace not in orgs:
            raise UsageError(
                f"cannot push to {target.repo_id}: '{user}' is not a member of '{namespace}'",
                f"Push to {user}/<name>, or ask an admin of '{namespace}' to add you.",
            )
        if orgs[namespace] == "read":
            raise UsageError(f"cannot push to {target.repo_id}: '{user}' may only read in '{namespace}'")
    return user


def run_files() -> tuple[str, ...]:
    """The files samtune writes into a run directory itself (fnmatch patterns): card, recipe, metrics, figures."""
    errors = [f for report in (Confusion, PerLabel) for f in (report.json_file, report.figure_file)]

    return (
        "README.md",
        CONFIG_FILE,
        METRICS_FILE,
        TRAINER_STATE_FILE,
        CURVES_FILE,
        *errors,
        *(f"eval-*-{f}" for f in errors),
        SHARPNESS_FILE,
        LANDSCAPE_1D_FILE,
        LANDSCAPE_2D_FILE,
    )


def files_to_push(run_dir: Path) -> tuple[list[str], list[str]]:
    """What a push uploads from `run_dir`: the regular files samtune wrote there (`run_files`, `MODEL_FILES`; those of a
    merged model in merged/), never a link nor what it points to; and what else is there (a stray file, a link, a
    folder), not uploaded. Paths relative to `run_dir`, '/'-separated."""
    from samtune.runner import MERGED_DIR  # here: samtune.runner imports this module

    allowed = {"": (*run_files(), *MODEL_FILES), MERGED_DIR: MODEL_FILES}
    pushed, left = [], []
    for folder, patterns in allowed.items():
        where = run_dir / folder
        if folder and (where.is_symlink() or not where.is_dir()):
            continue  # (a merged/ that is a link was listed as one where it sits)
        for path in sorted(where.iterdir()):
            name = f"{folder}/{path.name}" if folder else path.name
            if path.is_symlink():
                left.append(f"{name} (a link)")
            elif path.is_file() and any(fnmatchcase(path.name, p) for p in patterns):
                pushed.append(name)
            elif name != MERGED_DIR and not any(fnmatchcase(path.name, p) for p in NOT_PUSHED):
                left.append(name + ("/" if path.is_dir() else ""))
    return pushed, left


def push_run(run_dir: Path, target: PushTarget, notify: Callable[[str], Any] = lambda _: None) -> str:
    """Upload a run directory (card, model, processor, config.yaml, metrics: `files_to_push`) to the Hub; its URL.
    `notify` is told what else the folder holds, not uploaded.

    Any failure raises PushError (exit 4) carrying the retry command; the run directory is not touched.
    """
    run_dir = Path(run_dir)
    require_model(run_dir)
    if offline():
        raise PushError(
            f"cannot push to {target.repo_id}: HF_HUB_OFFLINE=1 is set",
            f"The run is intact in {run_dir}. Unset HF_HUB_OFFLINE and retry:\n  {retry_command(run_dir, target)}",
        )
    token = get_token()
    if not token:
        raise PushError(
            f"cannot push to {target.repo_id}: no Hugging Face token found",
            f"{LOGIN_HINT} The run is intact in {run_dir}; then retry with:\n  {retry_command(run_dir, target)}",
        )
    pushed, left = files_to_push(run_dir)
    if left:
        notify(f"not pushed (samtune did not write them): {', '.join(left)}")
    enable_progress_bars()  # large uploads show their progress
    client = make_client()
    try:
        url = client.create_repo(target.repo_id, token=token, private=target.private, repo_type="model", exist_ok=True)
        if target.revision:
            client.create_branch(target.repo_id, branch=target.revision, token=token, repo_type="model", exist_ok=True)
        client.upload_folder(
            repo_id=target.repo_id,
            folder_path=str(run_dir),
            repo_type="model",
            revision=target.revision,
            token=token,
            allow_patterns=[glob.escape(name) for name in pushed],  # exactly these (escaped: names, not patterns)
            commit_message="Upload model trained with samtune (SAM)",
        )
    except Exception as e:
        raise PushError(
            f"pushing {run_dir} to {target.repo_id} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            f"The run is intact in {run_dir}. Retry with:\n  {retry_command(run_dir, target)}",
        ) from e
    return str(getattr(url, "url", url))
