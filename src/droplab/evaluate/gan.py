"""GAN sample quality and diversity: FID, KID, IS, precision/recall and mode coverage.

All scores work on *features*, so any feature extractor can be used:

- :class:`ClassifierFeatures`: the penultimate features (``model.forward_features``) and
  logits (``model.head``) of a droplab classifier run (``droplab train``), for offline,
  domain-specific scores. On MNIST-like data these are more telling than Inception
  features of 28-px digits up-sampled to 299 px.
- :class:`InceptionFeatures`: the 2048-d pool features of the FID Inception-v3
  (torchmetrics / torch-fidelity); needs ``pip install torch-fidelity`` and its weights,
  otherwise a one-line :class:`~droplab.errors.WeightsUnavailable`.

Scores (built on torchmetrics, which takes a custom feature ``nn.Module``; here an
identity over pre-computed features so one extractor pass serves every metric):

- FID (Heusel et al. 2017): ``‖μ_r − μ_f‖² + tr(Σ_r + Σ_f − 2(Σ_r Σ_f)^½)``.
- KID (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  ``(xᵀy / d + 1)³``, mean ± std over random subsets.
- IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) ‖ p(y))`` with the classifier's softmax.
- Precision/recall (Kynkäänniemi et al. 2019): k-NN balls (k = 3) around each real
  (fake) feature; precision = share of fakes inside the real manifold, recall = share of
  reals inside the fake manifold.
- Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
  generative models"): k-NN balls (k = 5) around the *real* features only; density =
  mean number of real balls a fake falls in, divided by k (≈ 1 when fakes match the real
  distribution; unbounded above, so it is not fooled by outliers like precision), coverage
  = share of real balls holding at least one fake. Strict inequalities as in the authors'
  ``prdc`` package, which the tests match to 1e-6.
- Mode coverage: classify the samples; a class is covered when it receives ≥ 1 % of
  them (or at least ``min_count`` samples: Stacked MNIST counts a mode with one sample, as
  VEEGAN and PacGAN do); ``kl_uniform`` = KL(histogram ‖ uniform) in nats (0 = perfectly
  balanced, ln K = a single class).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from droplab.errors import InvalidValue, WeightsUnavailable
from droplab.fileio import third_party_weights
from droplab.runs.restore import CLASSIFIER_TASKS, load_run

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class _Precomputed(nn.Module):
    """Identity "feature extractor" so torchmetrics metrics accept ready-made features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_features(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InvalidValue(
            f"feature sets must be (N, D) with the same D, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    if min(real.shape[0], fake.shape[0]) < 2:
        raise InvalidValue("FID/KID need at least 2 real and 2 generated samples; raise --eval-samples")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets ``(N, D)``, computed in float64 by torchmetrics."""
    _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID mean and std over ``subsets`` random subsets.

    A subset holds ``min(subset_size, N // 2)`` samples of each set (``N`` the smaller set),
    so that subsets differ and the std says how much the estimate moves with the sample.
    """
    _check_features(real, fake)
    size = max(2, min(subset_size, min(real.shape[0], fake.shape[0]) // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all features in buffer"
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with _seeded(seed):
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score ``exp E KL(p(y|x) ‖ p(y))`` from logits ``(N, K)``: mean and std over splits."""
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise InvalidValue(f"inception_score needs logits (N ≥ 2, K), got {tuple(logits.shape)}")
    splits = max(1, min(splits, logits.shape[0] // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with _seeded(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std of a single split
        mean, std = metric.compute()
    std_f = float(std) if splits > 1 else 0.0
    return float(mean), std_f


def _kth_radius(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    out = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # the row itself is at distance 0 and is the 1st "neighbour": take the (k+1)-th
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Boolean per point: inside at least one ball ``‖p − c‖ ≤ r_c``."""
    out = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i : i + chunk], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    _check_features(real, fake)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise InvalidValue(f"precision/recall with k={k} needs more than {k} samples per set")
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, _kth_radius(real, k)).double().mean()
    recall = _inside(real, fake, _kth_radius(fake, k)).double().mean()
    return float(precision), float(recall)


def density_coverage(real: torch.Tensor, fake: torch.Tensor, *, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of ``fake`` against the k-NN balls of ``real``.

    With ``r_i`` the distance of real ``x_i`` to its k-th nearest other real feature:
    ``density = 1/(k·M) Σ_j Σ_i 1[‖y_j − x_i‖ < r_i]`` and
    ``coverage = 1/N Σ_i 1[min_j ‖y_j − x_i‖ < r_i]`` (float64, chunked distances).
    """
    _check_features(real, fake)
    if real.shape[0] <= k:
        raise InvalidValue(f"density/coverage with k={k} needs more than {k} real samples")
    real, fake = real.double(), fake.double()
    radii = _kth_radius(real, k)
    inside = 0.0
    nearest = torch.full((real.shape[0],), math.inf, dtype=torch.float64)
    for i in range(0, fake.shape[0], 1024):
        d = torch.cdist(real, fake[i : i + 1024])  # (N, chunk)
        inside += float((d < radii[:, None]).sum())
        nearest = torch.minimum(nearest, d.min(dim=1).values)
    density = inside / (k * fake.shape[0])
    coverage = float((nearest < radii).double().mean())
    return density, coverage


def mode_coverage(
    predictions: torch.Tensor, num_classes: int, *, threshold: float = 0.01,
    min_count: int | None = None,
) -> dict[str, object]:
    """Classes covered and KL(class histogram ‖ uniform) in nats.

    A class is covered when its share of the samples is ≥ ``threshold``, or, when
    ``min_count`` is given, when it holds at least ``min_count`` samples. ``predictions``
    are class indices ``(N,)`` (or already a histogram ``(num_classes,)`` of counts when
    it is floating point).
    """
    if predictions.is_floating_point():
        counts = predictions.double()
        if counts.shape != (num_classes,) or (counts < 0).any():
            raise InvalidValue(f"a histogram must be {num_classes} non-negative counts")
    else:
        counts = torch.bincount(predictions.long().flatten(), minlength=num_classes).double()
    total = counts.sum()
    if total <= 0:
        raise InvalidValue("mode coverage needs at least one sample")
    share = counts / total
    covered = int((counts >= min_count).sum()) if min_count is not None else int((share >= threshold).sum())
    nz = share > 0
    kl = float((share[nz] * torch.log(share[nz] * num_classes)).sum())
    return {
        "modes_covered": covered,
        "num_classes": num_classes,
        "kl_uniform": max(kl, 0.0),
        "class_histogram": [int(c) for c in counts.round().tolist()],
    }


# -- feature extractors -----------------------------------------------------------------------


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or float images in [−1, 1] (generator output), → float [0, 1] on the
    8-bit grid (fakes are quantised as if saved to PNG, so both sets see the same grid)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0


def match_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Adapt ``x (N, C, H, W)`` in [0, 1] to ``shape`` (channels by repeat/mean, size by
    antialiased bilinear resizing)."""
    c = shape[0]
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise InvalidValue(f"cannot feed {x.shape[1]}-channel images to a {c}-channel model")
    if tuple(x.shape[-2:]) != tuple(shape[1:]):
        x = F.interpolate(x, size=tuple(shape[1:]), mode="bilinear", antialias=True, align_corners=False)
    return x


class ClassifierFeatures:
    """Penultimate features and logits of a droplab classifier run.

    >>> fx = ClassifierFeatures.from_run("runs/mnist-clf")          # doctest: +SKIP
    >>> feats, logits = fx(images)                                  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        in_shape: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        classes: list[str],
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.in_shape = tuple(in_shape)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.classes = list(classes)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: torch.device | str = "cpu") -> ClassifierFeatures:
        """Load with :func:`droplab.runs.restore.load_run` (one-line error if it is not a run)."""
        loaded = load_run(run_dir, device=str(device), tasks=CLASSIFIER_TASKS)
        return cls(loaded.model, tuple(loaded.in_shape), tuple(loaded.mean), tuple(loaded.std),
                   list(loaded.classes), device)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (uint8, or float in [−1, 1]) → ``(features (N, D), logits (N, K))`` on CPU."""
        feats, logits = [], []
        for i in range(0, images.shape[0], batch_size):
            x = match_shape(to_unit(images[i : i + batch_size]).to(self.device), self.in_shape)
            x = (x - self.mean) / self.std
            f = self.model.forward_features(x)
            logits.append(self.model.head(f).float().cpu())
            feats.append(f.flatten(1).float().cpu())
        return torch.cat(feats), torch.cat(logits)


class InceptionFeatures:
    """2048-d Inception-v3 pool features as used by FID (torch-fidelity weights)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        hint = (
            f"Inception FID/KID need `pip install torch-fidelity` and its weights "
            f"{INCEPTION_WEIGHTS} in {hub} (downloaded on first use where the network "
            "allows); or drop --inception and use classifier features"
        )
        if importlib.util.find_spec("torch_fidelity") is None:
            raise WeightsUnavailable(hint)
        try:
            # needs the optional torch-fidelity package: imported only when asked for
            from torchmetrics.image.fid import NoTrainInceptionV3

            with warnings.catch_warnings(), third_party_weights():
                warnings.simplefilter("ignore")
                net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as exc:  # download refused, corrupt file, …
            raise WeightsUnavailable(f"{hint} ({exc.__class__.__name__})") from None
        self.device = torch.device(device)
        self.model = net.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = match_shape(to_unit(images[i : i + batch_size]), (3, *images.shape[-2:]))
            out.append(self.model((x * 255).round().to(torch.uint8).to(self.device)).float().cpu())
        return torch.cat(out)


def gan_scores(
    real: torch.Tensor,
    fake: torch.Tensor,
    extractor: ClassifierFeatures,
    *,
    k: int = 3,
    dc_k: int = 5,
    seed: int = 0,
    inception: InceptionFeatures | None = None,
    mode_threshold: float = 0.01,
    mode_min_count: int | None = None,
) -> dict[str, object]:
    """Every score for real images (uint8) against generated ones (float in [−1, 1]).

    ``extractor`` is any callable ``images → (features, logits)`` with ``num_classes``
    (:class:`ClassifierFeatures`, or :class:`~droplab.evaluate.gan_modes.StackedFeatures`
    for Stacked MNIST); ``k`` is precision/recall's and ``dc_k`` density/coverage's
    neighbourhood; the mode options go to :func:`mode_coverage`.
    """
    real_f, _ = extractor(real)
    fake_f, fake_logits = extractor(fake)
    kid_mean, kid_std = kernel_inception_distance(real_f, fake_f, seed=seed)
    is_mean, is_std = inception_score(fake_logits, seed=seed)
    precision, recall = precision_recall(real_f, fake_f, k=k)
    density, coverage = density_coverage(real_f, fake_f, k=dc_k)
    out: dict[str, object] = {
        "fid": frechet_distance(real_f, fake_f),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
        **mode_coverage(fake_logits.argmax(1), extractor.num_classes, threshold=mode_threshold,
                        min_count=mode_min_count),
        "num_real": int(real.shape[0]),
        "num_fake": int(fake.shape[0]),
        "feature_dim": int(real_f.shape[1]),
    }
    if inception is not None:
        ri, fi = inception(real), inception(fake)
        out["fid_inception"] = frechet_distance(ri, fi)
        out["kid_inception_mean"], out["kid_inception_std"] = kernel_inception_distance(ri, fi, seed=seed)
    if not all(math.isfinite(v) for v in out.values() if isinstance(v, float)):
        warnings.warn("some GAN scores are not finite (degenerate features?)", RuntimeWarning, stacklevel=2)
    return out
