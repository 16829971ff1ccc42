"""``droplab finetune``: strategies, label budgets, resume, and offline weight loading."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.cli import main
from droplab.errors import InvalidValue, UserError, WeightsUnavailable
from droplab.runs import load_checkpoint


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits classifier on classes 0-4: the pretrained source."""
    out = tmp_path_factory.mktemp("src") / "run"
    rc = main(["train", "--dataset", "digits", "--classes", "0-4", "--model", "lenet",
               "--dropout", "0.25", "--epochs", "3", "--out", str(out), "--json"])
    assert rc == 0
    return out


def _finetune(out: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    rc = main(["finetune", "--dataset", "digits", "--classes", "5-9", "--epochs", "4",
               "--out", str(out), "--json", *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_done_when_gradual_from_run(source_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    s = _finetune(tmp_path / "ft", "--from", str(source_run), "--strategy", "gradual",
                  "--dropout", "0.5", capsys=capsys)
    assert s["task"] == "finetune" and s["strategy"] == "gradual"
    assert s["classes"] == ["5", "6", "7", "8", "9"]
    assert s["test_acc"] > 0.8  # 5 classes: chance is 0.2
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (tmp_path / "ft" / name).exists()
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 4


def test_linear_probe_trains_only_the_head(source_run: Path) -> None:
    from droplab import data as D
    from droplab.tasks.finetune import FinetuneConfig, _trainable_stages, build

    cfg = FinetuneConfig.build(from_run=str(source_run), classes=["5", "6", "7", "8", "9"],
                         strategy="linear-probe", dropout=0.3, hidden=16)
    bundle = D.load_dataset("digits", classes=cfg.data.classes)
    model, _ = build(cfg, bundle)
    before = {k: v.clone() for k, v in model.source.state_dict().items()}
    model.set_trainable_stages(_trainable_stages(cfg, len(model.stages), 0))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(8, *bundle.in_shape)
    model.train()
    nn.functional.cross_entropy(model(x), torch.randint(0, 5, (8,))).backward()
    opt.step()
    after = model.source.state_dict()
    for k, v in before.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v, after[k]), k
    assert sum(isinstance(m, nn.Dropout) or m.__class__.__name__ == "Dropout"
               for m in model.head) == 2  # dropout before and after the hidden layer


def test_gradual_unfreezes_top_down(source_run: Path) -> None:
    from droplab.tasks.finetune import FinetuneConfig, _trainable_stages

    cfg = FinetuneConfig.build(from_run=str(source_run), strategy="gradual", epochs=8)
    assert [_trainable_stages(cfg, 3, e) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert _trainable_stages(FinetuneConfig.build(from_run="x", strategy="full"), 3, 0) is None


def test_discriminative_lrs_reach_the_optimizer(source_run: Path) -> None:
    from droplab import data as D
    from droplab import engine as T
    from droplab.tasks.finetune import FinetuneConfig, build

    cfg = FinetuneConfig.build(from_run=str(source_run), strategy="full", lr_decay=0.5)
    model, _ = build(cfg, D.load_dataset("digits"))
    opt = T.make_optimizer(model, T.TrainConfig(optimizer="sgd", lr=0.1))
    lrs = sorted({round(g["lr"], 6) for g in opt.param_groups}, reverse=True)
    n = len(model.stages)
    assert lrs == [round(0.1 * 0.5**i, 6) for i in range(n + 1)]
    # frozen parameters are in the optimizer too, so unfreezing later trains them
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())


def test_label_budget_and_resume_of_finished_run(source_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    s = _finetune(tmp_path / "ft", "--from", str(source_run), "--strategy", "full",
                  "--labels-per-class", "5", "--val-fraction", "0", capsys=capsys)
    assert s["train_images"] == 25
    metrics = (tmp_path / "ft" / "metrics.jsonl").read_text()
    again = _finetune(tmp_path / "ft", "--from", str(source_run), "--strategy", "full",
                      "--labels-per-class", "5", "--val-fraction", "0", "--resume",
                      capsys=capsys)
    assert again == s and (tmp_path / "ft" / "metrics.jsonl").read_text() == metrics


def test_bad_inputs_are_one_line(source_run: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from droplab.tasks.finetune import FinetuneConfig

    with pytest.raises(InvalidValue, match="exactly one pretrained source"):
        FinetuneConfig.build()
    with pytest.raises(UserError, match="unknown strategy"):
        FinetuneConfig.build(from_run="x", strategy="magic")
    rc = main(["finetune", "--from", str(source_run), "--dataset", "digits",
               "--labels-per-class", "1000", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1


# -- torchvision weights through the weights enum, offline -----------------------------------


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))

    def offline(url: str, dst: str, *a: object, **k: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return hub


def _weights_file(hub: Path) -> tuple[Path, dict]:
    import torchvision

    enum = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    path = hub / "checkpoints" / Path(enum.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    torch.save(state, path)
    return path, state


def test_tv_weights_load_from_the_hub_cache(hub_dir: Path) -> None:
    from droplab.tasks.finetune import FinetuneConfig, load_source

    _, state = _weights_file(hub_dir)
    src = load_source(FinetuneConfig.build(backbone="tv:mobilenet_v3_small", weights="DEFAULT"))
    loaded = src.model.state_dict()
    checked = 0
    for key, value in state.items():
        if key.startswith("features."):  # the backbone: must be the cached file's tensors
            match = [v for k, v in loaded.items() if k == key or k.endswith("." + key)]
            assert len(match) == 1 and torch.equal(match[0], value), key
            checked += 1
    assert checked > 50


def test_tv_weights_missing_or_truncated_name_the_path(hub_dir: Path) -> None:
    from droplab.tasks.finetune import FinetuneConfig, load_source

    cfg = FinetuneConfig.build(backbone="tv:mobilenet_v3_small", weights="DEFAULT")
    with pytest.raises(WeightsUnavailable) as info:
        load_source(cfg)
    msg = str(info.value)
    assert "\n" not in msg and str(hub_dir / "checkpoints") in msg
    path, _ = _weights_file(hub_dir)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsUnavailable) as info:
        load_source(cfg)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# -- finetune runs reload for `droplab evaluate` and `droplab serve` -----------------------


def test_finetune_run_evaluates_like_its_summary(source_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from droplab.runs.restore import load_run

    out = tmp_path / "ft"
    s = _finetune(out, "--from", str(source_run), "--strategy", "full", "--hidden", "16",
                  "--dropblock", "0.1", capsys=capsys)
    loaded = load_run(out)
    assert not loaded.model.training and loaded.classes == s["classes"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--mc", "4", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the same weights on the same test split: the deterministic accuracy is the summary's
    assert ev["acc"] == pytest.approx(s["test_acc"], abs=1e-6)  # float32 mean; 1/N >> 1e-6
    assert 0.0 <= ev["mc_acc"] <= 1.0 and ev["mc_mutual_information"] > 0.0
    assert (out / "evaluation.json").is_file() and (out / "reliability.png").is_file()


def test_finetune_run_needs_its_source_run(source_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from droplab.runs.restore import load_run

    src = tmp_path / "src-copy"
    shutil.copytree(source_run, src)
    out = tmp_path / "ft"
    _finetune(out, "--from", str(src), "--strategy", "linear-probe", "--epochs", "1",
              capsys=capsys)
    shutil.rmtree(src)
    with pytest.raises(UserError, match="restore that folder") as info:
        load_run(out)
    assert "\n" not in str(info.value) and str(src) in str(info.value)


def test_tv_finetune_run_reloads_without_weights(hub_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from droplab.runs.restore import load_run

    _weights_file(hub_dir)
    out = tmp_path / "ft"
    s = _finetune(out, "--backbone", "tv:mobilenet_v3_small", "--strategy", "linear-probe",
                  "--epochs", "1", "--labels-per-class", "4", "--image-size", "32",
                  "--val-fraction", "0", capsys=capsys)
    (hub_dir / "checkpoints").rename(hub_dir / "gone")  # reloading must not need the cache
    loaded = load_run(out)
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loaded.classes == s["classes"]
