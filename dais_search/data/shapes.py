"""``shapes``: the embedded, procedural, offline image-classification data set.

Ten classes of shapes and textures drawn at ``size x size`` RGB (32x32 by default). It is the default
data set of the demo and the unit tests, so it must never download anything, and it must be hard
enough that channel pruning has something to lose, yet learnable by a small CNN in a few epochs.

Every nuisance factor is drawn independently of the class: position, size, rotation, foreground and
background colours (a background may be a gradient), stripe period and phase, clutter, colour jitter
and pixel noise. Averaged over images of one class, every pixel therefore has the same expected
colour, so neither the mean colour, the brightness, the position nor any linear function of the raw
pixels gives the class away; a classifier has to detect shape, which is a local, translation-invariant
and colour-invariant feature (what convolutions are good at).

Byte-identical output on any machine: the generator uses only ``Generator.random``/``integers``
(integer-exact) and IEEE-exact arithmetic (``+ - * /``, ``sqrt``, ``floor``, min/max). Rotations come
from normalised random points, not ``sin``/``cos``, stripes from a sawtooth, not ``sin``, and the noise
is a sum of uniforms, not ``normal``, because transcendental functions may differ in the last bit
between CPUs and numpy builds, which after rounding to ``uint8`` could flip a pixel.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError

__all__ = ["SHAPES_CLASSES", "make_shapes"]

SHAPES_CLASSES: tuple[str, ...] = (
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "hstripes",
    "vstripes",
    "checker",
    "ellipse",
    "star",
)

_MIN_SIZE = 16
# Images rendered at once: large enough to amortise numpy's per-call overhead, small enough that the
# (chunk, clutter, size, size) float32 buffers stay a few tens of MB. A constant, so the random
# stream (noise is drawn chunk by chunk) does not depend on the machine.
_CHUNK = 512
_CLUTTER_SLOTS = 6
_CLUTTER_MAX_HALF_LEN = 5.0  # pixels at size 32; blobs (radius <= 2.2) reach less far
_CLUTTER_MAX_HALF_WIDTH = 0.75
_COLOUR_TRIES = 16
# Minimum RGB distance (in [0, 1] units) between the foreground colour and the whole background
# gradient: random colours would otherwise sometimes draw the shape invisibly on its background.
_MIN_CONTRAST = 0.42

# cos/sin of multiples of 72 and 120 degrees from square roots only (correctly rounded everywhere).
_SQ5 = math.sqrt(5.0)
_C72, _S72 = (_SQ5 - 1.0) / 4.0, math.sqrt(10.0 + 2.0 * _SQ5) / 4.0
_C144, _S144 = -(_SQ5 + 1.0) / 4.0, math.sqrt(10.0 - 2.0 * _SQ5) / 4.0
_PENTA = ((1.0, 0.0), (_C72, _S72), (_C144, _S144), (_C144, -_S144), (_C72, -_S72))
_TRI = ((1.0, 0.0), (-0.5, math.sqrt(3.0) / 2.0), (-0.5, -math.sqrt(3.0) / 2.0))


def make_shapes(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate the ``shapes`` data set.

    Args:
        n: Number of images, at least 1.
        seed: Seed of ``numpy.random.default_rng``; the same ``(n, seed, size)`` always gives
            byte-identical output. Use different seeds for train and test splits.
        size: Side of the square images in pixels, at least 16. Shapes scale with it.

    Returns:
        ``(images, labels)``: ``images`` is ``uint8`` of shape ``(n, size, size, 3)`` (HWC, RGB),
        ``labels`` is ``int64`` of shape ``(n,)`` with values indexing :data:`SHAPES_CLASSES`. Classes
        are balanced: their counts differ by at most one.

    Raises:
        UserError: (a ``ValueError``) if ``n < 1``, ``size < 16`` or ``seed < 0``, or one is not an integer.
    """
    n = _check_int("n", n, 1, "the number of images")
    size = _check_int("size", size, _MIN_SIZE, "the image side in pixels (smaller images cannot show the shapes)")
    seed = _check_int("seed", seed, 0, "the random seed")

    rng = np.random.default_rng(seed)
    n_cls = len(SHAPES_CLASSES)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % n_cls)
    params = _draw_params(rng, n, size)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        p = {k: v[sl] for k, v in params.items()}
        images[sl] = _render(rng, labels[sl], p, coords, size)
    return images, labels


