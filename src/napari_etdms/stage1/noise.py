"""SEM noise: the Poisson-Gaussian model, its variance-stabilising transform, and its
estimation from one frame.

Model (Foi et al. 2008): a pixel z with noise-free value y has var(z | y) = gain * y + offset,
`gain` from the shot noise (1 / electrons per pixel at white, on a white = 1 scale) and
`offset` from the detector's read noise (minus gain x the black level). Read noise that is
correlated along the scan line is measured apart, as `row_correlation`.

The stage-1 denoiser works in the stabilised domain of `Stabiliser`: the generalised Anscombe
transform (Murtagh, Starck, Bijaoui 1995) with the frame's own parameters, rescaled so the
signal range maps to [-1, 1]. There the noise is close to Gaussian with one standard
deviation, `Stabiliser.sigma`, whatever the brightness: what the network's noise-level map
carries (FFDNet / DRUNet convention).

`estimate_noise` measures the model on one frame (after Foi et al. 2008): a robust variance of
the differences across rows, binned by local level over the frame's flattest pixels, fitted
by a line; it sees the row offsets (`row_offset_std`, included in `offset`) and the
correlation along rows (`row_correlation`) too, and leaves out clipped levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import erf

import numpy as np
import torch
from scipy import ndimage

# The transform is undefined for an exactly noise-free model (gain = offset = 0); this floor
# (1e-6 of the range, as a standard deviation) makes it the identity there, continuously.
_MIN_OFFSET = 1e-12


@dataclass(frozen=True)
class NoiseModel:
    """var(z | y) = gain * y + offset, in the units of the frame it was measured on.

    `row_correlation`: correlation of the noise between horizontal neighbours (0: white);
    `row_offset_std`: standard deviation of a per-row offset, in frame units."""

    gain: float
    offset: float
    row_correlation: float = 0.0
    row_offset_std: float = 0.0

    def std_at(self, level: float) -> float:
        return max(self.gain * level + self.offset, 0.0) ** 0.5

    def rescaled(self, low: float, high: float) -> NoiseModel:
        """The same noise on the [0, 1] scale on which `low` -> 0 and `high` -> 1
        (z = low + y * (high - low))."""
        span = high - low
        return NoiseModel(
            gain=self.gain / span,
            offset=(self.gain * low + self.offset) / span**2,
            row_correlation=self.row_correlation,
            row_offset_std=self.row_offset_std / span,
        )

    def describe(self, low: float, high: float) -> str:
        """In a microscopist's terms, for a frame whose signal spans [low, high]: the dose
        the shot noise corresponds to and the noise at mid-grey relative to that range."""
        unit = self.rescaled(low, high)
        mid = unit.std_at(0.5)
        shot_share = unit.gain * 0.5 / mid**2 if mid > 0 else 0.0
        if shot_share >= 0.2:  # the dose is only meaningful where shot noise is a real part of it
            electrons = 1 / unit.gain
            dose = f"~{electrons:,.0f} e-/px at white" if electrons >= 10 else f"~{electrons:.2g} e-/px at white"
        else:
            dose = "mostly signal-independent noise" if mid > 0 else "no noise found"
        parts = [dose, f"std {100 * mid:.2g} % of the range at mid-grey"]
        if abs(self.row_correlation) >= 0.05:
            parts.append(f"row correlation {self.row_correlation:.2f}")
        if unit.row_offset_std > 0:
            parts.append(f"row offsets {100 * unit.row_offset_std:.2g} %")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"gain": self.gain, "offset": self.offset, "row_correlation": self.row_correlation,
                "row_offset_std": self.row_offset_std}


class Stabiliser:
    """Generalised Anscombe transform on a [0, 1] signal scale, mapped so that 0 -> -1 and
    1 -> +1; `forward` / `inverse` are exact algebraic inverses of each other.

    `gain` and `offset` are the noise model on that [0, 1] scale (`NoiseModel.rescaled`);
    tensors of shape (B, 1, 1, 1) give every batch element its own model. With
    c = 3/8 gain^2 + offset, f(y) = 2/gain * sqrt(gain * y + c), written as
    f(y) - f(0) = 2 y / (sqrt(gain * y + c) + sqrt(c)) so it stays exact as gain -> 0, where
    it becomes the linear map y / sqrt(offset) of plain Gaussian noise.
    """

    def __init__(self, gain, offset):
        gain = torch.as_tensor(gain, dtype=torch.float64).clamp(min=0.0)
        offset = torch.as_tensor(offset, dtype=torch.float64)
        # the black level must stay inside the transform's domain (a negative offset is a
        # black level below zero counts)
        self.c = (0.375 * gain**2 + offset).clamp(min=_MIN_OFFSET)
        self.gain = gain
        self.span = self._delta(torch.ones_like(self.c))  # f(1) - f(0)

    @property
    def sigma(self) -> torch.Tensor:
        """Noise standard deviation in the stabilised [-1, 1] domain."""
        return 2.0 / self.span

    def _lowest(self) -> torch.Tensor:
        """Where gain * y + c reaches 0 (-inf without shot noise)."""
        return torch.where(self.gain > 0, -self.c / self.gain.clamp(min=1e-300), torch.full_like(self.c, -torch.inf))

    def _delta(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.maximum(y, self._lowest())
        return 2.0 * y / (torch.sqrt((self.gain * y + self.c).clamp(min=0.0)) + torch.sqrt(self.c))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self._delta(y.double()) / self.span * 2.0 - 1.0
        return out.to(y.dtype)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        d = (u.double() + 1.0) * 0.5 * self.span  # f(y) - f(0)
        # the transform's range starts at f(lowest) - f(0) = -2 sqrt(c) / gain
        d = torch.maximum(d, torch.where(self.gain > 0, -2.0 * torch.sqrt(self.c) / self.gain.clamp(min=1e-300),
                                         torch.full_like(d, -torch.inf)))
        y = torch.sqrt(self.c) * d + 0.25 * self.gain * d**2
        return y.to(u.dtype)


# ---- estimation from one frame ------------------------------------------------------------

_SQRT6 = np.sqrt(6.0)
_MEAN_SIGMA = 2.5  # Gaussian local mean (px): the level a pixel's residual is binned by
_TEXTURE_SIZE = 7  # window (px) in which the local mean's own variance measures texture
_KEEP = 0.5  # share of each level bin kept: its smoothest pixels
_CLIP_SIGMAS = 4.5  # robust variance: values this many standard deviations out are outliers
# share of a Gaussian's variance inside +-_CLIP_SIGMAS, to undo that clipping
_CLIP_FACTOR = 1.0 - 2.0 * _CLIP_SIGMAS * np.exp(-0.5 * _CLIP_SIGMAS**2) / np.sqrt(2 * np.pi) / erf(
    _CLIP_SIGMAS / np.sqrt(2.0))
_NEAR_CLIPPED = 7  # window (px) around a clipped pixel whose pixels are left out
_MAX_CLIPPED = 0.01  # level bins whose smoothest pixels are clipped more often are left out
_MAX_BINS = 64
_MIN_BIN = 64  # fewest pixels a bin's variance is measured from
_OUTLIER_RATIO = 1.5  # bins whose variance is this far off the fitted line are left out


def _robust_var(x: np.ndarray) -> float:
    """Variance of the bulk of `x`, insensitive to a minority of outliers (edges, texture).

    A MAD-based scale starts an iteration that keeps the values within `_CLIP_SIGMAS` of the
    median and rescales their variance by what that clipping removes from a Gaussian. Unlike
    the MAD alone it stays consistent for discrete residuals (low counts, 8-bit data)."""
    med = float(np.median(x))
    dev = np.abs(x - med)
    scale = 1.4826 * float(np.median(dev))
    if scale == 0.0:
        scale = float(np.sqrt(np.mean(dev**2)))
    var = scale**2
    for _ in range(4):
        if scale == 0.0:
            return 0.0
        kept = x[dev < _CLIP_SIGMAS * scale]
        if kept.size < 2:
            return var
        var = float(np.var(kept)) / _CLIP_FACTOR
        scale = np.sqrt(var)
    return var


def _fit_line(x: np.ndarray, v: np.ndarray, n: np.ndarray, floor: float) -> tuple[float, float, np.ndarray]:
    """Weighted least squares v = gain * x + offset with gain >= 0; also the bins it used.

    The weight of a bin is its pixel count over its variance squared (a sample variance has
    variance 2 var^2 / n), iterated with the fitted variance so that no bin's noisy value sets
    its own weight. Bins more than `_OUTLIER_RATIO` away from the line (either way) are then
    left out, but never more than half of them: a level that only occurs on edges (no flat
    pixel to pick) has its variance raised by the texture."""
    used = np.ones(x.size, dtype=bool)
    fitted = v
    gain, offset = 0.0, 0.0
    for _ in range(5):
        w = np.where(used, n / (np.maximum(fitted, 0.0) + floor) ** 2, 0.0)
        sw, sx, sv = w.sum(), (w * x).sum(), (w * v).sum()
        sxx, sxv = (w * x * x).sum(), (w * x * v).sum()
        det = sw * sxx - sx * sx
        gain, offset = 0.0, sv / sw
        if det > 1e-9 * sw * sxx:
            gain = (sw * sxv - sx * sv) / det
            offset = (sv - gain * sx) / sw
            if gain < 0.0:
                gain, offset = 0.0, sv / sw
        fitted = gain * x + offset
        distance = np.abs(np.log((v + floor) / (np.maximum(fitted, 0.0) + floor)))
        # the bins within the ratio, or the closer half of them if that is more
        used = distance <= max(np.log(_OUTLIER_RATIO), float(np.quantile(distance, 0.5)))
    return float(gain), float(offset), used


def _half_row_levels(residual: np.ndarray, invalid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A robust level of each half row of `residual`, shape (2, rows), and the number of
    values it is from (0 where a half row has too few valid ones): the mean of the valid
    values within 4 robust standard deviations (from the quartiles) of their median, so edges
    do not count while skewed (low-count) noise keeps its zero mean."""
    h, w = residual.shape
    half = w // 2
    rows = np.arange(h)
    levels, counts = np.zeros((2, h)), np.zeros((2, h))
    for side, columns in enumerate((slice(0, half), slice(half, 2 * half))):
        bad = invalid[:, columns]
        values = np.where(bad, np.inf, residual[:, columns])
        values.sort(axis=1)  # invalid values last
        count = half - bad.sum(axis=1)
        last = np.maximum(count - 1, 0)
        with np.errstate(invalid="ignore", divide="ignore"):  # rows with nothing valid: inf - inf
            median = 0.5 * (values[rows, last // 2] + values[rows, (last + 1) // 2])
            scale = (values[rows, (3 * last) // 4] - values[rows, last // 4]) / 1.349
            near = np.abs(values - median[:, None]) <= 4.0 * scale[:, None]  # never an invalid (inf) value
            kept = near.sum(axis=1)
            levels[side] = np.where(near, values, 0.0).sum(axis=1) / kept
        counts[side] = np.where((count >= 16) & (kept >= 8), kept, 0)
    levels[counts == 0] = 0.0
    return levels, counts


def _row_levels(residual: np.ndarray, invalid: np.ndarray) -> tuple[np.ndarray, float]:
    """Per row, the robust level of `residual` (0 where unknown), and the covariance of the
    left and right half-row levels over the rows. A per-row offset r puts the same value on
    every pixel of a row of v2, the second difference across rows (r[i-1] - 2 r[i] + r[i+1],
    of variance 6 var(r)); the two halves share it but not their noise, so that covariance
    is its variance, whatever the noise's own variance or correlation along the row."""
    levels, counts = _half_row_levels(residual, invalid)
    both = (counts > 0).all(axis=0)
    covariance = 0.0
    if both.sum() >= 8:
        left, right = levels[0, both], levels[1, both]
        covariance = float(np.mean((left - left.mean()) * (right - right.mean())))
    total = counts.sum(axis=0)
    row_level = np.where(total > 0, (levels * counts).sum(axis=0) / np.maximum(total, 1), 0.0)
    return row_level, covariance


def _clipped(z: np.ndarray) -> np.ndarray:
    """Clipped pixels: the frame's extremes, when more than a couple of pixels share them."""
    clipped = np.zeros(z.shape, dtype=bool)
    for value in (z.min(), z.max()):
        at = z == value
        if np.count_nonzero(at) > 2:
            clipped |= at
    return clipped


def _bin_statistics(z: np.ndarray):
    """Per level bin: mean level, robust variances of v2, of v2 plus and minus its right-hand
    neighbour, pixel count; and the
    per-row offset variance and the frame's range (see `estimate_noise`). None for a
    constant frame, or one with too few unclipped pixels."""
    low, high = float(z.min()), float(z.max())
    span = high - low
    if span == 0.0:
        return None

    clipped = _clipped(z)

    centre = z[1:-1, :-1]
    v2 = z[:-2, :-1] + z[2:, :-1] - 2.0 * centre  # normalised later
    # residuals that touch a clipped value are truncated; and next to a clipped region the
    # local mean mixes in the clipped values (mis-binning the pixel) while the pixels that
    # escaped clipping inside it are its low outliers: those near one are left out too, unless
    # that leaves too little (clipping everywhere)
    clipped_residual = clipped[1:-1, :-1] | clipped[:-2, :-1] | clipped[2:, :-1] | clipped[1:-1, 1:]
    invalid = ndimage.maximum_filter(clipped, _NEAR_CLIPPED, mode="nearest")[1:-1, :-1]
    if np.count_nonzero(~invalid) < 0.1 * invalid.size:
        invalid = clipped_residual
    # the row offsets: their variance from v2, then taken out of it (with each row's mean of
    # the signal's curvature, which is no noise either)
    v2_rows, covariance = _row_levels(v2, invalid)
    row_var = max(covariance, 0.0) / 6.0
    v2 = v2 - v2_rows[:, None]
    # v2's right-hand neighbour (the last column has none: v2 leaves it out)
    v2_next = z[:-2, 1:] + z[2:, 1:] - 2.0 * z[1:-1, 1:] - v2_rows[:, None]

    smooth = ndimage.gaussian_filter(z, _MEAN_SIGMA, mode="reflect")
    local = ndimage.uniform_filter(smooth, _TEXTURE_SIZE, mode="reflect")
    texture = ndimage.uniform_filter(smooth * smooth, _TEXTURE_SIZE, mode="reflect") - local * local
    m = smooth[1:-1, :-1].ravel()
    texture = texture[1:-1, :-1].ravel()
    invalid, clipped_residual = invalid.ravel(), clipped_residual.ravel()

    good = np.flatnonzero(~invalid)
    n_bins = int(np.clip(good.size // 2000, 2, _MAX_BINS))
    if good.size < n_bins * _MIN_BIN / _KEEP:
        return None
    edges = np.quantile(m[good[:: max(1, good.size // 20000)]], np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    bin_of = np.searchsorted(edges, m)
    order = np.argsort(bin_of, kind="stable")
    starts = np.searchsorted(bin_of[order], np.arange(n_bins + 1))

    # each bin's smoothest pixels (clipped or not), and the share of them that are clipped
    flat, clipped_share = [], np.ones(n_bins)
    for k in range(n_bins):
        members = order[starts[k] : starts[k + 1]]
        if members.size * _KEEP < _MIN_BIN:
            flat.append(members[:0])
            continue
        n_keep = int(members.size * _KEEP)
        members = members[np.argpartition(texture[members], n_keep)[:n_keep]]
        clipped_share[k] = np.count_nonzero(clipped_residual[members]) / members.size
        flat.append(members[~invalid[members]])
    # where clipping is everywhere, the least clipped quarter of the bins (then biased low)
    allowed_share = max(_MAX_CLIPPED, float(np.quantile(clipped_share, 0.25)))

    v2_flat, v2_next_flat = v2.ravel(), v2_next.ravel()
    x, var2, var_sum, var_gap, counts = [], [], [], [], []
    for k, members in enumerate(flat):
        if clipped_share[k] > allowed_share or members.size < _MIN_BIN:
            continue
        here, right = v2_flat[members] / _SQRT6, v2_next_flat[members] / _SQRT6
        x.append(m[members].mean())
        var2.append(_robust_var(here))
        var_sum.append(_robust_var(here + right))
        var_gap.append(_robust_var(here - right))
        counts.append(members.size)
    x, var2, var_sum, var_gap, counts = (np.asarray(a, dtype=np.float64) for a in (x, var2, var_sum, var_gap,
                                                                                   counts))
    return x, var2, var_sum, var_gap, counts, row_var, span


def estimate_noise(frame: np.ndarray) -> NoiseModel:
    """Poisson-Gaussian noise model of one 2D SEM frame (any dtype), in the frame's own units.

    Scan lines are rows (axis 1). On every interior pixel, a residual free of the signal (up to
    its curvature): v2 = (z[i-1] - 2 z[i] + z[i+1]) / sqrt(6) across rows. Rows are close to
    independent, so var(v2) is the full per-pixel
    variance whatever the correlation along the rows: gain * y + read variance + s2, with s2
    the variance of a per-row offset r (r[i-1] - 2 r[i] + r[i+1] has variance 6 s2).

    `row_offset_std` = sqrt(s2): each half row gives a robust level of v2; both halves carry
    the same r[i-1] - 2 r[i] + r[i+1] but independent noise, so the covariance of the left and
    right levels over the rows is 6 s2 (`_row_levels`). Its noise floor on a 512 x 512 frame
    (white = 1) is ~0.005 at 3 e-/px, ~0.001 from 100 e-/px. Each row's level is then taken
    out of v2 (a row offset is the same on a whole row), so that s2, measured once
    from all rows, does not scatter the bins below; it is added back into `offset`.

    `gain`, `offset` (after Foi et al. 2008): pixels are binned by their level y, a Gaussian
    local mean (sigma 2.5 px), in up to 64 equal-count bins; each bin keeps its smoothest
    half (texture: the local mean's own variance over 7 x 7); the variance of v2 there is a
    robust one (MAD start, then an iterated 4.5-sigma clipped variance, rescaled for the
    clipping), so edges and texture do not count and a noise-free frame gives ~0. A weighted
    least-squares line through (mean level, variance) of the bins, gain >= 0, bins more than
    1.5 x off it left out (levels that only occur on edges), gives gain and offset - s2.
    `offset` is the total signal-independent variance seen across rows: read noise, s2 and
    quantisation (LSB^2 / 12 for noisy 8-bit data). Where one term is small next to the other
    it is within the other's noise (and `offset` can come out below 0): then only their sum is
    measured well.

    Clipping: where several pixels share the frame's minimum or maximum, those are clipped.
    Clipping shrinks the variance, so pixels with a clipped one in their 7 x 7 neighbourhood
    are left out (unless that leaves under a tenth of the frame), and so are the level bins
    whose smoothest pixels have a residual touching a clipped one more often than 1 % (unless
    that is over three quarters of the bins: then the least clipped quarter is used, and the
    result is biased low).

    `row_correlation`: rho, the correlation between horizontal neighbours of the noise
    without the row offsets (measured apart, above), from the residual across rows alone:
    v2 at a pixel and at its right-hand neighbour combine the same rows, so their noise has
    the noise's own correlation along the row, while the signal's horizontal detail (edges,
    dense vertical structures such as nanowires) is not in either. With a = v2 here and b =
    v2 to the right, on the kept pixels, rows' levels out: rho = (var(a + b) - var(a - b)) /
    (var(a + b) + var(a - b)) (robust variances; the polarisation identity), over the bins of
    the fit, in [-1, 1]. With white shot noise and correlated read noise, it is the read
    noise's correlation times its share of the variance at the frame's typical level.
    """
    z = np.asarray(frame)
    if z.ndim != 2:
        raise ValueError(f"estimate_noise needs one 2D frame, not shape {z.shape}")
    if min(z.shape) < 16 or z.size < 4096:
        raise ValueError(f"frame {z.shape} is too small to estimate its noise")
    z = z.astype(np.float64)  # a copy in every case: the caller's array is never touched
    if not np.isfinite(z).all():
        raise ValueError("frame has non-finite values")
    stats = _bin_statistics(z)
    if stats is None:  # constant, or all clipped (a binary frame)
        return NoiseModel(gain=0.0, offset=0.0)
    x, var2, var_sum, var_gap, counts, row_var, span = stats
    row_offset_std = float(np.sqrt(row_var))
    if x.size == 0:
        return NoiseModel(gain=0.0, offset=0.0, row_offset_std=row_offset_std)
    floor = (1e-6 * span) ** 2
    gain, offset, used = _fit_line(x, var2, counts, floor)
    offset += row_var

    weights = counts * used
    rho = 0.0
    total = float(np.average(var_sum + var_gap, weights=weights))
    if total > 4 * floor:
        rho = float(np.clip(np.average(var_sum - var_gap, weights=weights) / total, -1.0, 1.0))
    return NoiseModel(gain=gain, offset=offset, row_correlation=rho, row_offset_std=row_offset_std)


# The fit needs about 80 bytes per pixel; 4 Mpx (a 2048 x 2048 frame) measure the noise well.
NOISE_SAMPLE_PIXELS = 2048 * 2048


def noise_sample(frame: np.ndarray, pixels: int = NOISE_SAMPLE_PIXELS) -> np.ndarray:
    """A centred window of at most `pixels` px (a view), whole rows where they fit: what the
    noise fit sees of a large frame, so its memory stays bounded whatever the frame's size."""
    height, width = frame.shape
    if height * width <= pixels:
        return frame
    columns = min(width, max(2048, pixels // height))
    rows = min(height, pixels // columns)
    top, left = (height - rows) // 2, (width - columns) // 2
    return frame[top : top + rows, left : left + columns]


def frame_noise(frame: np.ndarray) -> tuple[NoiseModel, str]:
    """The frame's noise model and how it was found: the Poisson-Gaussian fit (on a centred
    window of large frames, `noise_sample`), or, on frames too small for it (a few thousand
    px), one Gaussian level (wavelet MAD, scikit-image)."""
    sample = noise_sample(np.asarray(frame))
    where = "" if sample.shape == np.shape(frame) else f" on the central {sample.shape[0]}x{sample.shape[1]} px"
    try:
        return estimate_noise(sample), f"estimated (Poisson-Gaussian fit{where})"
    except ValueError:
        from skimage.restoration import estimate_sigma

        sigma = float(estimate_sigma(np.asarray(frame, dtype=np.float64)))
        return NoiseModel(0.0, sigma**2), "estimated (Gaussian only: frame too small for the Poisson-Gaussian fit)"


# ---- estimation across the slices of a volume --------------------------------------------


def estimate_noise_across_slices(before: np.ndarray, frame: np.ndarray, after: np.ndarray) -> NoiseModel:
    """Poisson-Gaussian `gain` and `offset` of `frame`, a slice of a volume, from it and its two
    neighbours (any order along z; in the frame's units).

    Slices are acquired separately, so their noise is independent, while a volume's structure
    changes little from one slice to the next: d = (2 frame - before - after) / sqrt(6) has the
    slice's noise variance (4 + 1 + 1 of it over 6) plus what the structure's curvature along z
    leaves. Unlike the single-frame residual (`estimate_noise`), fine texture and sharp edges
    within the slice do not enter d. Pixels are binned by the slice's local mean level (as
    there), each bin's robust variance taken, and the same line fitted. Raises ValueError
    when the slices differ in shape or are too small."""
    slices = [np.asarray(a, dtype=np.float64) for a in (before, frame, after)]
    if len({a.shape for a in slices}) != 1 or slices[1].ndim != 2:
        raise ValueError("the slice and its neighbours must be 2D frames of one shape")
    if min(slices[1].shape) < 16 or slices[1].size < 4096:
        raise ValueError(f"slice {slices[1].shape} is too small to estimate its noise")
    centre = slices[1]
    residual = ((2.0 * centre - slices[0] - slices[2]) / _SQRT6).ravel()
    level = ndimage.gaussian_filter(centre, _MEAN_SIGMA, mode="reflect").ravel()
    good = np.flatnonzero(~ndimage.maximum_filter(_clipped(centre), _NEAR_CLIPPED, mode="nearest").ravel())
    n_bins = int(np.clip(good.size // 2000, 2, _MAX_BINS))
    if good.size < n_bins * _MIN_BIN:
        raise ValueError("too few unclipped pixels to estimate the noise")
    edges = np.quantile(level[good], np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    bin_of = np.searchsorted(edges, level[good])
    x, variances, counts = [], [], []
    for k in range(n_bins):
        members = good[bin_of == k]
        if members.size >= _MIN_BIN:
            x.append(level[members].mean())
            variances.append(_robust_var(residual[members]))
            counts.append(members.size)
    span = float(centre.max() - centre.min())
    gain, offset, _ = _fit_line(np.asarray(x), np.asarray(variances), np.asarray(counts, dtype=np.float64),
                                (1e-6 * span) ** 2)
    return NoiseModel(gain=gain, offset=offset)


def slice_noise(before: np.ndarray, frame: np.ndarray, after: np.ndarray) -> tuple[NoiseModel, str]:
    """A volume slice's noise model and how it was found: the single-frame fit (`frame_noise`)
    and the fit across slices (`estimate_noise_across_slices`) both take structure for noise,
    each its own (texture and edges within the slice; change along z), never less than the
    noise: the one with less noise at the slice's median level is kept (row correlation and
    offsets are the single-frame fit's)."""
    single, how = frame_noise(frame)
    window = [noise_sample(np.asarray(a)) for a in (before, frame, after)]
    try:
        across = estimate_noise_across_slices(*window)
    except ValueError:
        return single, how
    level = float(np.median(window[1]))
    if across.std_at(level) >= single.std_at(level):
        return single, how
    return (NoiseModel(across.gain, across.offset, single.row_correlation, single.row_offset_std),
            "estimated across slices (Poisson-Gaussian fit of the second difference along z)")
