"""samtune.analysis and `samtune sharpness`: the measures against a quadratic whose Hessian is known,
exact restoration of the weights, filter normalisation, and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import text_examples, write_csv
from PIL import Image
from tiny import ASAM_ETA, collate, image_rows, text_rows, tiny_bert, tiny_resnet
from torch import nn
from typer.testing import CliRunner

from samtune.analysis import (
    Objective,
    filter_normalize,
    filter_normalized_directions,
    hessian_top_eigenvalue,
    hessian_trace,
    loss_curve,
    loss_surface,
    random_directions,
    sam_sharpness,
)
from samtune.analysis.plots import pixel_size_1d, pixel_size_2d
from samtune.card import LANDSCAPE_1D_FILE, SHARPNESS_FILE, SHARPNESS_START, sharpness_section
from samtune.cli import app
from samtune.errors import EXIT_USAGE
from samtune.optim.functional import NORM_EPS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (it is much faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a quadratic whose Hessian is known -----------------------------------------------------

D = 12
# Top eigenvalue 10, clearly apart from the next (6); a negative one of smaller magnitude, so the
# largest-magnitude eigenvalue that power iteration finds is the top one.
SPECTRUM = torch.tensor([10.0, 6.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.7, 0.4, 0.1, -2.0], dtype=torch.float64)


class Quadratic(nn.Module):
    """L(w) = 0.5 w^T A w + b^T w, with (A, b) given by the batch."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        a, b = batch
        return 0.5 * self.w @ a @ self.w + b @ self.w


def quadratic_loss(model: nn.Module, batch) -> torch.Tensor:
    return model(batch)


def make_quadratic(dtype: torch.dtype = torch.float64):
    """Two batches weighted 3:1 whose weighted mean is A = Q diag(SPECTRUM) Q^T, b = (3 b1 + b2) / 4.

    Returns the objective (in `dtype`) and the float64 A, b and w it was made from.
    """
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    a = q @ torch.diag(SPECTRUM) @ q.T
    s = torch.randn(D, D, generator=g, dtype=torch.float64)
    s = s + s.T
    b1, b2 = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    batches = [(a + s, b1), (a - 3 * s, b2)]  # 3 (A + S) + (A - 3S) = 4A
    w = torch.randn(D, generator=g, dtype=torch.float64).to(dtype)
    model = Quadratic(w)
    batches = [(x.to(dtype), y.to(dtype)) for x, y in batches]
    objective = Objective(model, batches, loss_fn=quadratic_loss, weights=[3, 1])
    return objective, a, (3 * b1 + b2) / 4


@pytest.fixture
def quadratic():
    return make_quadratic()


def test_top_eigenvalue_of_a_quadratic_is_the_analytic_one(quadratic):
    objective, a, _ = quadratic
    top = hessian_top_eigenvalue(objective, seed=0)
    assert top.converged
    assert top.value == pytest.approx(SPECTRUM.max().item(), rel=1e-3)


def test_hutchinson_trace_of_a_quadratic(quadratic):
    objective, a, _ = quadratic
    trace = SPECTRUM.sum().item()
    # For Rademacher v, Var(v^T A v) = 2 * sum_{i != j} A_ij^2: take enough samples that 5% is 4 standard errors.
    sd = math.sqrt(2 * ((a**2).sum() - (a.diagonal() ** 2).sum()).item())
    samples = math.ceil((4 * sd / (0.05 * trace)) ** 2)
    estimate = hessian_trace(objective, samples=samples, seed=0)
    assert estimate.value == pytest.approx(trace, rel=0.05)
    assert 0.5 < estimate.stderr / (sd / math.sqrt(samples)) < 2  # the reported error is the real one


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_sharpness_of_a_quadratic_is_the_analytic_value(adaptive):
    # float32: samtune.optim's ascent norm takes float32 and wider-than-float32 gradients are refused there.
    objective, a, b = make_quadratic(torch.float32)
    w = objective.model.w.detach().double()
    g = a @ w + b
    rhos = [0.01, 0.1, 0.5]
    measured = sam_sharpness(objective, rhos, adaptive=adaptive)
    for rho in rhos:
        # e = rho g / ||g|| (ASAM: rho T^2 g / || T g ||, T = |w| + eta, the paper's eta by default), and
        # L(w + e) - L(w) = g.e + 0.5 e^T A e exactly.
        t = w.abs() + ASAM_ETA
        e = rho * t**2 * g / ((t * g).norm() + NORM_EPS) if adaptive else rho * g / (g.norm() + NORM_EPS)
        expected = (g @ e + 0.5 * e @ a @ e).item()
        # float32 rounds L(w) and L(w + e) to about eps of their size: allow 100 eps of their sum.
        loss_w = (0.5 * w @ a @ w + b @ w).item()
        tolerance = 100 * torch.finfo(torch.float32).eps * (abs(loss_w) + abs(loss_w + expected))
        assert measured[rho] == pytest.approx(expected, abs=tolerance)
        assert tolerance < 0.01 * abs(expected)  # and the check is tight