def _check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer ({meaning}), got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum} ({meaning}), got {value}")
    return int(value)


def _unit_vectors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly distributed directions ``(cos, sin)`` without trigonometric functions."""
    tries = 8
    p = rng.random((n, tries, 2)) * 2.0 - 1.0
    r2 = p[..., 0] * p[..., 0] + p[..., 1] * p[..., 1]
    ok = (r2 > 1e-4) & (r2 <= 1.0)
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    x, y, r = p[rows, first, 0], p[rows, first, 1], np.sqrt(r2[rows, first])
    found = ok.any(axis=1)  # all 8 tries miss with probability ~5e-6; fall back to angle 0
    return np.where(found, x / r, 1.0), np.where(found, y / r, 0.0)


def _uniform(rng: np.random.Generator, lo: float, hi: float, shape: int | tuple[int, ...]) -> np.ndarray:
    return lo + (hi - lo) * rng.random(shape)


def _draw_params(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Every per-image random parameter, drawn for all images whatever their class.

    Drawing the same parameters for every class keeps the random stream independent of the labels and
    makes the nuisance distributions (position, size, colours) identical across classes.
    """
    unit = size / 32.0
    p: dict[str, np.ndarray] = {}
    radius = _uniform(rng, 7.0, 12.0, n) * unit
    p["radius"] = radius
    # The centre keeps most of the shape inside the frame; a little cropping is allowed.
    margin = 0.8 * radius
    p["cx"] = margin + (size - 2.0 * margin) * rng.random(n)
    p["cy"] = margin + (size - 2.0 * margin) * rng.random(n)
    p["rot_c"], p["rot_s"] = _unit_vectors(rng, n)
    p["thick"] = np.maximum(radius * _uniform(rng, 0.22, 0.38, n), 1.5 * unit)
    p["filled"] = rng.random(n) < 0.5
    p["aspect"] = _uniform(rng, 2.3, 3.6, n)
    p["period"] = _uniform(rng, 4.0, 7.0, n) * unit
    p["phase"] = rng.random((n, 2))
    # Stripe classes are defined by the image axes; a small tilt keeps them from being pixel-perfect.
    p["tilt"] = _uniform(rng, -0.2, 0.2, n)
    p["patch_disc"] = rng.random(n) < 0.5
    p["patch_c"], p["patch_s"] = _unit_vectors(rng, n)

    # Colours: background gradient from bg0 to bg1, foreground far from every colour on that gradient.
    bg0 = rng.random((n, 3))
    bg1 = np.clip(bg0 + _uniform(rng, -0.35, 0.35, (n, 3)), 0.0, 1.0)
    bg1 = np.where((rng.random(n) < 0.3)[:, None], bg0, bg1)  # some backgrounds are flat
    p["bg0"], p["bg1"] = bg0, bg1
    p["grad_c"], p["grad_s"] = _unit_vectors(rng, n)
    cand = rng.random((n, _COLOUR_TRIES, 3))
    dist = _dist_to_segment(cand, bg0[:, None, :], bg1[:, None, :])
    ok = dist >= _MIN_CONTRAST
    pick = np.where(ok.any(axis=1), np.argmax(ok, axis=1), np.argmax(dist, axis=1))
    p["fg"] = cand[np.arange(n), pick]

    # Clutter: a few small blobs and short line segments of random colours, some occluding the shape,
    # so that "there is something of a different colour here" is not a shortcut to the class.
    k = _CLUTTER_SLOTS
    p["cl_active"] = np.arange(k)[None, :] < rng.integers(1, k + 1, n)[:, None]
    p["cl_line"] = rng.random((n, k)) < 0.5
    p["cl_top"] = rng.random((n, k)) < 0.2
    p["cl_x"] = rng.random((n, k)) * size
    p["cl_y"] = rng.random((n, k)) * size
    p["cl_r"] = _uniform(rng, 0.8, 2.2, (n, k)) * unit
    p["cl_len"] = _uniform(rng, 2.0, _CLUTTER_MAX_HALF_LEN, (n, k)) * unit
    p["cl_hw"] = _uniform(rng, 0.45, _CLUTTER_MAX_HALF_WIDTH, (n, k)) * unit
    c, s = _unit_vectors(rng, n * k)
    p["cl_c"], p["cl_s"] = c.reshape(n, k), s.reshape(n, k)
    p["cl_col"] = rng.random((n, k, 3))

    # Photometric jitter: contrast about mid-grey, per-channel gain, brightness offset. It is affine and
    # compositing takes convex combinations of colours, so it is applied to the colours, not the pixels.
    contrast = _uniform(rng, 0.75, 1.2, n)[:, None]
    gain = _uniform(rng, 0.9, 1.1, (n, 3))
    offset = _uniform(rng, -0.08, 0.08, n)[:, None]
    for key in ("bg0", "bg1", "fg", "cl_col"):
        c, g, o, k = p[key], gain, offset, contrast
        if c.ndim == 3:
            g, o, k = g[:, None, :], o[:, None, :], k[:, None, :]
        p[key] = ((c - 0.5) * k + 0.5) * g + o
    p["noise"] = _uniform(rng, 0.02, 0.08, n)
    return p


