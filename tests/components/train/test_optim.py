"""KahanAdamW (updates below half an ulp survive; otherwise AdamW), make_optimizer, the schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from components.common.config import TrainConfig
from components.train.optim import KahanAdamW, lr_lambda, make_optimizer, make_scheduler

BETAS = (0.9, 0.95)


def _weights() -> torch.Tensor:
    # Magnitudes ~1.0 (half-ulp 3e-8 / 6e-8) and ~0.3 (half-ulp 1.5e-8): a 5e-9 update rounds away.
    return torch.tensor([0.9731, 1.0213, -0.9877, 0.3127, -0.2894, 0.3302])


def test_kahan_keeps_updates_below_half_an_ulp_plain_adamw_loses_them() -> None:
    lr, steps = 5e-9, 2000
    w0 = _weights()
    grad = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # constant sign: Adam's direction ≈ ±1
    moved = {}
    for name, cls in (("kahan", KahanAdamW), ("plain", torch.optim.AdamW)):
        p = torch.nn.Parameter(w0.clone())
        opt = cls([p], lr=lr, betas=BETAS, eps=1e-8, weight_decay=0.0)
        for _ in range(steps):
            p.grad = grad.clone()
            opt.step()
        moved[name] = p.detach().double() - w0.double()
    expected = -torch.sign(grad).double() * steps * lr  # 1e-5 against the gradient
    torch.testing.assert_close(moved["kahan"], expected, rtol=0.01, atol=0.0)
    assert torch.equal(moved["plain"], torch.zeros_like(expected))  # every update rounded away


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def _groups(model: torch.nn.Module, lr0: float, lr1: float) -> list[dict]:
    return [{"name": "first", "params": list(model[0].parameters()), "lr": lr0},
            {"name": "last", "params": list(model[2].parameters()), "lr": lr1,
             "weight_decay": 0.0}]


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 8, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_parity_with_torch_adamw_at_a_large_lr() -> None:
    ours, ref = _model(), _model()
    opt_ours = KahanAdamW(_groups(ours, 1e-3, 2e-3), betas=BETAS, eps=1e-8, weight_decay=0.1)
    opt_ref = torch.optim.AdamW(_groups(ref, 1e-3, 2e-3), betas=BETAS, eps=1e-8,
                                weight_decay=0.1, foreach=False)
    _train(ours, opt_ours, 20, seed=1)
    _train(ref, opt_ref, 20, seed=1)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # The weights did move (parity is not two frozen models).
    assert not torch.allclose(ours[0].weight, _model()[0].weight)


def test_state_dict_round_trip_continues_identically() -> None:
    model = _model()
    opt = KahanAdamW(_groups(model, 5e-9, 1e-6), betas=BETAS, eps=1e-8, weight_decay=0.01)
    _train(model, opt, 5, seed=2)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    state = saved_opt["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "comp"} and state["step"] == 5
    assert state["comp"].abs().sum() > 0  # lr 5e-9: rounding was compensated, and that is saved
    _train(model, opt, 5, seed=3)

    resumed = _model(seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = KahanAdamW(_groups(resumed, 5e-9, 1e-6), betas=BETAS, eps=1e-8, weight_decay=0.01)
    opt2.load_state_dict(saved_opt)
    _train(resumed, opt2, 5, seed=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for sa, sb in zip(opt.state.values(), opt2.state.values()):
        assert sa["step"] == sb["step"]
        for k in ("exp_avg", "exp_avg_sq", "comp"):
            assert torch.equal(sa[k], sb[k])


def test_each_group_moves_at_its_own_lr() -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = KahanAdamW(_groups(model, 1e-3, 0.0), betas=BETAS, eps=1e-12)
    _train(model, opt, 1, seed=4)
    after = list(model.parameters())
    # First Adam step: |Δ| = lr·|g|/(|g| + eps) = lr (to eps) for every weight with a gradient.
    torch.testing.assert_close((after[0] - before[0]).abs(), torch.full_like(before[0], 1e-3),
                               rtol=1e-3, atol=0.0)
    assert torch.equal(after[2], before[2]) and torch.equal(after[3], before[3])  # lr 0
    assert [g["name"] for g in opt.param_groups] == ["first", "last"]


def test_refuses_non_fp32_weights() -> None:
    with pytest.raises(TypeError, match="fp32"):
        KahanAdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))], lr=1e-3)


def test_params_without_gradient_are_left_alone() -> None:
    model = _model()
    for p in model[2].parameters():
        p.requires_grad_(False)  # like the depformer under a text-only loss: grad stays None
    frozen = [p.detach().clone() for p in model[2].parameters()]
    opt = KahanAdamW(list(model.parameters()), lr=1e-3)
    _train(model, opt, 2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model[2].parameters(), frozen))
    assert all(p not in opt.state for p in model[2].parameters())


@pytest.mark.parametrize("master, cls", [("kahan", KahanAdamW), ("plain", torch.optim.AdamW)])
def test_make_optimizer(master: str, cls: type) -> None:
    cfg = TrainConfig(master_weights=master, adam_betas=(0.8, 0.9), adam_eps=1e-6,
                      weight_decay=0.05)
    model = _model()
    groups = _groups(model, 5e-9, 1e-6) + [{"name": "empty", "params": [], "lr": 1.0}]
    opt = make_optimizer(groups, cfg)
    assert type(opt) is cls
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == \
        [("first", 5e-9, 0.05), ("last", 1e-6, 0.0)]
    assert all(tuple(g["betas"]) == (0.8, 0.9) and g["eps"] == 1e-6 for g in opt.param_groups)


def test_lr_lambda_at_known_steps() -> None:
    kw = dict(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    f = {s: lr_lambda(s, schedule="cosine", **kw) for s in range(20)}
    assert [f[s] for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0
    assert math.isclose(f[9], 0.1 + 0.9 * 0.5)  # half-way through the decay
    assert math.isclose(f[14], 0.1) and math.isclose(f[19], 0.1)  # floor at and after the end
    assert all(f[s] >= f[s + 1] for s in range(4, 19))
    lin = [lr_lambda(s, schedule="linear", **kw) for s in (4, 9, 14, 15)]
    assert lin == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [lr_lambda(s, schedule="constant", **kw) for s in (0, 3, 4, 100)] == [0.25, 1, 1, 1]
    assert lr_lambda(0, schedule="cosine", warmup_steps=0, total_steps=10, min_lr_ratio=0) == 1
    with pytest.raises(ValueError):
        lr_lambda(5, schedule="step", **kw)


def test_scheduler_scales_each_group_and_resumes() -> None:
    cfg = TrainConfig(warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    model = _model()
    opt = make_optimizer(_groups(model, 1e-3, 4e-3), cfg)
    sched = make_scheduler(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(3):
        lrs += [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4, 2e-3, 1e-3, 4e-3, 1e-3, 4e-3])
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    sched.step()
    expected = [g["lr"] for g in opt.param_groups]  # step 4 of 6: 1 − 2/4 = 0.5

    opt2 = make_optimizer(_groups(_model(), 1e-3, 4e-3), cfg)
    sched2 = make_scheduler(opt2, cfg, total_steps=6)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(expected)
    assert expected == pytest.approx([5e-4, 2e-3])
