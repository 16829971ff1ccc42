"""``droplab serve`` with what ``droplab evaluate`` stored and the run's validation split:
the run's temperature.json is applied to every pass, ``--abstain-at-error E`` picks the
threshold on the validation split (rebuilt independently here) and answers
``"abstained": true`` above it, and the refusals are one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from droplab import serve
from droplab.cli import main
from droplab.data import load_dataset, stratified_split
from droplab.evaluate.selective import read_temperature
from droplab.runs.restore import load_run
from droplab.serve import BackgroundServer, ServeConfig, create_app
from droplab.uncertainty import abstain_threshold, mc_predict, predictive_entropy
from serve_helpers import make_runs, png_bytes

CFG = dict(mc=8, concurrency=1, queue=8, timeout=30.0, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the shared tiny digits run (this module writes temperature.json)."""
    src = make_runs(tmp_path_factory, style=False)["digits"]
    dst = tmp_path_factory.mktemp("abstain") / "digits"
    shutil.copytree(src, dst)
    return dst


def _normalised(run: Path, images: torch.Tensor) -> torch.Tensor:
    lr = load_run(run, "cpu")
    mean = torch.tensor(lr.mean).view(1, -1, 1, 1)
    std = torch.tensor(lr.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def _validation() -> tuple[torch.Tensor, torch.Tensor]:
    """The split ``droplab train`` held out (defaults: 10 %, seed 0), rebuilt directly."""
    train = load_dataset("digits", seed=0).train
    _, val_idx = stratified_split(train.labels, 0.1, 0)
    return train.images[val_idx], train.labels[val_idx]


def _post(client: httpx.Client, img: torch.Tensor, seed: int) -> dict:
    data = png_bytes(Image.fromarray(img[0].numpy(), "L"))
    r = client.post("/v1/classify", files={"file": ("d.png", data, "image/png")},
                    data={"seed": str(seed)})
    assert r.status_code == 200, r.text
    return r.json()


def test_abstain_threshold_is_picked_on_the_validation_split(run: Path) -> None:
    (m,) = serve.load_models([str(run)], device="cpu", mc=8, abstain_at_error=0.05, seed=3)
    rule = m.abstain
    assert rule is not None and rule.score == "entropy" and rule.max_error == 0.05
    # the same rule from the validation split rebuilt here and the same masks (one batch)
    images, labels = _validation()
    lr = load_run(run, "cpu")
    mc = mc_predict(lr.model, _normalised(run, images), samples=8, reduce="none",
                    generator=torch.Generator().manual_seed(3)).float()
    direct = abstain_threshold(predictive_entropy(mc), mc.mean(0).argmax(1) == labels, 0.05,
                               "entropy")
    assert rule.threshold == pytest.approx(direct.threshold, rel=1e-5)
    assert rule.coverage == pytest.approx(direct.coverage) and rule.error <= 0.05
    assert 0.0 < rule.coverage < 1.0  # a 1-epoch MLP: some images answered, some not
    assert m.describe()["abstain"]["threshold"] == pytest.approx(rule.threshold)

    cfg = ServeConfig(runs=[str(run)], abstain_at_error=0.05, seed=3, **CFG)
    flags = []
    with BackgroundServer(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/healthz").json()["models"][0]["abstain"]["max_error"] == 0.05
        for i in range(24):
            res = _post(c, images[i], i)
            assert res["abstained"] == (res["entropy"] > rule.threshold), res
            assert res["label"] in m.classes  # the prediction is still given
            flags.append(res["abstained"])
    assert any(flags) and not all(flags)


def test_stored_temperature_is_used_by_serve(run: Path) -> None:
    assert main(["evaluate", str(run), "--temperature", "--mc", "8", "--device", "cpu"]) == 0
    temps = read_temperature(run)
    assert temps is not None and set(temps) == {"deterministic", "mc"}
    images, _ = _validation()
    x = _normalised(run, images[:4])
    lr = load_run(run, "cpu")
    for mc_opt, key in ((8, "mc"), (1, "deterministic")):
        t = temps[key]
        assert t.temperature != pytest.approx(1.0, abs=1e-3)  # a real rescaling
        (m,) = serve.load_models([str(run)], device="cpu", mc=mc_opt)
        assert m.temperature is not None and m.temperature.temperature == t.temperature
        assert m.describe()["temperature"] == t.temperature
        cfg = ServeConfig(runs=[str(run)], **{**CFG, "mc": mc_opt})
        with (BackgroundServer(create_app(cfg)) as url,
              httpx.Client(base_url=url, timeout=60) as c):
            for i in range(4):
                res = _post(c, images[i], i)
                if mc_opt > 1:  # each pass scaled, then averaged (as evaluate does)
                    p = mc_predict(lr.model, x[i : i + 1], samples=8, reduce="none",
                                   generator=torch.Generator().manual_seed(i)).float()
                else:
                    with torch.no_grad():
                        p = torch.softmax(lr.model.eval()(x[i : i + 1]), 1).unsqueeze(0)
                want = t.apply_to_probs(p).mean(0)[0]
                got = torch.tensor(list(res["probabilities"].values()))
                assert torch.allclose(got, want, atol=1e-5), (got, want)
                assert res["temperature"] == t.temperature and res["abstained"] is False


def test_abstain_refusals_are_one_line(run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "1", "1.5", "-0.1", "nan"):
        assert main(["serve", str(run), "--abstain-at-error", bad, "--port", "0"]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("droplab serve: error:") and "\n" not in err, err
        assert "--abstain-at-error" in err, err
    noval = tmp_path / "noval"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--widths", "16",
                 "--epochs", "1", "--limit", "20", "--val-fraction", "0", "--device", "cpu",
                 "--out", str(noval)]) == 0
    capsys.readouterr()
    assert main(["serve", str(noval), "--abstain-at-error", "0.1", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "validation split" in err and "--val-fraction" in err, err