def test_landscape_of_a_quadratic_is_the_analytic_one(quadratic):
    objective, a, b = quadratic
    w = objective.model.w.detach().clone()
    gen = torch.Generator().manual_seed(1)
    d1, d2 = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    alphas, betas = [-1.0, -0.25, 0.0, 0.5], [-0.5, 0.0, 1.0]

    def loss(x: torch.Tensor) -> float:
        return (0.5 * x @ a @ x + b @ x).item()

    curve = loss_curve(objective, [d1], alphas)
    assert curve == pytest.approx([loss(w + al * d1) for al in alphas], rel=1e-12)
    # A step of 0 is w itself (w + 0 d == w exactly); the loss is then evaluated along another
    # code path (without autograd), so compare to float64 rounding, not to the bit.
    assert curve[alphas.index(0.0)] == pytest.approx(objective.loss(), rel=1e-12)
    surface = loss_surface(objective, [d1], [d2], alphas, betas)
    for i, be in enumerate(betas):
        assert surface[i] == pytest.approx([loss(w + al * d1 + be * d2) for al in alphas], rel=1e-12)


# ---- weights, buffers, modes and gradients are left as they were --------------------------------


def _bert_objective():
    model = tiny_bert(hidden_dropout_prob=0.3)  # dropout on in train mode: the measures must switch it off
    rows = text_rows(8)
    return Objective(model, [collate(rows[:5]), collate(rows[5:])], weights=[5, 3])


def _resnet_objective():
    model = tiny_resnet()  # BatchNorm: in eval mode its running statistics are used and left alone
    rows = image_rows(6)
    return Objective(model, [collate(rows[:3]), collate(rows[3:])])


MEASURES = {
    "eigenvalue": lambda o: hessian_top_eigenvalue(o, max_iter=3),
    "trace": lambda o: hessian_trace(o, samples=2),
    "sam": lambda o: sam_sharpness(o, [0.05, 0.5]),
    "curve": lambda o: loss_curve(o, filter_normalized_directions(o.params, 1)[0], [-1.0, 0.5]),
    "surface": lambda o: loss_surface(o, *filter_normalized_directions(o.params, 2), [-1.0, 1.0]),
}


@pytest.mark.parametrize("make", [_bert_objective, _resnet_objective], ids=["bert", "resnet-batchnorm"])
@pytest.mark.parametrize("measure", list(MEASURES))
def test_measures_restore_weights_buffers_and_modes_exactly(make, measure):
    objective = make()
    model = objective.model.train()
    model.get_submodule(next(n for n, _ in model.named_children())).eval()  # a mixed mode must come back too
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MEASURES[measure](objective)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact, buffers included
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: .grad buffers untouched


def test_loss_is_measured_in_eval_mode():
    objective = _bert_objective()
    objective.model.train()
    curve = loss_curve(objective, filter_normalized_directions(objective.params, 1)[0], [0.0, 0.0])
    assert curve[0] == curve[1]  # dropout (p = 0.3) would draw different masks
    objective.model.eval()
    # The same weights in eval mode, but not the same kernels: the landscape evaluates without
    # autograd, where PyTorch may take another attention/matmul path (on AVX-512 Intel CPUs the
    # two differ by 4e-8 relative). A train-mode loss (dropout 0.3) differs by far more than 1e-6.
    assert curve[0] == pytest.approx(objective.loss(), rel=1e-6)


