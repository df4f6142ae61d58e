"""Synthetic face renderer (OpenCV drawing, 112x112 RGB), the pixels behind :mod:`facerec.data.synthetic`.

Identity lives in stable parameters drawn once per identity (:func:`sample_identity`): head outline (a few
Fourier harmonics), skin/hair/iris/lip colours, hair style and hairline, eye spacing and size, brow shape,
nose and mouth geometry, ears, beard, glasses, moles and a low-frequency skin texture. Every image
(:func:`render_face`) varies pose (roll, yaw, pitch, scale, shift), expression (smile, open mouth, brows,
blink), lighting (gain, directional ramp, colour cast), background, occlusion (sunglasses, mask, a block),
blur, sensor noise and JPEG quality, so identity has to be learnt from geometry and appearance, not pixels.
Facial features sit near the ArcFace 112x112 five-point template (eyes ~(38, 52) / (74, 52), nose ~(56, 72),
mouth ~(56, 92)). Everything is a pure function of the numpy Generator passed in.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["sample_identity", "render_face", "FACE_SIZE"]

FACE_SIZE = 112
_SHIFT = 4  # cv2 fixed-point drawing: coordinates in 1/16 pixel
_SCALE = 1 << _SHIFT
_YY, _XX = np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(np.float32)
_YC, _XC = _YY - 56, _XX - 56

_HAIR_PALETTE = np.array([[25, 20, 18], [60, 40, 28], [105, 70, 40], [160, 120, 70], [215, 185, 120],
                          [140, 60, 30], [150, 150, 150], [225, 225, 220]], dtype=np.float32)
_IRIS_PALETTE = np.array([[60, 40, 25], [100, 70, 40], [60, 110, 160], [70, 120, 80], [110, 115, 120]],
                         dtype=np.float32)


_NOISE_TILES = 8
_NOISE_BANK: list[np.ndarray] = []


def _noise_bank() -> list[np.ndarray]:
    """Fixed standard-normal tiles (160x160x3, float32) from a constant seed; windows of them are the sensor
    noise (drawing fresh Gaussian noise per image would double the rendering time)."""
    if not _NOISE_BANK:
        rng = np.random.default_rng(20210331)
        _NOISE_BANK.extend(rng.standard_normal((_NOISE_TILES, 160, 160, 3), dtype=np.float32))
    return _NOISE_BANK


def _p(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def _ellipse(img, cx, cy, ax, ay, angle, color, thickness=-1, start=0, end=360):
    cv2.ellipse(img, _p(cx, cy), _p(max(ax, 0.5), max(ay, 0.5)), angle, start, end, color, thickness,
                cv2.LINE_AA, _SHIFT)


def _poly(img, pts, color, closed=True, thickness=-1):
    arr = (np.asarray(pts, dtype=np.float64) * _SCALE).round().astype(np.int32).reshape(-1, 1, 2)
    if thickness < 0:
        cv2.fillPoly(img, [arr], color, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(img, [arr], closed, color, thickness, cv2.LINE_AA, _SHIFT)


def _col(c) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(c, 0, 255))


def sample_identity(rng: np.random.Generator) -> dict:
    """Stable parameters of one synthetic person (plain floats and small arrays)."""
    tone = rng.uniform(0, 1)
    skin = (1 - tone) * np.array([235, 200, 175]) + tone * np.array([95, 60, 40])
    skin = skin * rng.uniform(0.92, 1.08, 3) + rng.normal(0, 6, 3)
    hair = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE))] * rng.uniform(0.85, 1.15) + rng.normal(0, 10, 3)
    return {
        "skin": np.clip(skin, 30, 250),
        "hair": np.clip(hair, 5, 250),
        "iris": _IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] + rng.normal(0, 12, 3),
        "lip": np.clip(skin * np.array([0.95, 0.62, 0.62]) + rng.normal(0, 10, 3), 20, 250),
        "face_rx": rng.uniform(29, 38), "face_ry": rng.uniform(38, 47),
        "face_harm": rng.normal(0, 0.045, (3, 2)),  # outline r(t) *= 1 + sum a cos(k t) + b sin(k t), k = 2..4
        "jaw": rng.uniform(-0.12, 0.12),
        "hair_style": int(rng.integers(5)),  # 0 short, 1 long, 2 bald, 3 fringe, 4 side part
        "hairline": rng.uniform(11, 20), "hair_volume": rng.uniform(2, 8),
        "eye_dx": rng.uniform(14.5, 21.0), "eye_y": rng.uniform(48, 55),
        "eye_rx": rng.uniform(4.5, 7.0), "eye_ry": rng.uniform(2.2, 3.8), "eye_tilt": rng.uniform(-10, 10),
        "brow_dy": rng.uniform(6.5, 11), "brow_w": rng.uniform(8, 13), "brow_t": int(rng.integers(1, 4)),
        "brow_arch": rng.uniform(-1.5, 3.5),
        "nose_len": rng.uniform(13, 22), "nose_w": rng.uniform(4, 9), "nose_bridge": bool(rng.uniform() < 0.6),
        "mouth_y": rng.uniform(88, 96), "mouth_w": rng.uniform(9, 17), "lip_t": rng.uniform(1.5, 4.0),
        "ear": rng.uniform(4, 9),
        "beard": int(rng.choice(3, p=[0.7, 0.15, 0.15])),  # 0 none, 1 moustache, 2 full
        "glasses": bool(rng.uniform() < 0.15), "glasses_color": rng.uniform(10, 200, 3),
        "moles": rng.uniform([-0.8, -0.6], [0.8, 0.9], (int(rng.integers(0, 4)), 2)),
        "texture": rng.normal(0, 1, (6, 6)).astype(np.float32), "texture_amp": rng.uniform(0.02, 0.09),
    }


def _outline(ident, cx, cy, yaw) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(t)
    for k, (a, b) in enumerate(ident["face_harm"], start=2):
        r += a * np.cos(k * t) + b * np.sin(k * t)
    lower = np.clip(np.sin(t), 0, None)  # 1 at the chin
    x = ident["face_rx"] * r * np.cos(t) * (1 + ident["jaw"] * lower ** 2 * np.abs(np.cos(t)))
    y = ident["face_ry"] * r * np.sin(t)
    x = x * (1 - 0.12 * yaw * np.sign(np.cos(t)))  # the far side looks narrower
    return np.stack([cx + x, cy + y], axis=1)


def _draw_hair(img, ident, cx, cy, front: bool, yaw: float):
    hair = _col(ident["hair"])
    style, vol = ident["hair_style"], ident["hair_volume"]
    if not front:
        if style == 1:
            _ellipse(img, cx, cy + 8, ident["face_rx"] + vol + 4, ident["face_ry"] + 12, 0, hair)
        elif style != 2:
            _ellipse(img, cx, cy - 2, ident["face_rx"] + vol * 0.6, ident["face_ry"] + vol * 0.5, 0, hair)
        return
    if style == 2:
        return
    top = cy - ident["face_ry"]
    line = top + ident["hairline"]
    mask = np.zeros(img.shape[:2], np.uint8)
    _ellipse(mask, cx, cy - 2, ident["face_rx"] + vol * 0.6, ident["face_ry"] + vol * 0.5, 0, 255)
    dx = (_XX - cx) / ident["face_rx"]
    if style == 3:
        limit = line + 4 + 2 * np.cos(dx * 9)
    elif style == 4:
        limit = line - 6 * np.tanh(3 * (dx + 0.2 * yaw)) + 4 * dx ** 2
    else:
        limit = line - 4 + 8 * dx ** 2
    sides = (np.abs(dx) > 0.93) & (_YY < cy + (16 if style == 1 else -12))
    sel = (mask > 0) & ((_YY < limit) | sides)
    img[sel] = hair


class _Pose:
    """Where the face sits in one image: the outline centre (cx, cy), the features' centre (fx) shifted by yaw,
    their vertical shift fy (pitch), and the yaw itself (-1..1) that narrows the far side."""

    def __init__(self, yaw: float, pitch: float) -> None:
        self.cx, self.cy = 56.0, 60.0
        self.yaw = yaw
        self.fx = self.cx + 7.0 * yaw  # features move with yaw, the outline barely
        self.fy = pitch * 3.0


def render_face(ident: dict, rng: np.random.Generator, *, variation: float = 1.0) -> np.ndarray:
    """One image of ``ident`` with random pose/expression/lighting/occlusion/blur/noise -> RGB uint8 (112, 112, 3).

    ``variation`` scales every nuisance (pose range, lighting, colour cast, occlusion and blur probability,
    noise): 0 gives a canonical frontal image on a random background, 1 the default mix.

    JPEG compression is left to the caller (it picks the quality per image). The stages below draw from
    ``rng`` in this order, so an identity and a seed give the same image.
    """
    v = float(variation)
    img = _background(rng)
    pose = _Pose(v * rng.uniform(-1, 1), v * rng.uniform(-1, 1))
    img = _draw_head(img, ident, pose)
    eye_y = _draw_eyes(img, ident, pose, rng)
    _draw_nose(img, ident, pose, eye_y)
    _draw_mouth(img, ident, pose, rng)
    _draw_front(img, ident, pose, eye_y)
    if rng.uniform() < 0.25 * v:
        _occlude(img, rng, pose.fx, eye_y, ident)
    img = _pose_warp(img, rng, v)
    return _camera(img, rng, v)


def _background(rng) -> np.ndarray:
    """A flat random colour with a random linear ramp, uint8 (S, S, 3)."""
    S = FACE_SIZE
    bg = rng.uniform(20, 235, 3)
    img = np.empty((S, S, 3), np.float32)
    img[:] = bg
    ramp = rng.uniform(-40, 40) * (_XX / S - 0.5) + rng.uniform(-40, 40) * (_YY / S - 0.5)
    img += ramp[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_head(img, ident, pose: _Pose) -> np.ndarray:
    """Back hair, ears, the shaded skin of the face outline and a full beard; returns the new image."""
    S, cx, cy, yaw = FACE_SIZE, pose.cx, pose.cy, pose.yaw
    skin = _col(ident["skin"])
    _draw_hair(img, ident, cx, cy, False, yaw)
    ear_y = cy - 4 + pose.fy
    for side in (-1, 1):
        ex = cx + side * (ident["face_rx"] * (1 - 0.12 * yaw * side) - 1)
        _ellipse(img, ex, ear_y, ident["ear"] * (1 - 0.5 * yaw * side), ident["ear"] * 1.6, 0, skin)
    outline = _outline(ident, cx, cy, yaw)
    _poly(img, outline, skin)

    face_mask = np.zeros((S, S), np.uint8)
    _poly(face_mask, outline, 255)
    tex = cv2.resize(ident["texture"], (S, S), interpolation=cv2.INTER_CUBIC)
    shade = 1 + ident["texture_amp"] * tex - 0.08 * np.abs(_XX - pose.fx) / ident["face_rx"]
    fm = face_mask > 0
    shaded = img * np.where(fm, shade, np.float32(1))[..., None]
    img = np.clip(shaded, 0, 255, out=shaded).astype(np.uint8)

    if ident["beard"] == 2:
        beard = fm & (_YY > ident["mouth_y"] + pose.fy - 7 + 8 * ((_XX - pose.fx) / ident["face_rx"]) ** 2)
        img[beard] = _col(ident["hair"] * 0.9)
    return img


def _draw_eyes(img, ident, pose: _Pose, rng) -> float:
    """Eyes (random blink) and brows (random raise); returns the eye row."""
    fx, yaw = pose.fx, pose.yaw
    dark = _col(ident["skin"] * 0.7)
    openness = 1.0 if rng.uniform() > 0.15 else rng.uniform(0.1, 0.6)
    brow_raise = rng.uniform(-1.5, 2.5)
    eye_y = ident["eye_y"] + pose.fy
    for side in (-1, 1):
        scale = 1 - 0.25 * yaw * side
        ex = fx + side * ident["eye_dx"] * scale
        rx, ry = ident["eye_rx"] * scale, ident["eye_ry"] * openness
        tilt = -side * ident["eye_tilt"]
        _ellipse(img, ex, eye_y, rx, ry, tilt, (240, 238, 232))
        ir = min(ident["eye_ry"] * 0.95, rx * 0.6)
        if openness > 0.3:
            _ellipse(img, ex + 1.5 * yaw, eye_y, ir * scale, min(ir, ry), 0, _col(ident["iris"]))
            _ellipse(img, ex + 1.5 * yaw, eye_y, ir * 0.45 * scale, min(ir, ry) * 0.45, 0, (15, 12, 12))
        _ellipse(img, ex, eye_y, rx, ry, tilt, dark, 1)
        by = eye_y - ident["brow_dy"] - brow_raise
        bw = ident["brow_w"] * scale
        xs = np.linspace(ex - bw / 2, ex + bw / 2, 7)
        ys = by - ident["brow_arch"] * (1 - ((xs - ex) / (bw / 2)) ** 2) + side * 0.15 * (xs - ex)
        _poly(img, np.stack([xs, ys], 1), _col(ident["hair"] * 0.8), closed=False, thickness=ident["brow_t"])
    return eye_y


def _draw_nose(img, ident, pose: _Pose, eye_y: float) -> None:
    fx, yaw = pose.fx, pose.yaw
    ny = eye_y + ident["nose_len"]
    nx = fx + 4.0 * yaw
    nw = ident["nose_w"]
    if ident["nose_bridge"]:
        _poly(img, [[fx + 2 * yaw + 2, eye_y + 3], [nx + nw * 0.6, ny - 1]], _col(ident["skin"] * 0.7),
              closed=False, thickness=1)
    _ellipse(img, nx, ny, nw, 2.5, 0, _col(ident["skin"] * 0.85), 1, 0, 180)
    for side in (-1, 1):
        _ellipse(img, nx + side * nw * 0.45, ny + 0.5, 1.3, 0.9, 0, _col(ident["skin"] * 0.45))


def _draw_mouth(img, ident, pose: _Pose, rng) -> None:
    """Lips with a random smile, sometimes open; a moustache above them."""
    yaw = pose.yaw
    smile = rng.uniform(-0.6, 1.0)
    opened = rng.uniform() < 0.25
    my = ident["mouth_y"] + pose.fy * 0.8
    mx = pose.fx + 3.0 * yaw
    mw = ident["mouth_w"] * (1 + 0.15 * smile) * (1 - 0.15 * abs(yaw))
    if ident["beard"] >= 1:
        _ellipse(img, mx, my - ident["lip_t"] - 3, mw * 0.9, 3, 0, _col(ident["hair"] * 0.9))
    xs = np.linspace(mx - mw, mx + mw, 9)
    curve = my - smile * 3.5 * ((xs - mx) / mw) ** 2
    if opened:
        gap = rng.uniform(2, 6)
        _poly(img, np.concatenate([np.stack([xs, curve], 1), np.stack([xs[::-1], curve[::-1] + gap
                                   * (1 - ((xs[::-1] - mx) / mw) ** 2)], 1)]), (60, 20, 25))
    _poly(img, np.stack([xs, curve], 1), _col(ident["lip"]), closed=False, thickness=max(1, int(ident["lip_t"])))


def _draw_front(img, ident, pose: _Pose, eye_y: float) -> None:
    """Moles, then the hair that falls over the forehead, then glasses on top."""
    fx = pose.fx
    for mxr, myr in ident["moles"]:
        _ellipse(img, fx + mxr * ident["face_rx"] * 0.8, pose.cy + myr * ident["face_ry"] * 0.7, 1.0, 1.0, 0,
                 _col(ident["skin"] * 0.4))
    _draw_hair(img, ident, pose.cx, pose.cy, True, pose.yaw)
    if ident["glasses"]:
        for side in (-1, 1):
            _ellipse(img, fx + side * ident["eye_dx"], eye_y, ident["eye_rx"] + 3.5, ident["eye_ry"] + 4.5, 0,
                     _col(ident["glasses_color"]), 1)
        _poly(img, [[fx - ident["eye_dx"] + ident["eye_rx"] + 3.5, eye_y], [fx + ident["eye_dx"]
              - ident["eye_rx"] - 3.5, eye_y]], _col(ident["glasses_color"]), closed=False, thickness=1)


def _pose_warp(img, rng, v: float) -> np.ndarray:
    """Roll, scale and shift as one similarity warp."""
    S = FACE_SIZE
    angle, scale = v * rng.uniform(-12, 12), 1 + v * rng.uniform(-0.08, 0.08)
    m = cv2.getRotationMatrix2D((56.0, 60.0), angle, scale)
    m[:, 2] += v * rng.uniform(-3.5, 3.5, 2)
    return cv2.warpAffine(img, m, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _camera(img, rng, v: float) -> np.ndarray:
    """Lighting (gain, directional ramp, colour cast), blur or down-up sampling, sensor noise -> uint8."""
    S = FACE_SIZE
    theta = rng.uniform(0, 2 * np.pi)
    gain, slope = 1 + v * rng.uniform(-0.3, 0.2), v * rng.uniform(0, 0.4) / 56
    light = np.float32(gain) * (1 + np.float32(slope * np.cos(theta)) * _XC + np.float32(slope * np.sin(theta)) * _YC)
    cast = 1 + v * rng.uniform(-0.1, 0.1) * np.array([1, 0, -1], np.float32)
    f = img * cast.astype(np.float32)
    f *= light[..., None]
    if rng.uniform() < 0.5 * min(v, 1.0):
        f = cv2.GaussianBlur(f, (0, 0), v * rng.uniform(0.4, 1.6) + 1e-3)
    elif rng.uniform() < 0.3 * min(v, 1.0):
        small = int(rng.integers(36, 72))
        f = cv2.resize(cv2.resize(f, (small, small), interpolation=cv2.INTER_AREA), (S, S),
                       interpolation=cv2.INTER_LINEAR)
    tile = _noise_bank()[int(rng.integers(_NOISE_TILES))]
    oy, ox = (int(k) for k in rng.integers(0, tile.shape[0] - S, 2))
    f += np.float32(v * rng.uniform(0, 6)) * tile[oy:oy + S, ox:ox + S]
    return np.clip(f, 0, 255).astype(np.uint8)


def _occlude(img, rng, fx, eye_y, ident):
    kind = int(rng.integers(3))
    color = _col(rng.uniform(0, 255, 3))
    if kind == 0:  # sunglasses
        for side in (-1, 1):
            _ellipse(img, fx + side * ident["eye_dx"], eye_y, ident["eye_rx"] + 4, ident["eye_ry"] + 4, 0,
                     _col(rng.uniform(0, 50, 3)))
        _poly(img, [[fx - 5, eye_y], [fx + 5, eye_y]], (20, 20, 20), closed=False, thickness=2)
    elif kind == 1:  # mask over the lower face
        top = eye_y + ident["nose_len"] * rng.uniform(0.4, 0.9)
        _poly(img, [[fx - 34, top + 4], [fx, top - 3], [fx + 34, top + 4], [fx + 28, 104], [fx - 28, 104]], color)
    else:  # a hand / object block somewhere on the face
        x0, y0 = rng.uniform(20, 80), rng.uniform(30, 90)
        w, h = rng.uniform(14, 30), rng.uniform(10, 26)
        _ellipse(img, x0, y0, w / 2, h / 2, rng.uniform(0, 180), color)
