"""``droplab serve`` over real HTTP on loopback (uvicorn in a background thread, httpx):
the API's answers, its errors, the queue and the OpenAPI description."""

from __future__ import annotations

import io
import math
import statistics
import struct
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from droplab import serve
from droplab.cli import main
from droplab.data import load_dataset
from droplab.data.images import pil_to_tensor
from droplab.runs.restore import load_run
from droplab.serve import BackgroundServer, ServeConfig, create_app
from droplab.serve.uploads import SPOOL_BYTES
from droplab.uncertainty import mc_predict, mutual_information, predictive_entropy
from serve_helpers import check_error, healthy, make_runs, noise_png, png_bytes


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory)


CFG = dict(mc=8, max_bytes=300_000, max_pixels=1_000_000, concurrency=2, queue=32,
           timeout=30.0, style_size=64, device="cpu")


@pytest.fixture(scope="module")
def server(runs: dict[str, Path]):
    cfg = ServeConfig(runs=[str(runs["digits"]), str(runs["style"]), str(runs["digits"])], **CFG)
    app = create_app(cfg)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app


# ------------------------------------------------------------------------------ API
def test_healthz_and_offline_page(server) -> None:
    client, _ = server
    h = client.get("/healthz").json()
    assert [(m["name"], m["task"]) for m in h["models"]] == [
        ("digits", "classify"), ("style", "stylize"), ("digits-2", "classify")]
    assert h["models"][0]["classes"] == [str(i) for i in range(10)]
    assert h["models"][0]["in_shape"] == [1, 8, 8] and h["models"][0]["mc_samples"] == 8
    assert h["queue"] == {"running": 0, "waiting": 0, "concurrency": 2, "queue": 32}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/classify" in page.text and "v1/stylize" in page.text
    # works offline: nothing is loaded from another origin, and the CSP forbids it anyway
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def direct_mc(run: Path, x_uint8: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """MC probabilities computed without the server, from the training normalisation."""
    lr = load_run(run, "cpu")
    mean = torch.tensor(lr.mean).view(1, -1, 1, 1)
    std = torch.tensor(lr.std).view(1, -1, 1, 1)
    x = (x_uint8.float() / 255 - mean) / std
    gen = torch.Generator().manual_seed(seed)
    return mc_predict(lr.model, x, samples=samples, reduce="none", generator=gen)


def test_classify_matches_direct_mc_dropout(server, runs) -> None:
    client, _ = server
    test = load_dataset("digits").test
    for i in range(6):
        img = test.images[i : i + 1]  # (1, 1, 8, 8) uint8: the run's own size, no resizing
        data = png_bytes(Image.fromarray(img[0, 0].numpy(), "L"))
        r = client.post("/v1/classify", files={"file": ("d.png", data, "image/png")},
                        data={"seed": str(i)})
        assert r.status_code == 200, r.text
        res = r.json()
        mc = direct_mc(runs["digits"], img, 8, i)
        probs = mc.mean(0)[0]
        got = torch.tensor(list(res["probabilities"].values()))
        assert list(res["probabilities"]) == [str(k) for k in range(10)]
        # same masks (same seed), same inputs up to float rounding of the normalisation
        assert torch.allclose(got, probs, atol=1e-5), (got, probs)
        assert res["label"] == str(int(probs.argmax())) and res["index"] == int(probs.argmax())
        assert math.isclose(res["entropy"], float(predictive_entropy(mc)[0]), abs_tol=1e-5)
        assert math.isclose(res["mutual_information"], float(mutual_information(mc)[0]),
                            abs_tol=1e-5)
        assert abs(sum(res["probabilities"].values()) - 1) < 1e-5
        # 0 ≤ MI ≤ H ≤ ln K (MI = H − E[H] with E[H] ≥ 0)
        assert 0 <= res["mutual_information"] <= res["entropy"] + 1e-6 <= math.log(10) + 1e-5
        assert res["top"][0]["label"] == res["label"] and len(res["top"]) == 5
        assert res["mc_samples"] == 8 and res["input"] == {"format": "PNG", "width": 8, "height": 8}


def test_classify_seed_repeatability_raw_body_and_conversion(server) -> None:
    client, _ = server
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    data = png_bytes(rgb, "JPEG")
    files = {"file": ("photo.jpg", data, "image/jpeg")}
    a = client.post("/v1/classify", files=files).json()
    b = client.post("/v1/classify", files=files).json()
    c = client.post("/v1/classify", files=files, data={"seed": "7"}).json()
    assert a["probabilities"] == b["probabilities"]  # seeded masks: same answer
    assert a["probabilities"] != c["probabilities"]  # other masks (p=0.3, 8 passes)
    assert a["input"] == {"format": "JPEG", "width": 30, "height": 40}
    # a raw body with options in the query string gives the multipart answer
    raw = client.post("/v1/classify?model=digits-2", content=data,
                      headers={"content-type": "image/jpeg"}).json()
    assert raw["model"] == "digits-2" and raw["probabilities"] == a["probabilities"]
    # RGBA, 16-bit grey and palette images are converted, not refused
    for img in (Image.new("RGBA", (9, 9), (10, 200, 30, 128)),
                Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)),
                Image.new("P", (12, 12))):
        r = client.post("/v1/classify", files={"file": ("x.png", png_bytes(img), "image/png")})
        assert r.status_code == 200, r.text


