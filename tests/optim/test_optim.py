"""samtune.optim: the SAM maths and the standalone optimizer, against hand-written derivations."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from samtune.optim import (
    SAM,
    ascent_norm,
    climb_,
    frozen_running_stats,
    restore_weights_,
    sam_perturbation,
    save_weights,
)
from samtune.optim.functional import gradients_by_backward


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def _batches(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_optim_imports_nothing_from_transformers():
    code = "import sys, samtune.optim; print(any(m.startswith('transformers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ascent_norm_is_the_global_l2_norm():
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]]), None]
    assert ascent_norm(g).item() == pytest.approx(5.0)
    w = [torch.tensor([2.0, 7.0]), torch.tensor([[0.5]]), torch.zeros(1)]
    # || |w| g || = sqrt((2*3)^2 + (0.5*4)^2) = sqrt(40)
    assert ascent_norm(g, w, adaptive=True).item() == pytest.approx(40**0.5)


def test_perturbation_has_length_rho_and_follows_the_gradient():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5)]
    grads = [torch.randn(3, 4), torch.randn(5)]
    expected = [0.2 * g / torch.sqrt(sum((x**2).sum() for x in grads)) for g in grads]
    kept, e, norm = sam_perturbation([g.clone() for g in grads], params, rho=0.2)
    assert len(kept) == 2
    for a, b in zip(e, expected):
        assert torch.allclose(a, b, atol=1e-7)
    assert torch.sqrt(sum((x**2).sum() for x in e)).item() == pytest.approx(0.2, rel=1e-6)


def test_asam_perturbation_is_scaled_by_w_squared():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5)]
    grads = [torch.randn(3, 4), torch.randn(5)]
    norm = torch.sqrt(sum(((p.abs() * g) ** 2).sum() for p, g in zip(params, grads)))
    expected = [0.7 * p * p * g / norm for p, g in zip(params, grads)]
    _, e, _ = sam_perturbation([g.clone() for g in grads], params, rho=0.7, adaptive=True)
    for a, b in zip(e, expected):
        assert torch.allclose(a, b, atol=1e-6)


def test_zero_gradient_gives_no_perturbation():
    params = [torch.ones(3)]
    _, e, norm = sam_perturbation([torch.zeros(3)], params, rho=0.05)
    assert norm.item() == 0 and torch.equal(e[0], torch.zeros(3))


def test_restore_is_exact_in_bfloat16():
    torch.manual_seed(0)
    params = [torch.randn(1000).to(torch.bfloat16)]
    original = params[0].clone()
    saved = save_weights(params)
    e = [torch.randn(1000) * 0.3]
    climb_(params, e)
    assert not torch.equal(params[0], original)
    restore_weights_(params, saved)
    assert torch.equal(params[0], original)


def test_frozen_running_stats_leaves_buffers_and_counter_alone():
    bn = nn.BatchNorm1d(4).train()
    bn(torch.randn(8, 4))
    before = copy.deepcopy(bn.state_dict())
    with frozen_running_stats(bn):
        out = bn(torch.randn(8, 4) * 5 + 3)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    assert bn.track_running_stats
    # It still normalises with the batch's own statistics, as training mode should.
    assert out.mean(0).abs().max() < 1e-5


def test_gradients_by_backward_sets_aside_every_gradient_the_pass_writes():
    """The backward pass writes every parameter's gradient: those asked for come back, and every `.grad` held
    before (the parameters not asked for too) is as it was, the pass's own gradient for it dropped."""
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
    a.grad, b.grad = torch.tensor([10.0, 20.0]), torch.tensor([30.0])
    (grad_a,) = gradients_by_backward(lambda: ((a * a).sum() * b.sum()).backward(), [a], written=[a, b])
    assert torch.equal(grad_a, 2 * a.detach() * 3.0)
    assert torch.equal(a.grad, torch.tensor([10.0, 20.0])) and torch.equal(b.grad, torch.tensor([30.0]))


# ASAM's eta in T = |w| + eta: Kwon et al.'s paper and official code (SamsungLabs/ASAM) use 0.01.
PAPER_ETA = 0.01


def _reference_sam(model, batches, base_cls, rho, adaptive=False, eta=PAPER_ETA, **base_kw):
    """SAM by hand: perturb each weight by rho * T^2 * g / ||T g|| (T = 1, ASAM: |w| + eta), take the gradient,
    restore, step."""
    model = copy.deepcopy(model)
    base = base_cls(model.parameters(), **base_kw)
    params = list(model.parameters())
    for batch in batches:
        grads = torch.autograd.grad(_loss(model, batch), params)
        scale = [p.detach().abs() + eta if adaptive else torch.ones_like(p) for p in params]
        norm = torch.sqrt(sum(((t * g) ** 2).sum() for t, g in zip(scale, grads)))
        old = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g, t in zip(params, grads, scale):
                p.add_(rho * t * t * g / (norm + 1e-12))
        base.zero_grad()
        _loss(model, batch).backward()
        with torch.no_grad():
            for p, w in zip(params, old):
                p.copy_(w)
        base.step()
    return model


