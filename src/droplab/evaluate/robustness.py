"""Adversarial robustness under L∞ attacks: FGSM and PGD with a random start.

- FGSM (Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial
  Examples"): ``x' = clip(x + ε · sign(∇ₓ L(f(x), y)), 0, 1)``.
- PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks"): start at a uniform point of the ε-ball, then ``steps`` signed-gradient steps of
  size ``α`` (default ``2.5 ε / steps``), each projected back onto the ε-ball and [0, 1].

droplab's loaders yield *normalised* images ``(x_pixel - mean) / std``. Every attack here
takes and returns normalised tensors but measures ε in pixel units ([0, 1]): it maps the
batch back to pixels, perturbs and clips there, and normalises again, so ``eps=8/255``
means the same thing on MNIST and CIFAR-10 whatever their statistics.

The model is run in eval mode (dropout off), so the attack sees the deterministic network
that is being scored; the model's training flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import InvalidValue, unknown_name

ATTACKS = ("fgsm", "pgd")


def _stats(mean: Sequence[float], std: Sequence[float], like: Tensor) -> tuple[Tensor, Tensor]:
    shape = (1, -1) + (1,) * (like.dim() - 2)
    m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).reshape(shape)
    s = torch.as_tensor(std, dtype=like.dtype, device=like.device).reshape(shape)
    return m, s


def check_attack(attack: str, eps: float, steps: int = 10, alpha: float | None = None) -> None:
    """Validate attack options with one-line :class:`~droplab.errors.UserError` messages."""
    if attack not in ATTACKS:
        raise unknown_name("attack", attack, ATTACKS)
    if not (0.0 <= float(eps) <= 1.0):
        raise InvalidValue(f"--eps must be in [0, 1] (pixel units, e.g. 0.1 or 8/255), got {eps}")
    if attack == "pgd" and int(steps) < 1:
        raise InvalidValue(f"--attack-steps must be at least 1 for PGD, got {steps}")
    if alpha is not None and not float(alpha) > 0:
        raise InvalidValue(f"--attack-alpha must be positive, got {alpha}")


def _loss_grad(model: nn.Module, x_pix: Tensor, y: Tensor, m: Tensor, s: Tensor) -> Tensor:
    x_pix = x_pix.detach().requires_grad_(True)
    loss = F.cross_entropy(model((x_pix - m) / s).float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_pix)
    return grad


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """One signed-gradient step of size ``eps`` (pixel units); returns normalised inputs."""
    check_attack("fgsm", eps)
    m, s = _stats(mean, std, x)
    x_pix = x.detach() * s + m
    if eps == 0:
        return x.detach().clone()
    with _eval_mode(model):
        grad = _loss_grad(model, x_pix, y, m, s)
    adv = (x_pix + eps * grad.sign()).clamp_(0.0, 1.0)
    return ((adv - m) / s).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient descent in the L∞ ball of radius ``eps`` (pixel units).

    ``alpha`` defaults to ``2.5 * eps / steps`` (Madry et al.); ``random_start`` begins
    at a uniform draw from the ball (drawn with ``generator`` on the CPU, so it is
    reproducible on every device). Returns normalised inputs.
    """
    check_attack("pgd", eps, steps, alpha)
    m, s = _stats(mean, std, x)
    x_pix = (x.detach() * s + m).clamp(0.0, 1.0)
    if eps == 0:
        return x.detach().clone()
    step = float(alpha) if alpha is not None else 2.5 * eps / steps
    adv = x_pix.clone()
    if random_start:
        noise = torch.rand(x_pix.shape, generator=generator, dtype=x_pix.dtype)
        adv = (adv + (2 * noise.to(x_pix.device) - 1) * eps).clamp_(0.0, 1.0)
    with _eval_mode(model):
        for _ in range(int(steps)):
            grad = _loss_grad(model, adv, y, m, s)
            adv = adv + step * grad.sign()
            adv = torch.min(torch.max(adv, x_pix - eps), x_pix + eps).clamp_(0.0, 1.0)
    return ((adv - m) / s).detach()


class _eval_mode:
    """Context manager: model in eval mode, parameters frozen; both restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.training = self.model.training
        self.grads = [p.requires_grad for p in self.model.parameters()]
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.training)
        for p, g in zip(self.model.parameters(), self.grads):
            p.requires_grad_(g)


def attack_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str,
    eps: float,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = 10,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dispatch to :func:`fgsm` or :func:`pgd` by name."""
    if attack == "fgsm":
        return fgsm(model, x, y, eps, mean=mean, std=std)
    if attack == "pgd":
        return pgd(model, x, y, eps, mean=mean, std=std, steps=steps, alpha=alpha,
                   generator=generator)
    raise unknown_name("attack", attack, ATTACKS)


def robust_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    attack: str,
    eps: float,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    steps: int = 10,
    alpha: float | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> float:
    """Accuracy on adversarial examples built per batch from ``loader``'s normalised inputs.

    Uses at most ``max_samples`` examples (the first ones the loader yields). Returns NaN
    for an empty loader.
    """
    check_attack(attack, eps, steps, alpha)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    correct, n = 0, 0
    for x, y in loader:
        if max_samples is not None and n >= max_samples:
            break
        if max_samples is not None:
            x, y = x[: max_samples - n], y[: max_samples - n]
        x, y = x.to(device), y.to(device)
        adv = attack_batch(model, x, y, attack, eps, mean=mean, std=std, steps=steps,
                           alpha=alpha, generator=gen)
        with torch.no_grad(), _eval_mode(model):
            correct += int((model(adv).argmax(1) == y).sum())
        n += int(y.numel())
    return correct / n if n else float("nan")
