"""LPIPS and patch FID from user-supplied networks (TorchScript .pt or torch.export .pt2):
their backbones cannot be downloaded at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_etdms.evaluation.metrics import (
    match_to_reference,
)

# ---- learned metrics (user-supplied networks) ---------------------------------------------


def _as_network_input(images: list[np.ndarray], reference: list[np.ndarray]):
    """Grey frames matched to their reference, on [0, 1], as 3-channel tensors."""
    import torch

    out = []
    for image, ref in zip(images, reference):
        ref01, est01 = match_to_reference(ref, image)
        out.append(torch.from_numpy(np.clip(est01, 0, 1)).float()[None, None].repeat(1, 3, 1, 1))
    return out


def _load_metric_network(path: Path):
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metric weights file not found")
    try:
        if path.suffix == ".pt2":  # torch.export archive
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ValueError(f"{path}: not a TorchScript (.pt) or torch.export (.pt2) module ({err})") from None


def lpips_distance(weights: Path, reference: list[np.ndarray], estimates: list[np.ndarray]) -> float:
    """Mean LPIPS from a TorchScript module called as module(x, y) on (1, 3, H, W) images in
    [-1, 1] (e.g. the `lpips` package's model exported with torch.jit.trace)."""
    import torch

    model = _load_metric_network(weights)
    refs = _as_network_input(reference, reference)
    ests = _as_network_input(estimates, reference)
    with torch.no_grad():
        return float(np.mean([float(model(r * 2 - 1, e * 2 - 1).mean()) for r, e in zip(refs, ests)]))


def patch_fid(weights: Path, reference: list[np.ndarray], estimates: list[np.ndarray], patch: int = 64):
    """Frechet distance between features of non-overlapping 64 px patches of the ground truth
    and of the estimates; the module maps (N, 3, h, w) images in [0, 1] to (N, D) features.
    Returns (FID, patches per set). Few patches make FID biased: the count is reported."""
    import torch
    from scipy import linalg

    model = _load_metric_network(weights)

    def features(images):
        patches = []
        for t in images:
            tiles = t.unfold(2, patch, patch).unfold(3, patch, patch)  # 1, 3, ny, nx, p, p
            patches.append(tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, patch, patch))
        batch = torch.cat(patches)
        with torch.no_grad():
            return torch.cat([model(chunk) for chunk in batch.split(64)]).double().numpy(), len(batch)

    (f_ref, n), (f_est, _) = features(_as_network_input(reference, reference)), features(
        _as_network_input(estimates, reference))
    mu1, mu2 = f_ref.mean(0), f_est.mean(0)
    c1, c2 = np.cov(f_ref, rowvar=False), np.cov(f_est, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)), n
