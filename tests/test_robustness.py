"""FGSM / PGD in pixel units on normalised inputs (droplab.evaluate.robustness)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from droplab.errors import InvalidValue, UnknownName
from droplab.evaluate.robustness import attack_batch, fgsm, pgd, robust_accuracy

MEAN, STD = (0.5, 0.25, 0.4), (0.2, 0.5, 0.1)


def _linear_binary(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(2, 12, generator=g))
        model[1].bias.zero_()
    # pixels in [0.3, 0.7]: an ε=0.1 step never reaches the [0, 1] clip
    x_pix = 0.3 + 0.4 * torch.rand(8, 3, 2, 2, generator=g)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return model, (x_pix - m) / s, torch.randint(0, 2, (8,), generator=g)


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    return z.gather(1, y[:, None])[:, 0] - z.gather(1, (1 - y)[:, None])[:, 0]


def test_fgsm_and_pgd_reach_the_analytic_worst_case_of_a_linear_model() -> None:
    # For logits W·((x - m)/s) the margin z_y - z_o is linear in the pixels with weights
    # v = (w_y - w_o)/s; its minimum over the L∞ ball of radius ε is margin - ε·‖v‖₁, and
    # the signed gradient points at that corner. PGD (random start, cumulative step
    # 2.5ε > 2ε) must end at the same corner. Tolerance: float32 round-off only.
    model, x, y = _linear_binary()
    eps = 0.1
    w = model[1].weight.detach()
    s = torch.tensor(STD).repeat_interleave(4)
    v = (w[y] - w[1 - y]) / s
    expected = _margin(model, x, y) - eps * v.abs().sum(1)
    adv_f = fgsm(model, x, y, eps, mean=MEAN, std=STD)
    adv_p = pgd(model, x, y, eps, mean=MEAN, std=STD, steps=20,
                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_margin(model, adv_f, y), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_margin(model, adv_p, y), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_perturbation_stays_in_the_pixel_ball_and_range(attack: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 3))
    model.train()
    x_pix = torch.rand(32, 3, 2, 2)
    x_pix[:4] = 1.0  # saturated pixels must stay clipped at 1
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = (x_pix - m) / s
    y = torch.randint(0, 3, (32,))
    eps = 8 / 255
    adv = attack_batch(model, x, y, attack, eps, mean=MEAN, std=STD, steps=5)
    adv_pix = adv * s + m
    assert (adv_pix - x_pix).abs().max() <= eps + 1e-5
    assert adv_pix.min() >= -1e-6 and adv_pix.max() <= 1 + 1e-6
    assert (adv_pix - x_pix).abs().max() > eps / 2  # it did move
    assert model.training  # the training flag is restored
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_random_start_is_reproducible_with_a_generator() -> None:
    model, x, y = _linear_binary(3)
    a = pgd(model, x, y, 0.05, mean=MEAN, std=STD, steps=1, alpha=1e-6,
            generator=torch.Generator().manual_seed(7))
    b = pgd(model, x, y, 0.05, mean=MEAN, std=STD, steps=1, alpha=1e-6,
            generator=torch.Generator().manual_seed(7))
    c = pgd(model, x, y, 0.05, mean=MEAN, std=STD, steps=1, alpha=1e-6,
            generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_robust_accuracy_eps_zero_is_clean_accuracy_and_attacks_lower_it() -> None:
    model, x, y = _linear_binary(5)
    with torch.no_grad():
        y = model(x).argmax(1)  # every clean prediction is right
    loader = [(x[:5], y[:5]), (x[5:], y[5:])]
    kw = {"mean": MEAN, "std": STD}
    assert robust_accuracy(model, loader, attack="fgsm", eps=0.0, **kw) == 1.0
    # ε = 0.5 in pixels moves every margin by 0.5·‖v‖₁, far more than any margin here
    m = _margin(model, x, y)
    w = model[1].weight.detach()
    v = (w[y] - w[1 - y]) / torch.tensor(STD).repeat_interleave(4)
    assert bool((m < 0.2 * v.abs().sum(1)).all())
    assert robust_accuracy(model, loader, attack="pgd", eps=0.5, steps=10, **kw) == 0.0
    assert robust_accuracy(model, loader, attack="fgsm", eps=0.0, max_samples=3, **kw) == 1.0


def test_bad_attack_options_are_one_line_user_errors() -> None:
    model, x, y = _linear_binary()
    with pytest.raises(UnknownName, match="unknown attack 'cw'"):
        attack_batch(model, x, y, "cw", 0.1, mean=MEAN, std=STD)
    with pytest.raises(InvalidValue, match="--eps"):
        fgsm(model, x, y, 2.0, mean=MEAN, std=STD)
    with pytest.raises(InvalidValue, match="--attack-steps"):
        pgd(model, x, y, 0.1, mean=MEAN, std=STD, steps=0)
