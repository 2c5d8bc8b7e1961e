"""The 2-pixel periodic pattern ("stripes") a network with a ×2 space-to-depth / pixel-shuffle stage can draw.

Align-CR works at half resolution: the optical image is space-to-depth'ed by 2 on the way in and pixel-shuffled
back by 2 on the way out. The conv before the shuffle computes each of the four output phases (even/odd row ×
even/odd column) with its own filter; initialised at random (PyTorch's default) those filters differ, and a short
training run never evens them out. The first bundled ``aligncr-lite`` drew 25–44 DN even/odd differences on a
smooth input this way (its ``UPNet[0]`` phase filters differed by as much as the filters themselves). The fix is at
the root: ICNR initialisation of that conv (:func:`training.param_groups.icnr_init`) so the phases start equal.

Measure: the mean, over the image, of each odd row minus the average of its two neighbouring rows (and likewise
for columns). A smooth image (any ramp) gives 0; a pattern alternating +a / −a row by row gives 2a — the even/odd
difference an analyst sees. Signed means, so real texture (which has no preferred phase) averages out over a
large image, while a pattern locked to the pixel grid does not. Torch-free.
"""

from __future__ import annotations

import numpy as np

# Even/odd difference (reflectance) above which a model's output is called striped: 5 DN at the 10⁴ scale, a third of
# the 13–19 DN the first bundled model drew on real scenes; real cloud-free images measure well under it (tests).
STRIPE_LIMIT = 5e-4


def even_odd_difference(image: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """(rows, columns): the largest per-band |mean of odd line − mean of its two neighbours| of a (bands, H, W) image.

    ``valid`` (H, W) bool restricts the mean to lines whose three pixels are all valid.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    ok = np.ones(img.shape[-2:], bool) if valid is None else np.asarray(valid, bool)
    ok = ok & np.isfinite(img).all(axis=0)
    out = []
    for axis in (1, 2):
        a = np.moveaxis(img, axis, 1)
        m = np.moveaxis(ok, axis - 1, 0)
        n = (a.shape[1] - 1) // 2 * 2  # odd lines 1, 3, … with a line on both sides
        mid, before, after = a[:, 1:n:2], a[:, 0 : n - 1 : 2], a[:, 2 : n + 1 : 2]
        sel = m[1:n:2] & m[0 : n - 1 : 2] & m[2 : n + 1 : 2]
        if not sel.any():
            out.append(0.0)
            continue
        diff = (mid - 0.5 * (before + after))[:, sel]
        out.append(float(np.abs(diff.mean(axis=1)).max()))
    return out[0], out[1]