# ---- filter normalisation -------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_bert, tiny_resnet], ids=["bert", "resnet"])
def test_filter_normalisation_matches_each_filter_norm_and_zeroes_biases(make):
    params = [p for p in make().parameters()]
    for d in filter_normalized_directions(params, 2, seed=3):
        for x, w in zip(d, params):
            if w.dim() <= 1:
                assert torch.count_nonzero(x) == 0  # biases, LayerNorm, BatchNorm
            else:
                torch.testing.assert_close(
                    x.flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7
                )


def test_two_models_share_raw_directions_each_normalised_to_its_own_weights():
    a, b = list(tiny_bert(seed=0).parameters()), list(tiny_bert(seed=1).parameters())
    raw_a, raw_b = random_directions(a, 2, seed=5), random_directions(b, 2, seed=5)
    assert all(torch.equal(x, y) for da, db in zip(raw_a, raw_b) for x, y in zip(da, db))
    assert not all(torch.equal(x, y) for x, y in zip(random_directions(a, 1, seed=6)[0], raw_a[0]))  # the seed matters
    na, nb = filter_normalize(raw_a[0], a), filter_normalize(raw_b[0], b)
    # A weight with no all-zero filter (an embedding's padding row is zero, and its direction filter with it).
    i = next(
        i
        for i, (w, v) in enumerate(zip(a, b))
        if w.dim() > 1 and min(w.flatten(1).norm(dim=1).min(), v.flatten(1).norm(dim=1).min()) > 0
    )
    # Same raw filter, rescaled: the normalised filters are parallel, with the two models' own norms.
    ratio = na[i].flatten(1).norm(dim=1) / nb[i].flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, a[i].detach().flatten(1).norm(dim=1) / b[i].detach().flatten(1).norm(dim=1))
    assert not torch.equal(na[i], nb[i])


# ---- the command, end to end ------------------------------------------------------------------

runner = CliRunner()
KEYS = {
    "name",
    "run_dir",
    "parameters",
    "loss",
    "hessian_top_eigenvalue",
    "power_iterations",
    "power_converged",
    "hessian_trace",
    "hessian_trace_stderr",
    "sam_sharpness",
    "landscape",
}
MEASURE = ["--batches", "2", "--batch-size", "4", "--grid", "5", "--samples", "4", "--rho", "0.05", "--rho", "0.1"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, text_model_dir):
    """Two short runs of the tiny BERT, without and with SAM and at different learning rates: two different models.

    The same seed, so that both carve the same validation split: alone, each is measured on the same examples.
    """
    root = tmp_path_factory.mktemp("sharpness")
    data = write_csv(root / "reviews.csv", text_examples(80))
    runs = []
    for name, rho, lr in (("plain", "0", "5e-3"), ("sam", "0.1", "2e-2")):
        result = cli(
            "train",
            "--model",
            text_model_dir,
            "--dataset",
            data,
            "--output-dir",
            root / name,
            "--max-steps",
            "4",
            "--rho",
            rho,
            "--learning-rate",
            lr,
            "training.batch_size=8",
        )
        assert result.exit_code == 0, result.output
        runs.append(root / name)
    return runs