def _dist_to_segment(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from colours ``x`` to the colour segment ``a``-``b`` (last axis = RGB)."""
    d = b - a
    w = x - a
    dd = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    wd = w[..., 0] * d[..., 0] + w[..., 1] * d[..., 1] + w[..., 2] * d[..., 2]
    t = np.clip(wd / np.maximum(dd, 1e-12), 0.0, 1.0)
    e = w - t[..., None] * d
    return np.sqrt(e[..., 0] * e[..., 0] + e[..., 1] * e[..., 1] + e[..., 2] * e[..., 2])


def _f32(a: np.ndarray) -> np.ndarray:
    """Per-image parameter as float32 broadcastable against ``(m, size, size)``."""
    return a.astype(np.float32)[:, None, None]


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(np.float32(0.5) - sdf, 0.0, 1.0)


def _sawtooth_sdf(x: np.ndarray) -> np.ndarray:
    """Signed distance (in periods, positive inside) to the stripe edges of ``frac(x) < 0.5``."""
    w = x + np.float32(0.25)
    w = w - np.floor(w)
    return np.float32(0.25) - np.abs(w - np.float32(0.5))


def _shape_alpha(k: int, u: np.ndarray, v: np.ndarray, X: np.ndarray, Y: np.ndarray, p: dict) -> np.ndarray:
    """Coverage of class ``k`` for the images in ``p``; ``u, v`` are rotated, ``X, Y`` unrotated offsets."""
    name = SHAPES_CLASSES[k]
    R = _f32(p["radius"])
    th = _f32(p["thick"])
    half = np.float32(0.5)
    if name == "disc":
        return _coverage(np.sqrt(u * u + v * v) - R)
    if name == "ring":
        return _coverage(np.abs(np.sqrt(u * u + v * v) - R) - half * th)
    if name == "square":
        box = np.maximum(np.abs(u), np.abs(v)) - np.float32(0.8) * R
        outline = np.abs(box) - half * th
        return _coverage(np.where(p["filled"][:, None, None], box, outline))
    if name == "triangle":
        # Equilateral, circumradius R: inside all three half-planes at distance R/2 from the centre.
        d = [u * np.float32(c) + v * np.float32(s) for c, s in _TRI]
        return _coverage(np.maximum(np.maximum(d[0], d[1]), d[2]) - half * R)
    if name == "cross":
        a = np.float32(0.75) * th
        au, av = np.abs(u), np.abs(v)
        return _coverage(np.minimum(np.maximum(au - R, av - a), np.maximum(au - a, av - R)))
    if name in ("hstripes", "vstripes", "checker"):
        period = _f32(p["period"])
        ph = p["phase"].astype(np.float32)
        if name == "checker":
            gu = _sawtooth_sdf(u / period + ph[:, 0, None, None])
            gv = _sawtooth_sdf(v / period + ph[:, 1, None, None])
            # Inside where both or neither stripe sets are; distance is to the nearer edge line.
            g = np.sign(gu * gv) * np.minimum(np.abs(gu), np.abs(gv))
        else:
            t = _f32(p["tilt"])
            norm = np.sqrt(np.float32(1.0) + t * t)
            # Distance along the stripes' normal: y for horizontal stripes, x for vertical ones.
            along = (Y + t * X) / norm if name == "hstripes" else (X + t * Y) / norm
            g = _sawtooth_sdf(along / period + ph[:, 0, None, None])
        stripes = np.clip(half + g * period, 0.0, 1.0)
        # The patch outline has its own random rotation, so its edges carry no class information.
        pc, ps = _f32(p["patch_c"]), _f32(p["patch_s"])
        pu, pv = X * pc + Y * ps, Y * pc - X * ps
        disc = np.sqrt(pu * pu + pv * pv) - R
        box = np.maximum(np.abs(pu), np.abs(pv)) - np.float32(0.85) * R
        return stripes * _coverage(np.where(p["patch_disc"][:, None, None], disc, box))
    if name == "ellipse":
        b = R / _f32(p["aspect"])
        return _coverage((np.sqrt((u / R) ** 2 + (v / b) ** 2) - np.float32(1.0)) * b)
    if name == "star":
        # Pentagram: the points outside at most one of the five edge lines of its inner pentagon, so
        # the second-largest half-plane distance is a signed distance. Tips at R need apothem R*cos72.
        d = np.stack([u * np.float32(c) + v * np.float32(s) for c, s in _PENTA])
        return _coverage(np.sort(d, axis=0)[-2] - np.float32(_C72) * R)
    raise AssertionError(name)


def _render(rng: np.random.Generator, labels: np.ndarray, p: dict, coords: np.ndarray, size: int) -> np.ndarray:
    """Draw the images of one chunk: background, clutter below, shape, clutter above, noise."""
    m = labels.shape[0]
    f = np.float32
    # Work in 0..255 units so that the final rounding is one add and a truncating cast.
    scale = f(255.0)

    # Background gradient along a random direction, across the whole image.
    gc, gs = _f32(p["grad_c"]), _f32(p["grad_s"])
    gx = coords[None, None, :] - f(size / 2)
    gy = coords[None, :, None] - f(size / 2)
    t = np.clip(f(0.5) + (gx * gc + gy * gs) / f(size), 0.0, 1.0)[..., None]
    bg0 = (p["bg0"] * 255.0).astype(f)[:, None, None, :]
    bg1 = (p["bg1"] * 255.0).astype(f)[:, None, None, :]
    img = bg0 + t * (bg1 - bg0)  # (m, size, size, 3)
    flat = img.reshape(-1, 3)

    under, over = _clutter(p, size)
    for idx, alpha, colour in under:
        flat[idx] += alpha[:, None] * (colour * scale - flat[idx])

    X = coords[None, None, :] - _f32(p["cx"])  # (m, 1, size)
    Y = coords[None, :, None] - _f32(p["cy"])  # (m, size, 1)
    X, Y = np.broadcast_arrays(X, Y)
    rc, rs = _f32(p["rot_c"]), _f32(p["rot_s"])
    U, V = X * rc + Y * rs, Y * rc - X * rs
    shape = np.empty((m, size, size, 1), dtype=f)
    for k in range(len(SHAPES_CLASSES)):
        idx = np.flatnonzero(labels == k)
        if idx.size:
            sub = {key: val[idx] for key, val in p.items()}
            shape[idx, ..., 0] = _shape_alpha(k, U[idx], V[idx], X[idx], Y[idx], sub)
    fg = (p["fg"] * 255.0).astype(f)[:, None, None, :]
    img += shape * (fg - img)

    for idx, alpha, colour in over:
        flat[idx] += alpha[:, None] * (colour * scale - flat[idx])

    # Triangular noise from two uniforms (see the module docstring for why not a normal).
    noise = rng.random(img.shape, dtype=f)
    noise -= rng.random(img.shape, dtype=f)
    noise *= (p["noise"] * 255.0).astype(f)[:, None, None, None]
    img += noise
    img += f(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)  # truncation of x + 0.5 >= 0 rounds to nearest


def _clutter(p: dict, size: int) -> tuple[list, list]:
    """Clutter items as sparse pixel updates, split into those drawn under and over the shape.

    Items are small, so each is rendered in a fixed window around its centre rather than over the
    whole image. Returns, per slot and layer, ``(flat pixel indices, coverage, colours)`` for the
    pixels the item touches; within one slot an image's pixels are distinct, so fancy-index updates
    do not collide.
    """
    f = np.float32
    m, k = p["cl_x"].shape
    unit = size / 32.0
    # Largest reach from an item's centre: half a line plus half its width, plus half a pixel of
    # anti-aliasing. Pixel centres x0 + i + 0.5 within that reach of a centre in [x0, x0 + 1) have
    # |i| <= floor(reach + 0.5).
    reach = (_CLUTTER_MAX_HALF_LEN + _CLUTTER_MAX_HALF_WIDTH) * unit + 0.5
    half = math.floor(reach + 0.5)
    offs = np.arange(-half, half + 1)
    x0 = np.floor(p["cl_x"]).astype(np.int64)
    y0 = np.floor(p["cl_y"]).astype(np.int64)
    px = x0[..., None, None] + offs[None, None, None, :]  # (m, k, 1, w)
    py = y0[..., None, None] + offs[None, None, :, None]  # (m, k, w, 1)
    dx = px.astype(f) + f(0.5) - p["cl_x"].astype(f)[..., None, None]
    dy = py.astype(f) + f(0.5) - p["cl_y"].astype(f)[..., None, None]
    blob = np.sqrt(dx * dx + dy * dy) - p["cl_r"].astype(f)[..., None, None]
    lc, ls = p["cl_c"].astype(f)[..., None, None], p["cl_s"].astype(f)[..., None, None]
    half_len = p["cl_len"].astype(f)[..., None, None]
    along = np.clip(dx * lc + dy * ls, -half_len, half_len)
    ex, ey = dx - along * lc, dy - along * ls
    line = np.sqrt(ex * ex + ey * ey) - p["cl_hw"].astype(f)[..., None, None]
    alpha = _coverage(np.where(p["cl_line"][..., None, None], line, blob))
    inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    live = (alpha > 0) & inside & p["cl_active"][..., None, None]
    pix = (np.arange(m)[:, None, None, None] * size + py) * size + px  # (m, k, w, w)
    colours = p["cl_col"].astype(f)
    layers: tuple[list, list] = ([], [])
    for j in range(k):
        for layer, on_top in zip(layers, (False, True), strict=True):
            sel = live[:, j] & (p["cl_top"][:, j] == on_top)[:, None, None]
            rows = np.nonzero(sel)[0]
            layer.append((pix[:, j][sel], alpha[:, j][sel], colours[rows, j]))
    return layers
