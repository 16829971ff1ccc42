"""Last-layer Laplace approximation (MacKay 1992; Daxberger et al., NeurIPS 2021 "Laplace
Redux") through the optional ``laplace-torch`` package: ``pip install 'droplab[laplace]'``.

The trained network is kept as it is (dropout off); a Gaussian posterior is fitted over
the weights of its *last* linear layer with a Kronecker-factored GGN Hessian, the prior
precision is tuned by maximising the marginal likelihood, and predictions use the probit
approximation of the GLM predictive. It is a post-hoc baseline beside MC dropout that,
like temperature scaling, needs no retraining.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from droplab.errors import UserError

EXTRA = "pip install 'droplab[laplace]'"


class LaplaceUnavailable(UserError):
    """``laplace-torch`` is not installed (or cannot be imported)."""


def _laplace() -> Any:
    # laplace-torch is an optional extra with heavy dependencies: imported only when used
    try:
        from laplace import Laplace
    except Exception as exc:  # absent, or a broken optional install
        raise LaplaceUnavailable(f"last-layer Laplace needs laplace-torch ({type(exc).__name__});"
                                 f" install the extra: {EXTRA}") from None
    return Laplace


def available() -> bool:
    """Whether :func:`fit_last_layer` can run here."""
    try:
        _laplace()
    except LaplaceUnavailable:
        return False
    return True


class _Batches(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """The ``len(loader.dataset)`` laplace-torch reads, over ready-made batches."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.x = torch.cat([b[0] for b in batches])
        self.y = torch.cat([b[1] for b in batches])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]


def fit_last_layer(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                   batch_size: int = 256) -> Any:
    """Fit a Kronecker last-layer Laplace posterior on ``(x, y)`` training batches and tune
    its prior precision (marginal likelihood); returns the fitted ``laplace`` object, whose
    :func:`predict` gives probabilities."""
    laplace = _laplace()
    model.eval()
    data = _Batches([(x.detach().cpu(), y.detach().cpu()) for x, y in batches])
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    la = laplace(model, "classification", subset_of_weights="last_layer",
                 hessian_structure="kron")
    device = next(model.parameters()).device
    la.fit(_OnDevice(loader, device))
    la.optimize_prior_precision(method="marglik")
    return la


class _OnDevice:
    """A DataLoader whose batches land on ``device`` (laplace-torch reads ``.dataset``)."""

    def __init__(self, loader: torch.utils.data.DataLoader[Any], device: torch.device) -> None:
        self.loader, self.dataset, self.device = loader, loader.dataset, device

    def __iter__(self) -> Any:
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)

    def __len__(self) -> int:
        return len(self.loader)


@torch.no_grad()
def predict(la: Any, x: Tensor) -> Tensor:
    """``(N, K)`` probabilities of the GLM predictive with the probit approximation."""
    return la(x, pred_type="glm", link_approx="probit").float()


__all__ = ["EXTRA", "LaplaceUnavailable", "available", "fit_last_layer", "predict"]