def _pixels(path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB"))


def test_sharpness_command_writes_numbers_figures_and_card(two_runs):
    plain, sam = two_runs
    for run in two_runs:
        result = cli("sharpness", run, *MEASURE)
        assert result.exit_code == 0, result.output
        assert "top Hessian eigenvalue" in result.output and "SAM sharpness, rho=0.1" in result.output
    alone = {run.name: json.loads((run / "sharpness.json").read_text()) for run in two_runs}
    for report in alone.values():
        assert KEYS <= set(report) and "against" not in report
        assert report["settings"]["examples"] == 8 and report["settings"]["batches"] == 2
        assert [p["rho"] for p in report["sam_sharpness"]] == [0.05, 0.1]
        assert len(report["landscape"]["loss_1d"]) == 5 and np.shape(report["landscape"]["loss_2d"]) == (5, 5)
        assert report["landscape"]["loss_1d"][2] == pytest.approx(report["loss"], rel=1e-6)  # the middle is w
    figures = {run.name: (_pixels(run / "landscape_1d.png"), _pixels(run / "landscape_2d.png")) for run in two_runs}
    for one_d, two_d in figures.values():
        assert one_d.shape[1::-1] == pixel_size_1d() and two_d.shape[1::-1] == pixel_size_2d(1)
    assert not np.array_equal(figures["plain"][0], figures["sam"][0])  # two models, two pictures
    assert not np.array_equal(figures["plain"][1], figures["sam"][1])

    result = cli("sharpness", plain, "--against", sam, *MEASURE)
    assert result.exit_code == 0, result.output
    both = json.loads((plain / "sharpness.json").read_text())
    assert KEYS <= set(both["against"]) and both["against"]["run_dir"] == str(sam)
    for mine, measured_alone in ((both, alone["plain"]), (both["against"], alone["sam"])):
        # The same examples and the same random draws: side by side, each run measures as it does alone.
        for key in ("loss", "hessian_top_eigenvalue", "hessian_trace"):
            assert mine[key] == pytest.approx(measured_alone[key], rel=1e-9)
        np.testing.assert_allclose(mine["landscape"]["loss_2d"], measured_alone["landscape"]["loss_2d"], rtol=1e-9)
    assert _pixels(plain / "landscape_2d.png").shape[1::-1] == pixel_size_2d(2)
    assert not np.array_equal(_pixels(plain / "landscape_1d.png"), figures["plain"][0])  # now with both curves

    card = (plain / "README.md").read_text()
    assert card.count(SHARPNESS_START) == 1  # the second measurement replaced the first
    assert "![1-D loss landscape](landscape_1d.png)" in card and "![2-D loss landscape](landscape_2d.png)" in card
    assert f"{both['hessian_top_eigenvalue']:.4g}" in card and "| measure | plain | sam |" in card
    from huggingface_hub import ModelCard

    assert "samtune" in ModelCard.load(plain / "README.md").data.tags  # the metadata is intact


def _narrower_copy(run, dest):
    """The run directory with a narrower model of the same labels in it: another architecture."""
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    shutil.copytree(run, dest)
    labels = AutoConfig.from_pretrained(run).id2label
    narrow = tiny_bert(
        vocab_size=len(AutoTokenizer.from_pretrained(run)),
        num_labels=len(labels),
        hidden_size=16,
        intermediate_size=20,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    narrow.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("where", ["missing", "empty", "against", "architecture", "span"])
def test_bad_run_dir_or_option_is_one_clear_message(tmp_path, two_runs, where):
    (tmp_path / "empty").mkdir()
    args, expected = {
        "missing": ([tmp_path / "missing"], "does not exist"),
        "empty": ([tmp_path / "empty"], "not a samtune run directory"),
        "against": ([two_runs[0], "--against", tmp_path / "missing"], "--against"),
        "architecture": ([two_runs[0], "--against", tmp_path / "narrow"], "has another architecture"),
        "span": ([two_runs[0], "--span", "0"], "--span must be a positive number"),
    }[where]
    if where == "architecture":
        _narrower_copy(two_runs[1], tmp_path / "narrow")
    result = cli("sharpness", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "Traceback" not in result.output
    assert expected in result.output


def test_card_section_shows_what_was_measured(tmp_path):
    assert sharpness_section(tmp_path) == ""  # nothing measured: no section
    measured = {
        "name": "run",
        "loss": 0.5,
        "hessian_top_eigenvalue": None,
        "hessian_trace": 3.0,
        "hessian_trace_stderr": 0.25,
        "sam_sharpness": [{"rho": 0.05, "loss_increase": 0.001}],
    }
    report = {
        **measured,
        "settings": {"examples": 8, "dataset": "d.csv", "split": "validation", "seed": 0, "trace_samples": 4},
    }
    (tmp_path / SHARPNESS_FILE).write_text(json.dumps(report))
    (tmp_path / LANDSCAPE_1D_FILE).write_bytes(b"")
    section = sharpness_section(tmp_path)
    assert "| top Hessian eigenvalue (power iteration) | n/a |" in section  # null: not finite
    assert "| Hessian trace (Hutchinson, 4 samples) | 3 ± 0.25 |" in section and "rho = 0.05 | 0.001 |" in section
    assert "![1-D loss landscape](landscape_1d.png)" in section and "landscape_2d.png" not in section