def test_model_field(server) -> None:
    client, _ = server
    data = png_bytes(Image.new("L", (8, 8), 30))
    r = client.post("/v1/classify", files={"file": ("x.png", data)}, data={"model": "digits-2"})
    assert r.status_code == 200 and r.json()["model"] == "digits-2"
    assert client.post("/v1/classify", files={"file": ("x.png", data)}).json()["model"] == "digits"
    check_error(client.post("/v1/classify", files={"file": ("x.png", data)},
                            data={"model": "nope"}), 422, "nope", "digits, digits-2")
    check_error(client.post("/v1/classify", files={"file": ("x.png", data)},
                            data={"model": "style"}), 422, "style")


def test_stylize(server, runs) -> None:
    client, _ = server
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8))
    files = {"file": ("c.png", png_bytes(img), "image/png")}
    r = client.post("/v1/stylize", files=files)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-droplab-model"] == "style"
    out = np.asarray(Image.open(io.BytesIO(r.content)))
    assert out.shape == (36, 40, 3)
    net = load_run(runs["style"]).model
    with torch.no_grad():
        ref = net(pil_to_tensor(img)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    # PNG holds 8-bit values: rounding is the only difference
    assert np.abs(out.astype(int) - (ref * 255).round().astype(int)).max() <= 1

    # samples > 1: dropout on, variations side by side, reproducible by seed
    s1 = client.post("/v1/stylize", files=files, data={"samples": "3", "seed": "1"})
    s2 = client.post("/v1/stylize", files=files, data={"samples": "3", "seed": "1"})
    s3 = client.post("/v1/stylize", files=files, data={"samples": "3", "seed": "2"})
    assert s1.status_code == 200 and s1.content == s2.content != s3.content
    tiles = np.asarray(Image.open(io.BytesIO(s1.content))).astype(int)
    assert tiles.shape == (36, 120, 3)
    assert not np.array_equal(tiles[:, :40], tiles[:, 40:80])  # masks differ between samples
    check_error(client.post("/v1/stylize", files=files, data={"samples": "9"}), 422, "samples")
    check_error(client.post("/v1/stylize", files=files, data={"samples": "x"}), 422, "integer")

    # larger than --style-size (64 here): the longer side is scaled down to it
    big = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
    r = client.post("/v1/stylize", files={"file": ("b.png", png_bytes(big))})
    assert Image.open(io.BytesIO(r.content)).size == (64, 51)


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width×height with a tiny (cut-off) IDAT: a bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def test_bad_inputs_get_clear_4xx_and_server_keeps_serving(server) -> None:
    client, _ = server
    good = png_bytes(Image.new("L", (64, 64), 100))
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as z:
        z.writestr("a.txt", "hello " * 100)
    too_many = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    big_file = png_bytes(Image.fromarray(too_many))  # noise compresses badly: > 300 kB
    assert len(big_file) > 300_000
    cases = [
        ("empty", {"file": ("e.png", b"", "image/png")}, 400, "empty"),
        ("truncated", {"file": ("t.png", good[: len(good) // 2], "image/png")}, 400, "decoded"),
        ("bomb 20000²", {"file": ("b.png", huge_png(20000, 20000), "image/png")}, 413, "pixels"),
        ("over --max-pixels", {"file": ("m.png", png_bytes(Image.new("L", (1100, 1000))))},
         413, "1,100,000"),
        ("too many bytes", {"file": ("big.png", big_file, "image/png")}, 413, "300,000"),
        ("text", {"file": ("notes.png", b"just some text\n" * 20, "image/png")}, 415, "not an image"),
        ("zip renamed .png", {"file": ("photo.png", zip_buf.getvalue(), "image/png")}, 415,
         "not an image"),
    ]
    for name, files, status, word in cases:
        for path in ("/v1/classify", "/v1/stylize"):
            r = client.post(path, files=files)
            assert check_error(r, status, word), name
        healthy(client)
    check_error(client.post("/v1/classify", data={"seed": "1"}), 422, "'file'")
    check_error(client.post("/v1/classify", files={"image": ("x.png", good)}), 422, "'file'")
    check_error(client.post("/v1/classify", json={"file": "x"}), 415, "multipart")
    check_error(client.post("/v1/classify"), 400, "empty")
    check_error(client.post("/v1/classify", content=b"--x\r\nnonsense",
                            headers={"content-type": "multipart/form-data"}), 400, "malformed")
    check_error(client.get("/nope"), 404, "/nope", "/v1/classify")
    check_error(client.get("/v1/classify"), 405)
    check_error(client.post("/v1/classify", files={"file": ("x.png", good)},
                            data={"seed": "-1"}), 422, "seed")

    # a body without Content-Length is cut off while it streams in
    def chunks():
        for _ in range(40):
            yield b"\0" * 16384

    r = client.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"})
    check_error(r, 413, "300,000")
    healthy(client)
    r = client.post("/v1/classify", files={"file": ("x.png", good)})
    assert r.status_code == 200


def test_unexpected_error_is_a_generic_500(server, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = server

    def boom(*_a, **_k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(serve.app, "classify_image", boom)
    r = client.post("/v1/classify", files={"file": ("x.png", png_bytes(Image.new("L", (8, 8))))})
    msg = check_error(r, 500, "internal server error")
    assert "secret" not in msg
    monkeypatch.undo()
    healthy(client)


def test_queue_full_503_and_timeout_504(server) -> None:
    _, main_app = server
    cfg = ServeConfig(runs=["unused"], concurrency=1, queue=1, timeout=0.5, device="cpu")
    app = create_app(cfg, models=main_app.state.models)
    q = app.state.queue
    release = threading.Event()
    data = {"file": ("x.png", png_bytes(Image.new("L", (8, 8), 50)))}
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        running = q.submit(release.wait)  # occupies the only worker
        waiting = q.submit(release.wait)  # and the only waiting place
        r = client.post("/v1/classify", files=data)
        check_error(r, 503, "busy")
        assert int(r.headers["retry-after"]) >= 1
        assert client.get("/healthz").json()["queue"]["waiting"] == 1
        waiting.cancel()  # frees the waiting place; the worker stays busy
        t0 = time.perf_counter()
        check_error(client.post("/v1/classify", files=data), 504, "0.5 s")
        assert time.perf_counter() - t0 < 10
        release.set()
        running.result(timeout=10)
        r = client.post("/v1/classify", files=data)
        assert r.status_code == 200, r.text
        assert client.get("/healthz").json()["queue"] == {
            "running": 0, "waiting": 0, "concurrency": 1, "queue": 1}


def test_bounded_load(server) -> None:
    """200 classifications, 16 in flight: the queue (2 running + 32 waiting) absorbs them."""
    client, _ = server
    rng = np.random.default_rng(2)
    images = [png_bytes(Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)))
              for _ in range(8)]

    def one(i: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        r = client.post("/v1/classify", files={"file": ("x.png", images[i % 8])})
        return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert [s for s, _ in results] == [200] * 200
    lat = sorted(t for _, t in results)
    assert statistics.median(lat) <= lat[int(0.95 * len(lat)) - 1]
    h = client.get("/healthz").json()
    assert h["queue"]["running"] == 0 and h["queue"]["waiting"] == 0



def test_finetune_run_is_served(runs, tmp_path: Path) -> None:
    """A ``droplab finetune`` run answers /v1/classify like a ``train`` run."""
    ft = tmp_path / "ft"
    assert main(["finetune", "--from", str(runs["digits"]), "--dataset", "digits",
                 "--classes", "5-9", "--strategy", "linear-probe", "--dropout", "0.4",
                 "--epochs", "1", "--device", "cpu", "--out", str(ft)]) == 0
    (model,) = serve.load_models([str(ft)], device="cpu", mc=6)
    assert isinstance(model, serve.ClassifierModel) and model.classes == ["5", "6", "7", "8", "9"]
    cfg = ServeConfig(runs=[str(ft)], **CFG)
    img = Image.fromarray(np.random.default_rng(4).integers(0, 255, (8, 8), dtype=np.uint8))
    with BackgroundServer(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/classify", files={"file": ("x.png", png_bytes(img))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "ft" and body["label"] in model.classes
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert body["mc_samples"] == 8 and body["mutual_information"] >= 0.0



def test_openapi_is_valid_and_describes_the_api(server) -> None:
    validate = pytest.importorskip("openapi_spec_validator").validate  # the dev extra
    client, _ = server
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    spec = r.json()
    validate(spec)  # raises on an invalid OpenAPI document
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/healthz", "/v1/classify", "/v1/stylize"}  # not the page
    for path, options in (("/v1/classify", {"model", "seed"}),
                          ("/v1/stylize", {"model", "seed", "samples"})):
        post = spec["paths"][path]["post"]
        form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["file"] and set(form["properties"]) == {"file", *options}
        assert {"image/*", "application/octet-stream"} <= set(post["requestBody"]["content"])
        assert {p["name"] for p in post["parameters"]} == options
        assert {"200", "400", "408", "413", "415", "422", "503", "504"} <= set(post["responses"])
    assert "image/png" in spec["paths"]["/v1/stylize"]["post"]["responses"]["200"]["content"]


def test_upload_spooled_to_disk_is_classified(runs) -> None:
    """A body over the 1 MiB spool threshold (it goes to a temporary file) decodes the same
    as a small one: the 1 MiB noise image and its 64×64 crop give their own sizes."""
    big = noise_png(800, seed=3)  # ~1.9 MB of incompressible pixels
    assert len(big) > 1.5 * SPOOL_BYTES
    cfg = ServeConfig(runs=[str(runs["digits"])], mc=4, device="cpu")
    with BackgroundServer(create_app(cfg)) as url, httpx.Client(base_url=url, timeout=60) as c:
        for body in (big, noise_png(64, seed=3)):
            r = c.post("/v1/classify", files={"file": ("x.png", body)})
            assert r.status_code == 200, r.text
            side = 800 if body is big else 64
            assert r.json()["input"] == {"format": "PNG", "width": side, "height": side}
            raw = c.post("/v1/classify", content=body, headers={"content-type": "image/png"})
            assert raw.json()["probabilities"] == r.json()["probabilities"]
        assert healthy(c)["uploads"] == {"in_flight": 0, "max_uploads": 32}
