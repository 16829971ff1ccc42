"""One request's work once its image is decoded: classify with MC dropout, or stylize.

Classification is Monte-Carlo dropout (Gal & Ghahramani 2016): the mean softmax of ``T``
stochastic passes, its predictive entropy and the mutual information between prediction
and weights (the BALD score of Houlsby et al. 2011), in nats. Stylization runs a
feed-forward transformer network (Johnson et al. 2016); ``samples > 1`` keeps its spatial
dropout on and tiles the variations.

Passes through one model are serialised (``model.lock``), and stochastic passes also take a
process-wide RNG lock because their dropout masks come from a generator seeded by the
request's ``seed``: the same image and seed give the same answer, whatever else runs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from droplab.data.images import encode_image, pil_to_tensor, resize_to
from droplab.serve import calibrate
from droplab.serve.registry import ClassifierModel, StyleModel
from droplab.serve.uploads import Upload
from droplab.uncertainty import mc_mode, mc_predict, mutual_information, predictive_entropy

#: The global torch RNG is shared by every thread: stochastic passes hold this lock.
RNG_LOCK = threading.Lock()


def classifier_input(img: Image.Image, m: ClassifierModel) -> torch.Tensor:
    """RGB image → the run's channels (L: ITU-R 601 luma, as in training), its H×W
    (antialiased bilinear), normalised by its mean/std: a ``(1, C, H, W)`` float tensor."""
    c, h, w = m.in_shape
    img = img.convert("L") if c == 1 else img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c) / 255.0
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    mean = torch.tensor(m.mean, dtype=torch.float32).view(c, 1, 1)
    std = torch.tensor(m.std, dtype=torch.float32).view(c, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def classify_image(upload: Upload, m: ClassifierModel, seed: int) -> dict[str, Any]:
    """MC-dropout answer for one image: label, class probabilities, entropy and MI (nats),
    after the run's stored temperature; ``abstained`` when the model has an abstain rule
    (``--abstain-at-error``) and the image's uncertainty is above its threshold."""
    x = classifier_input(upload.image, m).to(m.device)
    t0 = time.perf_counter()
    with m.lock, RNG_LOCK:
        if m.samples > 1:
            gen = torch.Generator().manual_seed(int(seed))
            mc = mc_predict(m.model, x, samples=m.samples, reduce="none", generator=gen)
        else:
            with torch.no_grad():
                mc = torch.softmax(m.model.eval()(x).float(), dim=1).unsqueeze(0)
    mc = calibrate.scale(mc.float().cpu(), m.temperature)
    probs = mc.mean(0)[0]
    abstained = (m.abstain is not None
                 and float(calibrate.uncertainty(mc, m.abstain.score)[0]) > m.abstain.threshold)
    k = int(probs.argmax())
    order = torch.argsort(probs, descending=True).tolist()
    return {
        "model": m.name,
        "label": m.classes[k],
        "index": k,
        "probabilities": {c: float(p) for c, p in zip(m.classes, probs.tolist())},
        "top": [{"label": m.classes[i], "p": float(probs[i])} for i in order[:5]],
        "entropy": float(predictive_entropy(mc)[0]),
        "mutual_information": float(mutual_information(mc)[0]),
        "mc_samples": m.samples,
        "temperature": m.temperature.temperature if m.temperature is not None else None,
        "abstained": abstained,
        "seed": int(seed),
        "input": {"format": upload.format, "width": upload.width, "height": upload.height},
        "seconds": time.perf_counter() - t0,
    }


def stylize_image(upload: Upload, m: StyleModel, samples: int, seed: int,
                  max_side: int) -> bytes:
    """Stylise one image (longer side at most ``max_side``) and return PNG bytes.

    ``samples`` > 1 keeps the network's spatial dropout on and tiles the variations left to
    right; their masks come from ``seed``.
    """
    img = upload.image
    if max(img.size) > max_side:
        img = resize_to(img, max_side)
    x = pil_to_tensor(img).unsqueeze(0).to(m.device)
    with m.lock, torch.no_grad():
        if samples == 1:
            m.net.eval()
            ys = [m.net(x)]
        else:
            devices = [m.device.index or 0] if m.device.type == "cuda" else []
            with RNG_LOCK, torch.random.fork_rng(devices=devices), mc_mode(m.net):
                torch.manual_seed(int(seed))
                ys = [m.net(x) for _ in range(samples)]
    y = torch.cat([t.clamp(0, 1) for t in ys], dim=-1)
    return encode_image(y, "PNG")