def _run_samtune(model, batches, base_cls, rho, adaptive=False, use_closure=False, **base_kw):
    model = copy.deepcopy(model)
    opt = SAM(model.parameters(), base_cls, rho=rho, adaptive=adaptive, **base_kw)  # ASAM: the default eta
    for batch in batches:
        _loss(model, batch).backward()
        if use_closure:
            opt.step(lambda: _loss(model, batch).backward())
            opt.zero_grad()
        else:
            opt.first_step(zero_grad=True)
            _loss(model, batch).backward()
            opt.second_step(zero_grad=True)
    return model, opt


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


BASES = [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.01)),
]


@pytest.mark.parametrize(("base_cls", "base_kw"), BASES, ids=["sgd_momentum", "adamw"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("use_closure", [False, True], ids=["two_steps", "closure"])
def test_standalone_sam_matches_hand_written_reference(base_cls, base_kw, adaptive, use_closure):
    model, batches, rho = _mlp(), _batches(), (0.5 if adaptive else 0.05)
    reference = _reference_sam(model, batches, base_cls, rho, adaptive, **base_kw)
    ours, _ = _run_samtune(model, batches, base_cls, rho, adaptive, use_closure, **base_kw)
    assert _max_diff(ours, reference) <= 1e-6
    plain, _ = _run_samtune(model, batches, base_cls, 0.0, **base_kw)
    assert _max_diff(plain, reference) > 1e-5  # the reference is not plain training


@pytest.mark.parametrize("eta", [0.0, PAPER_ETA, 0.1], ids=["davda54", "paper", "larger"])
def test_standalone_asam_with_eta_matches_hand_written_reference(eta):
    """T = |w| + eta, set per optimizer (or per group); eta 0 is davda54/sam's ASAM. A bias at exactly 0 (a new
    head's) climbs with eta > 0, and stays at 0 in the climb with eta 0 (T = |w| = 0 there)."""
    model, batches, rho = _mlp(), _batches(), 0.5
    with torch.no_grad():
        model[2].bias.zero_()
    reference = _reference_sam(model, batches, torch.optim.SGD, rho, adaptive=True, eta=eta, lr=0.1)
    ours = copy.deepcopy(model)
    opt = SAM(ours.parameters(), torch.optim.SGD, rho=rho, adaptive=True, asam_eta=eta, lr=0.1)
    for i, batch in enumerate(batches):
        _loss(ours, batch).backward()
        opt.first_step(zero_grad=True)
        if i == 0:
            assert bool((ours[2].bias != 0).any()) == (eta > 0)  # w + e(w) of the zero bias
        _loss(ours, batch).backward()
        opt.second_step(zero_grad=True)
    assert _max_diff(ours, reference) <= 1e-6  # float32, a different order of sums: rounding near 1e-7
    other = _reference_sam(model, batches, torch.optim.SGD, rho, adaptive=True, eta=0.05 if eta else PAPER_ETA, lr=0.1)
    assert _max_diff(other, reference) > 1e-5  # another eta lands elsewhere: the comparison sees eta


def test_asam_eta_is_per_group_and_checked():
    model = _mlp()
    opt = SAM(
        [{"params": model[0].parameters(), "asam_eta": 0.0}, {"params": model[2].parameters()}],
        torch.optim.SGD,
        adaptive=True,
        lr=0.1,
    )
    assert [g["asam_eta"] for g in opt.param_groups] == [0.0, PAPER_ETA]
    with pytest.raises(ValueError, match="asam_eta"):
        SAM(model.parameters(), torch.optim.SGD, adaptive=True, asam_eta=-0.1, lr=0.1)


@pytest.mark.parametrize(("base_cls", "base_kw"), BASES, ids=["sgd_momentum", "adamw"])
def test_state_dict_round_trips(base_cls, base_kw):
    model, batches = _mlp(), _batches(6)
    trained, opt = _run_samtune(model, batches[:3], base_cls, 0.05, **base_kw)
    state = copy.deepcopy(opt.state_dict())
    assert state["state"], "the base optimizer's state (momentum, moments) is saved"
    assert state["param_groups"][0]["rho"] == 0.05

    resumed_model = copy.deepcopy(trained)
    resumed = SAM(resumed_model.parameters(), base_cls, rho=0.3, **base_kw)  # rho comes from the state
    resumed.load_state_dict(state)
    assert resumed.param_groups[0]["rho"] == 0.05
    assert resumed.param_groups is resumed.base_optimizer.param_groups
    assert resumed.state is resumed.base_optimizer.state

    for batch in batches[3:]:
        for m, o in ((trained, opt), (resumed_model, resumed)):
            _loss(m, batch).backward()
            o.first_step(zero_grad=True)
            _loss(m, batch).backward()
            o.second_step(zero_grad=True)
    assert _max_diff(trained, resumed_model) == 0.0


def test_schedulers_drive_the_base_optimizer():
    model = _mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _loss(model, _batches(1)[0]).backward()
    opt.step(lambda: _loss(model, _batches(1)[0]).backward())
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_per_group_rho():
    model = _mlp()
    first, last = model[0], model[2]
    opt = SAM(
        [{"params": first.parameters(), "rho": 0.0}, {"params": last.parameters()}],
        torch.optim.SGD,
        rho=0.1,
        lr=0.1,
    )
    before = copy.deepcopy(model)
    _loss(model, _batches(1)[0]).backward()
    opt.first_step()
    assert torch.equal(first.weight, before[0].weight)  # rho=0: not moved
    assert not torch.equal(last.weight, before[2].weight)
    opt.second_step()


def test_step_without_closure_or_first_step_says_what_to_do():
    opt = SAM(_mlp().parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    with pytest.raises(ValueError, match="rho"):
        SAM(_mlp().parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)


def test_float64_weights_take_a_float64_norm():
    g = [torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([12.0], dtype=torch.float64)]
    norm = ascent_norm(g, [torch.ones(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)], adaptive=True)
    assert norm.dtype == torch.float64 and norm.item() == 13.0


@pytest.mark.parametrize("floor", [1, 4 * 2**20], ids=["many-chunks", "one-chunk"])
def test_save_and_climb_saves_w_exactly_and_frees_e_as_it_goes(monkeypatch, floor):
    import samtune.optim.functional as F

    monkeypatch.setattr(F, "CHUNK_FLOOR", floor)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen) for n in (5, 300, 7, 40, 1)]
    original = [p.clone() for p in params]
    e = [torch.randn(p.shape, generator=gen) for p in params]
    expected = [w + x for w, x in zip(original, e)]
    chunks = list(F._chunks(e))
    assert sorted(i for c in chunks for i in c) == list(range(5))
    assert (len(chunks) > 1) == (floor == 1)
    saved = F.save_and_climb_(params, e)
    assert all(x is None for x in e)  # each chunk's e(w) was dropped once applied
    assert all(torch.equal(s, w) for s, w in zip(saved, original))
    assert all(torch.equal(p, x) for p, x in zip(params, expected))


def test_save_and_climb_reuses_a_matching_copy_and_ignores_a_stale_one():
    import samtune.optim.functional as F

    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    out = [torch.zeros(2), torch.zeros(1)]
    saved = F.save_and_climb_(params, [torch.ones(2), torch.ones(1)], out=out)
    assert saved[0] is out[0] and saved[1] is out[1]  # no new tensor
    assert saved[0].tolist() == [1.0, 2.0] and params[0].tolist() == [2.0, 3.0]
    stale = [torch.zeros(3), torch.zeros(1)]  # another shape: a fresh copy instead
    again = F.save_and_climb_(params, [torch.ones(2), torch.ones(1)], out=stale)
    assert again[0] is not stale[0] and again[0].tolist() == [2.0, 3.0]


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh-copy", "kept-copy"])
def test_save_and_climb_undoes_a_partial_climb_when_a_chunk_fails(monkeypatch, reuse):
    """An error in chunk 3 (out of memory, Ctrl-C) leaves every weight at w exactly, and is raised."""
    import samtune.optim.functional as F

    monkeypatch.setattr(F, "CHUNK_FLOOR", 1)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen) for n in (5, 300, 7, 40, 1)]
    original = [p.clone() for p in params]
    e = [torch.randn(p.shape, generator=gen) for p in params]
    assert len(list(F._chunks(e))) >= 3
    calls, real = [0], F.climb_

    def climb(ps, xs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        real(ps, xs)

    monkeypatch.setattr(F, "climb_", climb)
    out = [torch.zeros_like(p) for p in params] if reuse else None
    with pytest.raises(RuntimeError, match="allocate"):
        F.save_and_climb_(params, e, out=out)
    assert calls[0] == 3  # two chunks had climbed
    assert all(torch.equal(p, w) for p, w in zip(params, original))


def test_aliased_gradients_are_scaled_once():
    """Gradients that share memory (one tensor twice, a view, a stride-0 expansion) give the e(w) of distinct copies."""
    base = torch.arange(1.0, 13.0).reshape(3, 4)
    grads = [base, base, base[0], torch.tensor(2.0).expand(4), torch.tensor([5.0, 6.0])]
    params = [torch.full_like(g, 0.5) + i for i, g in enumerate(grads)]
    independent = [g.clone() for g in grads]  # what a loop that never writes into the inputs sees
    for adaptive in (False, True):
        rho = 0.3
        shared = [g.clone() for g in grads[:1]]
        shared = [shared[0], shared[0], shared[0][0], torch.tensor(2.0).expand(4), grads[4].clone()]
        _, e, norm = sam_perturbation(shared, params, rho, adaptive=adaptive)
        weight = [p.abs() if adaptive else torch.ones_like(p) for p in params]
        expected_norm = torch.sqrt(sum(((w * g) ** 2).sum() for w, g in zip(weight, independent)))
        torch.testing.assert_close(norm, expected_norm)
        for x, g, w in zip(e, independent, weight):
            torch.testing.assert_close(x, rho * w * w * g / (expected_norm + 1e-12))
