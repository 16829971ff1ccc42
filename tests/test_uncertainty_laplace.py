"""Last-layer Laplace through laplace-torch (optional extra): a valid, softer predictive
than the point estimate; without the package, one line naming the extra."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from droplab.uncertainty import laplace as LA


def _fitted() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 0] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_last_layer_laplace_softens_the_point_estimate() -> None:
    if not LA.available():
        pytest.skip(f"laplace-torch not installed ({LA.EXTRA})")
    model, x, y = _fitted()
    la = LA.fit_last_layer(model, [(x[i:i + 100], y[i:i + 100]) for i in range(0, 300, 100)])
    far = torch.tensor([[8.0, -8.0], [-9.0, 9.0], [10.0, 10.0]])  # far from the data
    probs = LA.predict(la, torch.cat([x, far]))
    assert probs.shape == (303, 3)
    assert torch.allclose(probs.sum(1), torch.ones(303), atol=1e-5) and probs.min() >= 0
    with torch.no_grad():
        point = torch.softmax(model(torch.cat([x, far])), 1)
    # the probit GLM predictive only ever moves probabilities towards uniform
    assert float(probs.max(1).values.mean()) < float(point.max(1).values.mean())
    assert float((probs.argmax(1)[:300] == point.argmax(1)[:300]).double().mean()) > 0.97


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "laplace", None)  # import laplace → ImportError
    assert not LA.available()
    with pytest.raises(LA.LaplaceUnavailable, match=r"pip install 'droplab\[laplace\]'"):
        LA.fit_last_layer(nn.Linear(2, 2), [(torch.zeros(1, 2), torch.zeros(1).long())])
