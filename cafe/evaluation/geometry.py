"""The embedding space's shape: a 2-D map of image and text embeddings (paper Fig. 3) and the cumulative
explained-variance curve (VladVA Fig. 3), drawn as PNG with PIL (no plotting library needed).

The 2-D map uses UMAP when ``umap-learn`` is installed and PCA otherwise (``method="auto"``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

IMAGE_COLOUR = (31, 119, 180)
TEXT_COLOUR = (255, 127, 14)


def pca_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def project_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Rows in 2-D and the method used."""
    if method in ("auto", "umap"):
        try:
            import umap  # type: ignore[import-not-found]

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "umap"
        except ImportError:
            if method == "umap":
                raise ImportError("evaluate.scatter_method=umap needs umap-learn installed") from None
    return pca_2d(x), "pca"


def _canvas(size: tuple[int, int], title: str):
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 6), title, fill="black")
    return img, draw


def _to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def scatter_png(image_emb: np.ndarray, text_emb: np.ndarray, method: str = "auto", size: int = 480) -> tuple[bytes, str]:
    """PNG bytes of a 2-D scatter, images in blue and texts in orange, and the projection used."""
    points, used = project_2d(np.concatenate([image_emb, text_emb]), method)
    img, draw = _canvas((size, size), f"image (blue) vs text (orange) embeddings, {used.upper()}")
    margin, top = 20, 28
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    xy = (points - lo) / span
    px = margin + xy[:, 0] * (size - 2 * margin)
    py = size - margin - xy[:, 1] * (size - margin - top)
    n_img = len(image_emb)
    for i in range(len(points)):
        colour = IMAGE_COLOUR if i < n_img else TEXT_COLOUR
        draw.ellipse((px[i] - 2, py[i] - 2, px[i] + 2, py[i] + 2), fill=colour)
    return _to_png(img), used


def curves_png(curves: dict[str, np.ndarray], title: str, size: tuple[int, int] = (480, 320),
               max_x: int = 64) -> bytes:
    """Line plot of curves in [0, 1] (e.g. cumulative explained variance by component count)."""
    palette = [IMAGE_COLOUR, TEXT_COLOUR, (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    img, draw = _canvas(size, title)
    w, h = size
    left, right, top, bottom = 36, 12, 28, 24
    draw.rectangle((left, top, w - right, h - bottom), outline=(180, 180, 180))
    for frac in (0.0, 0.5, 1.0):
        y = h - bottom - frac * (h - top - bottom)
        draw.text((4, y - 6), f"{frac:.1f}", fill="black")
    n = max(1, min(max_x, max((len(c) for c in curves.values()), default=1)))
    draw.text((left, h - bottom + 4), "1", fill="black")
    draw.text((w - right - 20, h - bottom + 4), str(n), fill="black")
    for k, (name, curve) in enumerate(curves.items()):
        colour = palette[k % len(palette)]
        ys = np.asarray(curve[:n], dtype=float)
        pts = [(left + (i / max(n - 1, 1)) * (w - left - right), h - bottom - y * (h - top - bottom))
               for i, y in enumerate(ys)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((left + 8, top + 6 + 12 * k), name, fill=colour)
    return _to_png(img)
