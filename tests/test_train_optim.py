"""AdamW groups (official no-decay rule) and the official linear-warmup cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from videollama.train.optim import LinearWarmupCosineLR, build_optimizer, param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.video_query_tokens = nn.Parameter(torch.zeros(1, 4, 8))  # 3-D: decayed (official)
        self.proj = nn.Linear(8, 8)  # weight decayed, bias not
        self.norm = nn.LayerNorm(8)  # 1-D: not decayed
        self.kiln = nn.Linear(8, 8, bias=False)  # "ln" substring: not decayed (official quirk)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_param_groups_official_rule():
    decay, no_decay = param_groups(Toy().named_parameters(), weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["names"] == ["video_query_tokens", "proj.weight"]
    assert no_decay["names"] == ["proj.bias", "norm.weight", "norm.bias", "kiln.weight"]
    opt = build_optimizer(Toy().named_parameters(), lr=1e-4, weight_decay=0.05)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["lr"] == 1e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == 6  # frozen parameters left out
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(Toy().frozen.named_parameters(), lr=1e-4, weight_decay=0.05)


def vl_stage1(optimizer=None):
    return LinearWarmupCosineLR(optimizer, init_lr=1e-4, min_lr=8e-5, warmup_lr=1e-6, warmup_steps=2500,
                                max_epoch=5, iters_per_epoch=2500)


@pytest.mark.parametrize(
    ("epoch", "step", "expected"),
    [
        (0, 0, 1e-6),  # warmup starts at warmup_lr
        (0, 1250, 1e-6 + 99e-6 * 0.5),  # 5.05e-5
        (0, 2499, 1e-6 + 99e-6 * 2499 / 2500),  # 9.99604e-5: never quite init_lr
        (1, 0, 8e-5 + 2e-5 * 0.5 * (1 + 0.8090169943749475)),  # cosine from t=2500: cos(pi/5)
        (2, 1250, 9e-5),  # t = 6250 = T/2: cos(pi/2) = 0 -> midpoint
        (4, 2499, 8e-5 + 1e-5 * (1 + math.cos(math.pi * 12499 / 12500))),
    ],
)
def test_vl_stage1_schedule_hand_computed(epoch, step, expected):
    assert vl_stage1().lr_at(epoch, step) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_al_stage2_partial_warmup_and_quirk():
    sched = LinearWarmupCosineLR(None, init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=400,
                                 max_epoch=3, iters_per_epoch=1000)
    assert sched.lr_at(0, 200) == pytest.approx(1.55e-5)
    assert sched.lr_at(0, 400) == pytest.approx(1e-5 + 1e-5 * (1 + 0.9135454576426009))  # cos(0.4 pi / 3)
    assert sched.step_global(1400) == pytest.approx(sched.lr_at(1, 400))
    # warmup longer than an epoch: the official code interpolates with the within-epoch step
    odd = LinearWarmupCosineLR(None, init_lr=1e-4, min_lr=0.0, warmup_lr=0.0, warmup_steps=150,
                               max_epoch=2, iters_per_epoch=100)
    assert odd.lr_at(1, 20) == pytest.approx(1e-4 * 20 / 150)


def test_scheduler_sets_optimizer_lr_and_resumes():
    opt = build_optimizer(Toy().named_parameters(), lr=1e-4, weight_decay=0.05)
    sched = vl_stage1(opt)
    for t in range(3000, 3005):
        lr = sched.step_global(t)
    assert all(g["lr"] == lr for g in opt.param_groups)
    opt2 = build_optimizer(Toy().named_parameters(), lr=1e-4, weight_decay=0.05)
    resumed = vl_stage1(opt2)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.last_step == 504 and all(g["lr"] == lr for g in opt2.param_groups)
    other = LinearWarmupCosineLR(None, init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=1000,
                                 max_epoch=3, iters_per_epoch=1000)
    with pytest.raises(ValueError, match="schedule"):
        other.load_state_dict(sched.state_dict())
