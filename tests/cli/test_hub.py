"""Pushing to the Hub, with the client replaced by a test double at samtune.hub.make_client."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects
from typer.testing import CliRunner

from samtune import hub
from samtune.cli import app
from samtune.errors import EXIT_PUSH, EXIT_USAGE

runner = CliRunner()
RUN_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "config.yaml",
    "metrics.json",
    "trainer_state.json",
    "training_curves.png",
    "confusion.json",
    "confusion_matrix.png",
}


class FakeHub:
    """Records what samtune asks of the Hub; can refuse the upload."""

    def __init__(self, user: str = "alice", role: str = "write", orgs: dict[str, str] | None = None):
        self.user, self.role, self.orgs = user, role, orgs or {}
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: set[str] = set()
        self.upload_error: Exception | None = None

    def whoami(self, token=None):
        self.calls.append(("whoami", {"token": token}))
        return {
            "name": self.user,
            "orgs": [{"name": n, "roleInOrg": r} for n, r in self.orgs.items()],
            "auth": {"accessToken": {"role": self.role}},
        }

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        if self.upload_error is not None:
            raise self.upload_error
        root = Path(kw["folder_path"])
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        # The same filter huggingface_hub applies to upload_folder's patterns.
        self.uploaded = set(
            filter_repo_objects(
                files, allow_patterns=kw.get("allow_patterns"), ignore_patterns=kw.get("ignore_patterns")
            )
        )

    def call(self, name: str) -> dict:
        found = [kw for n, kw in self.calls if n == name]
        assert len(found) == 1, (name, self.calls)
        return found[0]


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    fake = FakeHub(orgs={"team": "write", "readers": "read"})
    monkeypatch.setattr(hub, "make_client", lambda: fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return fake


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def _train(text_model_dir, text_csv, out, *extra):
    args = [
        "train",
        "--model",
        text_model_dir,
        "--dataset",
        text_csv,
        "--output-dir",
        out,
        "--max-steps",
        "2",
        "training.batch_size=8",
        *extra,
    ]
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_pushes_the_run_after_saving_it(tmp_path, text_model_dir, text_csv, fake_hub):
    out = tmp_path / "run"
    result = _train(text_model_dir, text_csv, out, "--push-to-hub", "alice/tiny-sam")
    assert result.exit_code == 0, result.output
    assert fake_hub.calls[0][0] == "whoami"  # checked before training
    repo = fake_hub.call("create_repo")
    assert repo["repo_id"] == "alice/tiny-sam" and repo["private"] is True and repo["exist_ok"] is True
    upload = fake_hub.call("upload_folder")
    assert upload["repo_id"] == "alice/tiny-sam" and upload["revision"] is None
    assert sorted(upload["allow_patterns"]) == sorted(RUN_FILES)  # the files, by name
    assert fake_hub.uploaded == RUN_FILES  # no checkpoint, no pickled arguments
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())  # they exist locally
    assert "https://huggingface.co/alice/tiny-sam" in result.output


def test_public_repo_on_a_branch_of_an_organisation(tmp_path, text_model_dir, text_csv, fake_hub):
    result = _train(
        text_model_dir,
        text_csv,
        tmp_path / "run",
        "--push-to-hub",
        "team/tiny-sam",
        "--public",
        "hub.revision=experiment",
    )
    assert result.exit_code == 0, result.output
    assert fake_hub.call("create_repo")["private"] is False
    assert fake_hub.call("create_branch")["branch"] == "experiment"
    assert fake_hub.call("upload_folder")["revision"] == "experiment"


def test_failed_upload_keeps_the_run_and_prints_the_retry_command(tmp_path, text_model_dir, text_csv, fake_hub):
    fake_hub.upload_error = ConnectionError("connection reset by peer")
    out = tmp_path / "run"
    result = _train(text_model_dir, text_csv, out, "--push-to-hub", "alice/tiny-sam")
    assert result.exit_code == EXIT_PUSH, result.output
    assert "Traceback" not in result.output
    assert "connection reset by peer" in result.output
    assert f"samtune push {out} --repo-id alice/tiny-sam --private" in result.output
    assert RUN_FILES <= {p.name for p in out.iterdir()}  # everything is still there
    assert "eval_accuracy" in result.output  # and the summary was printed before the push


def test_no_token_stops_before_any_training(tmp_path, text_model_dir, text_csv, fake_hub, no_token):
    out = tmp_path / "run"
    result = _train(text_model_dir, text_csv, out, "--push-to-hub", "alice/tiny-sam")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "no Hugging Face token" in result.output and "hf auth login" in result.output
    assert not out.exists()  # nothing was trained, no checkpoint written
    assert fake_hub.calls == []


def test_offline_push_is_refused_before_training(tmp_path, text_model_dir, text_csv, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    result = _train(text_model_dir, text_csv, out, "--push-to-hub", "alice/tiny-sam")
    assert result.exit_code == EXIT_USAGE and "HF_HUB_OFFLINE=1" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("repo_id", "role", "says"),
    [
        ("alice/x", "read", "read-only"),
        ("strangers/x", "write", "not a member of 'strangers'"),
        ("readers/x", "write", "may only read"),
    ],
)
def test_tokens_that_cannot_write_are_refused(tmp_path, text_model_dir, text_csv, fake_hub, repo_id, role, says):
    fake_hub.role = role
    result = _train(text_model_dir, text_csv, tmp_path / "run", "--push-to-hub", repo_id)
    assert result.exit_code == EXIT_USAGE and says in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_push_command_pushes_an_existing_run_again(tmp_path, text_model_dir, text_csv, fake_hub):
    out = tmp_path / "run"
    assert _train(text_model_dir, text_csv, out).exit_code == 0
    assert not any(n == "upload_folder" for n, _ in fake_hub.calls)  # no push asked for
    result = runner.invoke(app, ["push", str(out), "--repo-id", "alice/again", "--public", "--revision", "v2"])
    assert result.exit_code == 0, result.output
    assert fake_hub.call("create_repo")["private"] is False
    assert fake_hub.call("upload_folder")["revision"] == "v2"
    assert fake_hub.uploaded == RUN_FILES


def test_push_uploads_only_what_samtune_wrote_never_a_stray_file_or_a_link(
    tmp_path, text_model_dir, text_csv, fake_hub
):
    out = tmp_path / "run"
    assert _train(text_model_dir, text_csv, out).exit_code == 0
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    (out / "secrets.txt").write_text("hf_secret")
    (out / "id_rsa").symlink_to(outside / "id_rsa")
    (out / "vocab.txt").symlink_to(outside / "id_rsa")  # a link under a name samtune writes
    (out / "ssh").symlink_to(outside, target_is_directory=True)
    result = runner.invoke(app, ["push", str(out), "--repo-id", "alice/again"])
    assert result.exit_code == 0, result.output
    assert fake_hub.uploaded == RUN_FILES
    said = " ".join(result.output.split())
    left = "id_rsa (a link), secrets.txt, ssh (a link), vocab.txt (a link)"
    assert f"not pushed (samtune did not write them): {left}" in said


def test_files_to_push_are_the_ones_samtune_and_save_pretrained_write(tmp_path):
    written = {
        "README.md",
        "config.yaml",
        "metrics.json",
        "trainer_state.json",
        "sharpness.json",
        "landscape_1d.png",
        "eval-reviews-validation-confusion_matrix.png",
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "spiece.model",
        "special_tokens_map.json",
        "vocab.txt",
        "preprocessor_config.json",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/merges.txt",
    }
    quiet = {"checkpoint-2/model.safetensors", "training_args.bin", ".samtune-run", "runs/events.out"}
    stray = {"notes.md", "data.csv", "extra/config.json", "merged/secrets.txt"}
    for name in written | quiet | stray:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    pushed, left = hub.files_to_push(tmp_path)
    assert set(pushed) == written
    assert left == ["data.csv", "extra/", "notes.md", "merged/secrets.txt"]


def test_push_command_refuses_a_folder_that_is_not_a_run(tmp_path, fake_hub):
    result = runner.invoke(app, ["push", str(tmp_path), "--repo-id", "alice/x"])
    assert result.exit_code == EXIT_USAGE and "not a samtune run directory" in result.output


def test_push_command_validates_the_repo_id(tmp_path, fake_hub):
    result = runner.invoke(app, ["push", str(tmp_path), "--repo-id", "not a repo"])
    assert result.exit_code == EXIT_USAGE and "hub.repo_id" in result.output


def test_a_token_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("hub:\n  repo_id: alice/x\n  token: hf_secret\n")
    result = runner.invoke(app, ["validate", str(recipe), "--schema-only"])
    assert result.exit_code == EXIT_USAGE and "tokens never go in a recipe" in result.output


def test_push_command_refuses_a_run_in_use(tmp_path, text_model_dir, text_csv, fake_hub):
    from samtune.rundir import RunLock

    out = tmp_path / "run"
    assert _train(text_model_dir, text_csv, out).exit_code == 0
    with RunLock(out):  # as a --resume in progress would hold it
        result = runner.invoke(app, ["push", str(out), "--repo-id", "alice/x"])
    assert result.exit_code == EXIT_USAGE and "in use" in result.output
    assert not any(n == "upload_folder" for n, _ in fake_hub.calls)


def test_push_command_reports_an_unreachable_hub_as_a_failed_push(tmp_path, text_model_dir, text_csv, fake_hub):
    out = tmp_path / "run"
    assert _train(text_model_dir, text_csv, out).exit_code == 0

    def down(token=None):
        raise ConnectionError("Name or service not known")

    fake_hub.whoami = down
    result = runner.invoke(app, ["push", str(out), "--repo-id", "alice/x"])
    assert result.exit_code == EXIT_PUSH and "could not be reached" in result.output


def test_a_lora_run_pushes_its_adapters_and_the_merged_model(tmp_path, text_model_dir, text_csv, fake_hub):
    out = tmp_path / "run"
    result = _train(
        text_model_dir, text_csv, out, "--lora", "model.lora.merge=true", "--push-to-hub", "alice/tiny-lora"
    )
    assert result.exit_code == 0, result.output
    adapters = {"adapter_config.json", "adapter_model.safetensors"}
    merged = {"merged/config.json", "merged/model.safetensors", "merged/tokenizer.json", "merged/tokenizer_config.json"}
    assert fake_hub.uploaded == (RUN_FILES - {"model.safetensors"}) | adapters | merged


@pytest.mark.parametrize("task", ["token-classification", "text-generation"])
def test_taggers_and_causal_lms_push_with_their_pipeline_tag(
    tmp_path, text_model_dir, causal_model_dir, fake_hub, task
):
    """The new tasks' runs upload like any other, their card metadata naming the Hub pipeline they serve."""
    from conftest import review_texts, write_jsonl
    from huggingface_hub import ModelCard
    from task_examples import tagged_examples

    if task == "token-classification":
        model, data = text_model_dir, write_jsonl(tmp_path / "ner.jsonl", tagged_examples(32))
    else:
        model, data = (
            causal_model_dir,
            write_jsonl(tmp_path / "t.jsonl", [{"text": r["text"]} for r in review_texts(32)]),
        )
    out = tmp_path / "run"
    result = _train(model, data, out, "--push-to-hub", "alice/tiny-task")
    assert result.exit_code == 0, result.output
    assert "README.md" in fake_hub.uploaded and "model.safetensors" in fake_hub.uploaded
    assert ModelCard.load(out / "README.md").data.pipeline_tag == task
