"""Temperature scaling: recovers a known temperature (tolerance from the Fisher
information), sits at a zero of the NLL gradient, agrees with torch-uncertainty's
L-BFGS ``TemperatureScaler``, keeps every prediction, and cuts ECE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from droplab.errors import InvalidValue
from droplab.uncertainty import (
    Temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probs,
)
from peers import torch_uncertainty


def _data(n: int, k: int, true_t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``z`` whose labels are drawn from ``softmax(z / true_t)``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    y = torch.multinomial(F.softmax(z / true_t, 1), 1, generator=g).squeeze(1)
    return z, y


def test_recovers_the_true_temperature_within_4_sigma() -> None:
    # the MLE of β = 1/T has variance 1 / (N I(β)); I(β) = E Var_{c~softmax(βz)}(z_c)
    for true_t, seed in ((2.5, 0), (0.7, 1)):
        z, y = _data(20000, 10, true_t, seed)
        fit = fit_temperature(z, y)
        beta = 1 / true_t
        p = F.softmax(beta * z, 1)
        info = float(((p * z**2).sum(1) - (p * z).sum(1) ** 2).mean())
        sigma = 1 / math.sqrt(len(y) * info)
        assert abs(1 / fit.temperature - beta) < 4 * sigma
        assert fit.nll_after < fit.nll_before
        assert fit.images == 20000 and fit.mc_samples == 0


def test_fit_is_a_stationary_point_of_the_nll() -> None:
    z, y = _data(3000, 5, 1.8, 2)
    fit = fit_temperature(z, y)
    u = torch.tensor(math.log(fit.temperature), dtype=torch.float64, requires_grad=True)
    F.cross_entropy(z / u.exp(), y).backward()
    assert abs(float(u.grad)) < 1e-5
    # and a minimum: a 1 % change either way raises the NLL
    for f in (0.99, 1.01):
        assert F.cross_entropy(z / (fit.temperature * f), y) > F.cross_entropy(
            z / fit.temperature, y)


def test_matches_torch_uncertainty_temperature_scaler() -> None:
    _, post = torch_uncertainty()
    z, y = _data(2000, 10, 2.0, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(z.float(), y),
                                         batch_size=500)
    ref = post.TemperatureScaler(model=None, max_iter=500)
    ref.fit(loader, progress=False)
    theirs = float(ref.temperature[0].detach())
    ours = fit_temperature(z, y).temperature
    # same optimum; L-BFGS in float32 stops within a few 1e-3 of it, never below our NLL
    assert ours == pytest.approx(theirs, rel=5e-3)
    assert F.cross_entropy(z / ours, y) <= F.cross_entropy(z / theirs, y) + 1e-12


def test_keeps_predictions_and_cuts_ece() -> None:
    z, y = _data(5000, 10, 3.0, 4)  # the model is 3× overconfident
    fit = fit_temperature(z, y)
    before, after = F.softmax(z, 1), fit.apply(z)
    assert torch.equal(before.argmax(1), after.argmax(1))
    ece_before = expected_calibration_error(before, y)
    ece_after = expected_calibration_error(after, y)
    assert ece_after <= 0.5 * ece_before


def test_mc_logits_fit_the_averaged_prediction() -> None:
    g = torch.Generator().manual_seed(5)
    z, y = _data(3000, 6, 2.0, 5)
    passes = z.unsqueeze(0) + 0.8 * torch.randn(12, *z.shape, generator=g, dtype=z.dtype)
    fit = fit_temperature(passes, y)
    assert fit.mc_samples == 12

    def nll(t: float) -> float:
        mean = F.softmax(passes / t, -1).mean(0)
        return float(-mean.gather(1, y[:, None]).log().mean())

    assert fit.nll_after == pytest.approx(nll(fit.temperature), rel=1e-9)
    assert nll(fit.temperature) < min(nll(fit.temperature * 0.97), nll(fit.temperature * 1.03))
    # T identical passes are the deterministic fit
    same = fit_temperature(z.unsqueeze(0).expand(4, -1, -1), y)
    assert same.temperature == pytest.approx(fit_temperature(z, y).temperature, rel=1e-6)


def test_probabilities_work_as_logits() -> None:
    z, y = _data(1000, 4, 1.5, 6)
    probs = F.softmax(z, 1)
    assert torch.allclose(F.softmax(logits_from_probs(probs), 1), probs, atol=1e-12)
    from_probs = fit_temperature(logits_from_probs(probs), y)
    assert from_probs.temperature == pytest.approx(fit_temperature(z, y).temperature, rel=1e-6)
    assert torch.allclose(from_probs.apply_to_probs(probs), from_probs.apply(z).double(),
                          atol=1e-6)


def test_record_round_trip_and_bad_records() -> None:
    z, y = _data(500, 3, 2.0, 7)
    fit = fit_temperature(z, y)
    assert Temperature.from_dict(fit.to_dict()) == fit
    for bad in ({}, {"temperature": "x"}, {"temperature": -1.0}, {"temperature": float("inf")}):
        with pytest.raises(InvalidValue):
            Temperature.from_dict(bad)


def test_bad_inputs() -> None:
    z, y = _data(20, 3, 1.0, 8)
    with pytest.raises(InvalidValue, match="labels"):
        fit_temperature(z, y[:5])
    with pytest.raises(InvalidValue, match="NaN"):
        fit_temperature(torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidValue, match="2 classes"):
        fit_temperature(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidValue, match="class indices"):
        fit_temperature(z, y + 5)
    with pytest.raises(InvalidValue, match=r"\(N, K\)"):
        fit_temperature(torch.zeros(3), torch.zeros(3, dtype=torch.long))
