"""The embedded synthetic face dataset, written in the formats users bring (``facerec-synthetic OUT``).

Faces come from :mod:`facerec.data.synthetic_faces`. Identities are disjoint between the parts:

``OUT/train.rec, train.idx, property``   InsightFace layout with header record 0
``OUT/synth_val.bin``                    verification pairs of held-out identities (InsightFace ``.bin``)
``OUT/megaface/``                        MegaFace-style tree (the devkit's layout, docs/megaface.md):
    ``facescrub_images/<First_Last>/<First_Last>_<n>.png``   FaceScrub-like probe identities
    ``megaface_images/<aaa>/<user>/<photo>_<k>.jpg``          distractors, one fresh identity each
    ``templatelists/facescrub_features_list.json``            {"path", "id"}
    ``templatelists/megaface_features_list.json_<N>_1``       {"path"}, nested prefixes, N = 10, 100, ...
    ``facescrub_noises.txt, megaface_noises.txt``             planted noise: probe images showing someone
                                                              else, distractors showing a probe identity

Everything is a function of ``seed`` and the sizes: one numpy Generator per identity and per image, seeded
from (seed, part, index), so the output is byte-identical for equal arguments. :func:`ensure_synthetic`
generates only when ``OUT/.synthetic-complete.json`` with the same parameters is missing.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facerec._quote import quote
from .codec import encode_image
from .pack import FaceRecWriter
from .synthetic_faces import render_face, sample_identity
from .verification import write_bin

__all__ = ["DEFAULTS", "generate", "ensure_synthetic"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = ".synthetic-complete.json"
DEFAULTS = {
    "seed": 0,
    "num_identities": 300,
    "images_per_identity": 20,
    "val_identities": 100,
    "val_images_per_identity": 8,
    "val_pairs": 1000,
    "probe_identities": 20,
    "probe_images_per_identity": 10,
    "num_distractors": 10000,
    "megaface": True,
    "jpeg_quality": (40, 95),
    "variation": 1.0,
}
_TRAIN, _VAL, _PROBE, _DISTRACTOR, _NOISE, _LAYOUT = range(6)
_FIRST = ["Ada", "Bela", "Cyra", "Dario", "Elin", "Faro", "Gita", "Hugo", "Ines", "Jora", "Kael", "Lina", "Mato",
          "Nadia", "Oren", "Pia", "Quin", "Rosa", "Sami", "Tova", "Ugo", "Vera", "Wim", "Xena", "Yuri", "Zora"]
_LAST = ["Abel", "Brand", "Corvin", "Delmar", "Estes", "Falk", "Garro", "Holm", "Ivers", "Jalen", "Kessler",
         "Lund", "Moray", "Novak", "Orsini", "Pryce", "Quill", "Rasko", "Stroud", "Thorne", "Ulrich", "Varga",
         "Wendt", "Yarrow", "Zeller"]


def _identity(seed: int, part: int, index: int) -> dict:
    return sample_identity(np.random.default_rng([seed, part, index]))


def _jpeg(ident: dict, seed: int, part: int, index: int, j: int, quality,
          variation: float) -> tuple[np.ndarray, bytes]:
    rng = np.random.default_rng([seed, part + 100, index, j])
    img = render_face(ident, rng, variation=variation)
    q = int(rng.integers(quality[0], quality[1] + 1))
    return img, encode_image(img, ".jpg", q)


def _params(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown synthetic parameters {unknown}; valid: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **kwargs}
    p["jpeg_quality"] = tuple(int(v) for v in p["jpeg_quality"])
    for name in ("num_identities", "images_per_identity", "val_identities", "val_images_per_identity",
                 "val_pairs", "probe_identities", "probe_images_per_identity"):
        if int(p[name]) < (2 if name in ("val_identities", "val_images_per_identity") else 1):
            raise ValueError(f"{name} must be >= {2 if name.startswith('val_') else 1}, got {quote(p[name])}")
        p[name] = int(p[name])
    if int(p["num_distractors"]) < 0:
        raise ValueError(f"num_distractors must be >= 0, got {quote(p['num_distractors'])}")
    lo, hi = p["jpeg_quality"]
    if not 1 <= lo <= hi <= 100:
        raise ValueError(f"jpeg_quality must be (lo, hi) with 1 <= lo <= hi <= 100, got {quote(p['jpeg_quality'])}")
    p["seed"], p["num_distractors"], p["megaface"] = int(p["seed"]), int(p["num_distractors"]), bool(p["megaface"])
    p["variation"] = float(p["variation"])
    if not 0.0 <= p["variation"] <= 2.0:
        raise ValueError(f"variation must be in [0, 2], got {quote(p['variation'])}")
    return p


def _write_train(out: Path, p: dict, bar) -> None:
    n, k = p["num_identities"], p["images_per_identity"]
    with FaceRecWriter(out / "train.rec", n * k, n) as writer:
        for c in range(n):
            ident = _identity(p["seed"], _TRAIN, c)
            for j in range(k):
                writer.add(c, _jpeg(ident, p["seed"], _TRAIN, c, j, p["jpeg_quality"], p["variation"])[1])
                bar.update()


def _write_val(out: Path, p: dict, bar) -> None:
    n, k, pairs = p["val_identities"], p["val_images_per_identity"], p["val_pairs"]
    images = []
    for c in range(n):
        ident = _identity(p["seed"], _VAL, c)
        images.append([_jpeg(ident, p["seed"], _VAL, c, j, p["jpeg_quality"], p["variation"])[1] for j in range(k)])
        bar.update(k)
    rng = np.random.default_rng([p["seed"], _LAYOUT, 0])
    bins, issame = [], []
    for i in range(pairs):
        same = i % 2 == 0
        a = int(rng.integers(n))
        b = a if same else (a + 1 + int(rng.integers(n - 1))) % n
        ja = int(rng.integers(k))
        jb = (ja + 1 + int(rng.integers(k - 1))) % k if same else int(rng.integers(k))
        bins += [images[a][ja], images[b][jb]]
        issame.append(same)
    order = rng.permutation(pairs)
    write_bin(out / "synth_val.bin", [bins[2 * i + d] for i in order for d in (0, 1)], [issame[i] for i in order])


def _names(rng, count: int) -> list[str]:
    names = []
    while len(names) < count:
        name = f"{_FIRST[rng.integers(len(_FIRST))]}_{_LAST[rng.integers(len(_LAST))]}"
        if name in names:
            name = f"{name}{len(names)}"
        names.append(name)
    return names


def _write_megaface(out: Path, p: dict, bar) -> dict:
    from . import megaface as mf  # the devkit list writers live with the MegaFace code

    root = out / "megaface"
    seed, q = p["seed"], p["jpeg_quality"]
    rng = np.random.default_rng([seed, _LAYOUT, 1])
    names = _names(rng, p["probe_identities"])
    probes = [_identity(seed, _PROBE, c) for c in range(len(names))]
    n_fs_noise = max(1, len(names) // 8)
    n_mf_noise = max(1, p["num_distractors"] // 1000) if p["num_distractors"] else 0
    fs_noise_at = {(int(c), int(rng.integers(p["probe_images_per_identity"])))
                   for c in rng.choice(len(names), n_fs_noise, replace=False)}
    probe_paths, probe_ids, fs_noise = [], [], []
    used_numbers = set()
    for c, name in enumerate(names):
        (root / "facescrub_images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(p["probe_images_per_identity"]):
            number = int(rng.integers(1, 100000))
            while number in used_numbers:
                number = int(rng.integers(1, 100000))
            used_numbers.add(number)
            rel = f"{name}/{name}_{number}.png"
            if (c, j) in fs_noise_at:  # planted label noise: someone else filed under this name
                img, _ = _jpeg(_identity(seed, _NOISE, c * 1000 + j), seed, _NOISE, c, j, q, p["variation"])
                fs_noise.append(f"{name}_{number}.png")
            else:
                img, _ = _jpeg(probes[c], seed, _PROBE, c, j, q, p["variation"])
            (root / "facescrub_images" / rel).write_bytes(encode_image(img, ".png"))
            bar.update()
            probe_paths.append(rel)
            probe_ids.append(name)
    distractor_paths, mf_noise = [], []
    noise_at = set(rng.choice(p["num_distractors"], n_mf_noise, replace=False).tolist()) if n_mf_noise else set()
    i = 0
    while i < p["num_distractors"]:
        user = f"{int(rng.integers(10**7, 10**8))}@N{int(rng.integers(0, 8)):02d}"
        folder = root / "megaface_images" / user[:3] / user
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, min(int(rng.integers(1, 4)), p["num_distractors"] - i) + 1):
            rel = f"{user[:3]}/{user}/{int(rng.integers(10**6, 10**9))}_{k}.jpg"
            if i in noise_at:  # a distractor that shows a probe identity
                c = i % len(names)
                _, data = _jpeg(probes[c], seed, _NOISE + 10, c, i, q, p["variation"])
                mf_noise.append(rel)
            else:
                _, data = _jpeg(_identity(seed, _DISTRACTOR, i), seed, _DISTRACTOR, i, 0, q, p["variation"])
            (root / "megaface_images" / rel).write_bytes(data)
            bar.update()
            distractor_paths.append(rel)
            i += 1
    lists = root / "templatelists"
    lists.mkdir(parents=True, exist_ok=True)
    mf.write_template_list(lists / "facescrub_features_list.json", probe_paths, probe_ids)
    order = rng.permutation(len(distractor_paths))
    sizes = [s for s in (10, 100, 1000, 10000, 100000, 1000000) if s < len(distractor_paths)]
    for size in sizes + ([len(distractor_paths)] if distractor_paths else []):
        mf.write_template_list(lists / f"megaface_features_list.json_{size}_1",
                               [distractor_paths[j] for j in sorted(order[:size])])
    mf.write_noise_list(root / "facescrub_noises.txt", fs_noise, comment="synthetic: probe images of another person")
    mf.write_noise_list(root / "megaface_noises.txt", mf_noise,
                        comment="synthetic: distractors showing a probe identity")
    (root / "facescrub_lst").write_text("".join(f"{x}\n" for x in probe_paths), encoding="utf-8")
    (root / "megaface_lst").write_text("".join(f"{x}\n" for x in distractor_paths), encoding="utf-8")
    return {"probes": len(probe_paths), "distractors": len(distractor_paths), "facescrub_noises": len(fs_noise),
            "megaface_noises": len(mf_noise)}


def _marker_payload(p: dict) -> dict:
    return {"format_version": FORMAT_VERSION, "params": {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in p.items()}}


def generate(out_dir, *, progress: bool | None = None, **kwargs) -> Path:
    """Write the synthetic dataset into ``out_dir`` (created if needed); returns its Path.

    Keyword arguments (defaults in ``DEFAULTS``): ``seed``, ``num_identities`` x ``images_per_identity``
    (train), ``val_identities`` x ``val_images_per_identity`` and ``val_pairs`` (synth_val.bin, half
    positive), ``probe_identities`` x ``probe_images_per_identity`` and ``num_distractors`` (MegaFace tree,
    skipped when ``megaface`` is False), ``jpeg_quality`` (lo, hi) per image, ``variation`` (0..2: how strong
    pose, lighting, occlusion, blur and noise are; 1 = default). ``progress``: tqdm bar (None: only on a
    terminal); not a dataset parameter.
    """
    p = _params(kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    total = p["num_identities"] * p["images_per_identity"] + p["val_identities"] * p["val_images_per_identity"]
    if p["megaface"]:
        total += p["probe_identities"] * p["probe_images_per_identity"] + p["num_distractors"]
    disable = None if progress is None else not progress  # None: a bar only on a terminal
    with tqdm(total=total, desc="synthetic faces", unit="img", disable=disable) as bar:
        _write_train(out, p, bar)
        _write_val(out, p, bar)
        summary = _write_megaface(out, p, bar) if p["megaface"] else {}
    payload = _marker_payload(p)
    payload["summary"] = summary
    (out / MARKER).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("synthetic dataset written to %s", out)
    return out


def ensure_synthetic(out_dir, *, progress: bool | None = None, **kwargs) -> Path:
    """Generate into ``out_dir`` unless a completed set with the same parameters is already there."""
    p = _params(kwargs)
    out = Path(out_dir)
    marker = out / MARKER
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text(encoding="utf-8"))
            existing.pop("summary", None)
            if existing == _marker_payload(p):
                return out
        except (ValueError, OSError):
            pass
        logger.info("%s holds a synthetic set with other parameters; regenerating", out)
    return generate(out, progress=progress, **p)
