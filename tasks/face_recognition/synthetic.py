"""Synthetic face identities: the embedded default, written as a real insightface RecordIO set and `.bin` pairs.

Nothing downloads: each identity is a random but fixed face-like drawing
(face ellipse and skin colour, eye spacing/size/colour, brows, nose, mouth
shape, a low-frequency "texture" field) and every image of it is a new view:
random in-plane rotation, scale, shift, horizontal squeeze (a crude yaw),
lighting gradient, colour/contrast jitter, background and pixel noise. Training
identities and verification identities are disjoint, as LFW's are mostly
disjoint from MS1M's. Files go to a cache folder keyed by the parameters, so
the second run reads what the first wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from core.engine.data import cache_dir
from core.engine.runs import atomic_write_text

VERSION = 1


def _identity(rng: np.random.Generator) -> dict:
    return {
        "skin": rng.uniform([0.45, 0.3, 0.2], [0.95, 0.8, 0.7]),
        "axes": rng.uniform([0.55, 0.72], [0.75, 0.9]),
        "eye_dx": rng.uniform(0.2, 0.34), "eye_y": rng.uniform(-0.28, -0.1), "eye_r": rng.uniform(0.06, 0.12),
        "iris": rng.uniform(0.0, 0.6, 3),
        "brow_dy": rng.uniform(0.1, 0.2), "brow_tilt": rng.uniform(-0.4, 0.4), "brow_w": rng.uniform(0.015, 0.04),
        "nose_len": rng.uniform(0.12, 0.3), "nose_w": rng.uniform(0.03, 0.08),
        "mouth_y": rng.uniform(0.3, 0.5), "mouth_w": rng.uniform(0.15, 0.32), "mouth_curve": rng.uniform(-0.5, 0.5),
        "lip": rng.uniform([0.4, 0.05, 0.05], [0.85, 0.4, 0.4]),
        "tex_freq": rng.uniform(1.0, 4.0, (3, 2)) * rng.choice([-1, 1], (3, 2)), "tex_phase": rng.uniform(0, 6.3, 3),
        "tex_amp": rng.uniform(0.05, 0.15),
    }


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(d / width, -30, 30)))


def render(p: dict, size: int, rng: np.random.Generator, pose: float = 15.0, noise: float = 0.06) -> np.ndarray:
    """One HWC uint8 view of identity `p`; `pose` the max rotation in degrees, `noise` the pixel noise std."""
    v, u = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="xy")
    u, v = v, u  # u: x (columns), v: y (rows, down)
    angle = np.deg2rad(rng.uniform(-pose, pose))
    scale = rng.uniform(0.85, 1.1)
    squeeze = rng.uniform(0.8, 1.0)
    tx, ty = rng.uniform(-0.08, 0.08, 2)
    c, s = np.cos(angle), np.sin(angle)
    x = (c * (u - tx) + s * (v - ty)) / (scale * squeeze)
    y = (-s * (u - tx) + c * (v - ty)) / scale
    px = 2.0 / size
    bg = rng.uniform(0.0, 1.0, 3)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    ax, ay = p["axes"]
    face = _soft(np.sqrt((x / ax) ** 2 + (y / ay) ** 2) - 1.0, px * 1.5)
    tex = sum(np.sin(p["tex_freq"][k, 0] * 3 * x + p["tex_freq"][k, 1] * 3 * y + p["tex_phase"][k]) for k in range(3))
    skin = p["skin"][None, None, :] * (1.0 + p["tex_amp"] * tex[..., None] / 3)
    img = img * (1 - face[..., None]) + skin * face[..., None]
    for side in (-1, 1):
        ex, ey = side * p["eye_dx"], p["eye_y"]
        white = _soft(np.sqrt(((x - ex) / 1.6) ** 2 + (y - ey) ** 2) - p["eye_r"], px)
        iris = _soft(np.sqrt((x - ex) ** 2 + (y - ey) ** 2) - 0.55 * p["eye_r"], px)
        img = img * (1 - white[..., None]) + 0.95 * white[..., None]
        img = img * (1 - iris[..., None]) + p["iris"] * iris[..., None]
        by = ey - p["brow_dy"] + side * p["brow_tilt"] * (x - ex) * 0.5
        brow = _soft(np.abs(y - by) - p["brow_w"], px) * _soft(np.abs(x - ex) - 1.8 * p["eye_r"], px)
        img = img * (1 - 0.8 * brow[..., None]) + 0.1 * 0.8 * brow[..., None]
    nose = _soft(np.abs(x) - p["nose_w"] * (0.3 + (y - p["eye_y"]) / p["nose_len"]), px) * \
        _soft(np.abs(y - p["eye_y"] - p["nose_len"] / 2) - p["nose_len"] / 2, px)
    img = img * (1 - 0.35 * nose[..., None])
    my = p["mouth_y"] + p["mouth_curve"] * (x / max(p["mouth_w"], 1e-3)) ** 2 * 0.08
    mouth = _soft(np.abs(y - my) - 0.025, px) * _soft(np.abs(x) - p["mouth_w"], px)
    img = img * (1 - mouth[..., None]) + p["lip"] * mouth[..., None]
    light = 1.0 + rng.uniform(-0.3, 0.3) * u + rng.uniform(-0.2, 0.2) * v
    img = img * light[..., None] * rng.uniform(0.75, 1.25) * rng.uniform(0.85, 1.15, 3)
    img = img + rng.normal(0.0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def default_cache_dir() -> Path:
    return cache_dir("face_synthetic")


def make_synthetic(identities: int = 64, images_per_identity: int = 16, pairs: int = 300, image_size: int = 32,
                   pose: float = 15.0, noise: float = 0.06, seed: int = 0, cache_dir: str | None = None) -> Path:
    """Write (once) `train.rec`/`train.idx`/`property` and `synthetic_val.bin`/`synthetic_test.bin`; return the folder.

    Verification pairs (half genuine, half impostor) come from identities not in training; the
    validation and test pair files use disjoint identities too.
    """
    from tasks.face_recognition.recordio import encode_image, write_face_rec
    from tasks.face_recognition.verification import write_bin

    params = dict(v=VERSION, identities=identities, images_per_identity=images_per_identity, pairs=pairs,
                  image_size=image_size, pose=pose, noise=noise, seed=seed)
    if identities < 2 or images_per_identity < 2 or pairs < 20:
        raise ValueError(f"data: synthetic faces need identities >= 2, images_per_identity >= 2, pairs >= 20; "
                         f"got {params}")
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / f"faces-{image_size}px-{key}"
    if (folder / "done.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    people = [_identity(rng) for _ in range(identities)]
    images, labels = [], []
    for k, p in enumerate(people):
        for _ in range(images_per_identity):
            images.append(render(p, image_size, rng, pose, noise))
            labels.append(k)
    write_face_rec(folder / "train.rec", images, labels)
    for split in ("val", "test"):
        n_ids = max(pairs // 4, 4)
        strangers = [_identity(rng) for _ in range(n_ids)]
        bins, issame = [], []
        for i in range(pairs):
            same = i % 2 == 0
            a = int(rng.integers(n_ids))
            b = a if same else int((a + rng.integers(1, n_ids)) % n_ids)
            bins += [encode_image(render(strangers[a], image_size, rng, pose, noise)),
                     encode_image(render(strangers[b], image_size, rng, pose, noise))]
            issame.append(same)
        write_bin(folder / f"synthetic_{split}.bin", bins, issame)
    atomic_write_text(folder / "done.json", json.dumps(params, indent=2) + "\n")
    return folder


__all__ = ["default_cache_dir", "make_synthetic", "render"]
