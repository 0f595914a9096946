"""Stage 1 as a bioimage.io model (`etdms export`): a zip that any bioimage.io consumer
(bioimageio.core, deepImageJ in Fiji, QuPath) runs knowing only the spec (0.5).

What is inside the exported model (`FixedNoiseDenoiser`, TorchScript, and the same as a
state dict with its architecture source, `etdms_denoiser.py`, which needs torch alone):

- input: one (batch, channel=1, y, x) float32 frame already mapped by the spec's own
  preprocessing, `scale_range` over (y, x) with percentiles 0.1 and 99.9: 0 = the frame's
  0.1th percentile, 1 = its 99.9th;
- ONE fixed Poisson-Gaussian noise model (var = gain * y + offset on that [0, 1] scale),
  baked into the model;
- the pipeline's own intensity range, computed inside the model as `IntensityMap.fit` does
  (the 0.1 / 99.9 percentiles of the frame smoothed by `intensity.SIGNAL_SMOOTHING` px, which
  noise stretches less than the raw ones `scale_range` can express), the frame and its noise
  model rescaled to it;
- the generalised Anscombe transform of that noise model, mapped to [-1, 1] as
  `noise.Stabiliser` does; the network is told that transform's noise level;
- the noise-aware SwinIR (x + level * correction), the inverse transform;
- output: the denoised frame on the same [0, 1] scale (no postprocessing: multiply by
  (p99.9 - p0.1) and add p0.1 of the input for its units).

This is `Pipeline.run(frame, super_resolve=False, noise=...)` on a frame stage 1 runs as one
tile, with one difference, documented in the package: the noise model is fixed instead of
estimated per frame. `scale_range` is applied by the consumer to the whole frame (tiles too
share it, and with it the noise model); the signal range inside is that of what the model is
given, a tile where the consumer tiles (measured in the package's README).
Blind (v1) denoisers are exported without the transform and need no noise model.

Noise for the shipped weights: `--noise GAIN,OFFSET` (on the [0, 1] input scale) or
`--from-frame FRAME` (its noise estimated by `noise.frame_noise`, rescaled to that frame's
input scale). Weights adapted by `etdms adapt` default to the median noise of their
adaptation frames, read back from the files `adaptation.json` records (checked by sha256).

`bioimageio.spec` (and `bioimageio.core` to test the package) are the optional extra
`napari-etdms[bioimageio]`; this module imports them only when exporting.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from napari_etdms import __version__
from napari_etdms.engine.pipeline import DENOISE_CONTEXT, DENOISE_MIN_TILE
from napari_etdms.models.swinir import SwinIRDenoiser, SwinIRSize
from napari_etdms.stage1.intensity import HIGH_PERCENTILE, LOW_PERCENTILE, SIGNAL_SMOOTHING
from napari_etdms.stage1.noise import NoiseModel, frame_noise
from napari_etdms.weights import ADAPTATION_RECORD, MANIFEST, WeightsEntry, load_state, resolve, sha256_of

ARCHITECTURE_FILE = "etdms_denoiser.py"
STATE_FILE = "denoiser_state_dict.pt"
TORCHSCRIPT_FILE = "denoiser_torchscript.pt"
# The context stage 1 sees around each tile in the pipeline: declared as the output's halo, so
# tiling consumers overlap tiles by it and crop it, and mirrored by the model around what it is
# given, so a frame given whole is denoised as the pipeline denoises it.
HALO = DENOISE_CONTEXT
MIN_SIZE, SIZE_STEP = 64, 8  # valid input sizes 64 + 8 n: tiles on the network's window grid
# The test image: the centre crop of the example frame, at most stage 1's tile in napari-etdms,
# so that `etdms infer --no-sr` runs it as one tile and reproduces the test output exactly.
TEST_SIDE = DENOISE_MIN_TILE
COVER_WIDTH = 512
SCALE_RANGE_EPS = 1e-6  # scale_range's default eps: out = (x - p_low) / (p_high - p_low + eps)

# The spec's citations need a DOI or URL; the ETDMS paper (submitted) has neither yet, so it is
# cited in the documentation, the description's text and config.etdms.
ETDMS_CITATION = ("Xuecheng Zhang, Zixin Li, Bin Zhang. ETDMS: Efficient Two-stage Diffusion Model for SEM Image "
                  "Super-Resolution. Submitted to Ultramicroscopy, 2025.")
CITATIONS = (  # (text, DOI): no URL, so validating the description looks nothing up online
    ("Jingyun Liang, Jiezhang Cao, Guolei Sun, Kai Zhang, Luc Van Gool, Radu Timofte. SwinIR: Image Restoration "
     "Using Swin Transformer. IEEE/CVF ICCV Workshops, 2021 (the stage-1 network).", "10.1109/ICCVW54120.2021.00210"),
    ("Alessandro Foi, Mejdi Trimeche, Vladimir Katkovnik, Karen Egiazarian. Practical Poissonian-Gaussian noise "
     "modeling and fitting for single-image raw-data. IEEE Transactions on Image Processing 17(10), 2008 (the noise "
     "model and its estimation).", "10.1109/TIP.2008.2001399"),
)


class ExportError(ValueError):
    """The weights cannot be exported as asked; the message says why and what to do."""


# ---- the exported network -------------------------------------------------------------------
# `models.swinir` (torch alone, TorchScript-able) with the wrapper below: `etdms_denoiser.py` in
# the package is the source of both (`architecture_source`), and the state dict loads as it is.


class FixedNoiseDenoiser(nn.Module):
    """ETDMS stage 1 for one fixed noise model: (B, 1, H, W) float32 on the [0, 1] scale of the
    frame's raw 0.1 / 99.9 percentiles (the spec's `scale_range`) -> the denoised frame on the
    same scale.

    Inside, each batch element is scaled as napari-etdms scales a frame
    (`stage1.intensity.IntensityMap.fit`): z = (y - low) / (high - low), with low / high the
    0.1 / 99.9 percentiles of y smoothed by a Gaussian of `smoothing` px (scipy's 'reflect'
    edges, radius 4 sigma: the signal's range, which noise stretches less than the raw one),
    or y's min / max where they (nearly) coincide. The noise model var = gain * y + offset moves
    with it (`NoiseModel.rescaled`): gain_z = gain / s, offset_z = (gain low + offset) / s^2,
    s = high - low. Percentiles and smoothing commute with the affine `scale_range`, so the
    network sees what the pipeline gives it. It sees `context` px of the frame mirrored around
    it (numpy's 'reflect'), as the pipeline's tiles see theirs at the frame's borders: a frame
    given whole is denoised exactly as `etdms infer` denoises it in one tile.

    Noise-aware: the generalised Anscombe transform on z, c = 3/8 gain_z^2 + offset_z,
    f(z) - f(0) = 2 z / (sqrt(gain_z z + c) + sqrt(c)), mapped so that z = 0 -> -1 and z = 1 -> +1;
    the network is told the noise std there, 2 / (f(1) - f(0)); then the exact algebraic inverse.
    Computed in float64 (the network in float32). Blind (`noise_aware` False): the network on
    2 z - 1, mapped back."""

    def __init__(self, embed_dim: int, depths: list[int], num_heads: list[int], window_size: int = 8,
                 mlp_ratio: float = 2.0, noise_aware: bool = True, gain: float = 0.0, offset: float = 0.0,
                 smoothing: float = 2.0, low_percentile: float = 0.1, high_percentile: float = 99.9,
                 context: int = 16):
        super().__init__()
        self.net = SwinIRDenoiser(SwinIRSize(embed_dim, tuple(depths), tuple(num_heads), window_size, mlp_ratio,
                                             noise_aware))
        self.noise_aware = noise_aware
        self.gain = max(float(gain), 0.0)
        self.offset = float(offset)
        self.smoothing = float(smoothing)
        self.radius = int(4.0 * self.smoothing + 0.5)
        self.low_fraction = float(low_percentile) / 100.0
        self.high_fraction = float(high_percentile) / 100.0
        self.context = int(context)

    def _smoothed(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 1, H, W) float64 -> its Gaussian smoothing, edges mirrored as scipy's 'reflect'."""
        if self.smoothing <= 0:
            return image
        r = self.radius
        taps = torch.arange(-r, r + 1, dtype=torch.float64, device=image.device)
        kernel = torch.exp(-0.5 * (taps / self.smoothing) ** 2)
        kernel = kernel / kernel.sum()
        rows = torch.cat([image[..., :r].flip([-1]), image, image[..., -r:].flip([-1])], dim=-1)
        rows = torch.nn.functional.conv2d(rows, kernel.view(1, 1, 1, -1))
        cols = torch.cat([rows[..., :r, :].flip([-2]), rows, rows[..., -r:, :].flip([-2])], dim=-2)
        return torch.nn.functional.conv2d(cols, kernel.view(1, 1, -1, 1))

    def _percentile(self, ordered: torch.Tensor, fraction: float) -> torch.Tensor:
        """numpy's default (linear) percentile of sorted values."""
        position = fraction * (ordered.numel() - 1)
        below = int(math.floor(position))
        above = min(below + 1, ordered.numel() - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    def intensity_range(self, image: torch.Tensor) -> tuple[float, float]:
        """(low, high) of one (1, 1, H, W) float64 frame, as `IntensityMap.fit` with smoothing."""
        ordered = torch.sort(self._smoothed(image).reshape(-1))[0]
        low = float(self._percentile(ordered, self.low_fraction))
        high = float(self._percentile(ordered, self.high_fraction))
        full_low, full_high = float(image.min()), float(image.max())
        if not high - low > 1e-2 * (full_high - full_low):
            low, high = full_low, full_high
        return low, high

    def _denoise_scaled(self, z: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
        """z on the frame's [0, 1] signal scale (float64), with its noise model there -> denoised z."""
        m = self.context
        if m > 0:
            z = torch.nn.functional.pad(z, [m, m, m, m], mode="reflect")
        out = self._denoise_stabilised(z, gain, offset)
        return out[..., m : out.shape[-2] - m, m : out.shape[-1] - m] if m > 0 else out

    def _denoise_stabilised(self, z: torch.Tensor, gain: float, offset: float) -> torch.Tensor:
        if not self.noise_aware:
            return (self.net((z * 2.0 - 1.0).to(torch.float32), None).double() + 1.0) * 0.5
        c = max(0.375 * gain**2 + offset, 1e-12)
        sqrt_c = math.sqrt(c)
        span = 2.0 / (math.sqrt(gain + c) + sqrt_c)  # f(1) - f(0)
        level = torch.full((1, 1, 1, 1), 2.0 / span, dtype=torch.float32, device=z.device)
        if gain > 0:
            z = torch.clamp(z, min=-c / gain)  # where gain z + c reaches 0
        delta = 2.0 * z / (torch.sqrt(torch.clamp(gain * z + c, min=0.0)) + sqrt_c)
        out = self.net((delta / span * 2.0 - 1.0).to(torch.float32), level)
        d = (out.double() + 1.0) * 0.5 * span
        if gain > 0:
            d = torch.clamp(d, min=-2.0 * sqrt_c / gain)  # the transform's range starts there
        return sqrt_c * d + 0.25 * gain * d * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = []
        for index in range(x.shape[0]):
            image = x[index : index + 1].double()
            low, high = self.intensity_range(image)
            scale = high - low
            if not scale > 0:  # a flat frame: nothing to denoise
                frames.append(image)
                continue
            gain = self.gain / scale
            offset = (self.gain * low + self.offset) / scale**2
            frames.append(self._denoise_scaled((image - low) / scale, gain, offset) * scale + low)
        return torch.cat(frames, dim=0).to(torch.float32)


def architecture_source() -> str:
    """`etdms_denoiser.py`: the exported network's source (`models.swinir` and the wrapper),
    needing torch alone."""
    import inspect

    from napari_etdms.models import swinir

    body = inspect.getsource(swinir)
    body = body[body.index("from __future__ import annotations"):]  # its own docstring replaced
    header = textwrap.dedent(f'''\
        """ETDMS stage 1 (noise-aware SwinIR) for one fixed noise model, as exported by napari-etdms
        {__version__} (`etdms export`). Standalone: needs torch alone. Callable: FixedNoiseDenoiser."""

        ''')
    wrapper = "\n\nimport math  # the wrapper's\n\n\n" + inspect.getsource(FixedNoiseDenoiser)
    return header + body + wrapper


def architecture_kwargs(entry: WeightsEntry, noise: NoiseModel | None) -> dict:
    size = entry.config.swinir
    kwargs = {"embed_dim": size.embed_dim, "depths": list(size.depths), "num_heads": list(size.num_heads),
              "window_size": size.window_size, "mlp_ratio": float(size.mlp_ratio), "noise_aware": bool(size.noise_map),
              "smoothing": SIGNAL_SMOOTHING, "low_percentile": LOW_PERCENTILE, "high_percentile": HIGH_PERCENTILE,
              "context": HALO}
    if size.noise_map:
        if noise is None:
            raise ExportError(f"the denoiser of '{entry.name}' is noise-aware: it needs a noise model")
        kwargs |= {"gain": float(noise.gain), "offset": float(noise.offset)}
    return kwargs


def build_exported(entry: WeightsEntry, noise: NoiseModel | None) -> FixedNoiseDenoiser:
    """The wrapper with the weights' denoiser loaded (eval mode, float32, CPU)."""
    if "denoiser" not in entry.files:
        raise ExportError(f"weights '{entry.name}' have no denoiser (stage 1) to export")
    model = FixedNoiseDenoiser(**architecture_kwargs(entry, noise))
    model.net.load_state_dict(load_state(entry, "denoiser"))
    return model.eval()


# ---- the noise model the export bakes in ----------------------------------------------------


def input_range(frame: np.ndarray) -> tuple[float, float]:
    """The frame's 0.1 and 99.9 percentiles: what the spec's `scale_range` maps to 0 and 1."""
    low, high = np.percentile(np.asarray(frame, dtype=np.float32), (LOW_PERCENTILE, HIGH_PERCENTILE))
    return float(low), float(high)


def to_input_scale(frame: np.ndarray) -> np.ndarray:
    """The frame as the exported model takes it (the spec's scale_range, as bioimageio.core applies it)."""
    low, high = input_range(frame)
    return ((np.asarray(frame, dtype=np.float32) - low) / (high - low + SCALE_RANGE_EPS)).astype(np.float32)


def noise_on_input_scale(frame: np.ndarray) -> NoiseModel:
    """The frame's noise (`noise.frame_noise`), on the [0, 1] scale the exported model sees it on."""
    low, high = input_range(frame)
    if not high > low:
        raise ExportError("the frame's 0.1 and 99.9 percentiles coincide: its noise cannot be put on the model's "
                          "input scale; choose a frame with detail")
    return frame_noise(frame)[0].rescaled(low, high)


def frame_units(noise: NoiseModel, frame: np.ndarray) -> NoiseModel:
    """A noise model on `frame`'s [0, 1] input scale, back in the frame's own units (the
    inverse of `NoiseModel.rescaled` with the frame's percentiles): what `Pipeline.run` takes."""
    low, high = input_range(frame)
    span = high - low
    gain = noise.gain * span
    return NoiseModel(gain=gain, offset=noise.offset * span**2 - gain * low)


def parse_noise(text: str) -> NoiseModel:
    """'GAIN,OFFSET' on the model's [0, 1] input scale."""
    try:
        gain, offset = (float(part) for part in text.split(","))
    except ValueError:
        raise ExportError(f"--noise takes GAIN,OFFSET (two numbers, e.g. 0.01,0.0001), got '{text}'") from None
    return checked_noise(NoiseModel(gain=gain, offset=offset))


def checked_noise(noise: NoiseModel) -> NoiseModel:
    if not (math.isfinite(noise.gain) and math.isfinite(noise.offset)):
        raise ExportError(f"the noise model must be finite, got gain {noise.gain}, offset {noise.offset}")
    if noise.gain < 0:
        raise ExportError(f"the noise gain must be >= 0, got {noise.gain}")
    if noise.std_at(0.5) <= 0:
        raise ExportError(f"gain {noise.gain}, offset {noise.offset} give no noise at mid-grey (variance "
                          "gain * 0.5 + offset <= 0); give a positive variance")
    return NoiseModel(gain=float(noise.gain), offset=float(noise.offset))


def read_first_frame(path: str | os.PathLike) -> np.ndarray:
    """The frame of an image file (the first slice of a stack), checked as a run checks it."""
    from napari_etdms.engine.pipeline import prepare_frame
    from napari_etdms.io import read_frame

    data = read_frame(path).data
    if data.ndim == 3 and data.shape[-1] not in (3, 4):
        data = data[0]
    return prepare_frame(data)


def _adaptation_frames(entry: WeightsEntry) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """The frames `etdms adapt` was given, read back from the files adaptation.json records
    (each checked against its sha256), and why the others could not be used."""
    from napari_etdms.engine.pipeline import prepare_frame
    from napari_etdms.io import read_frame

    record_path = entry.folder / ADAPTATION_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [], [f"{record_path} is unreadable ({err})"]
    frames, missing = [], []
    sources = record.get("sources") or []
    for source in sources:
        file = source.get("file") if isinstance(source, dict) else None
        if not file:
            missing.append(f"{json.dumps(source)} (not a file)")
            continue
        path = Path(file)
        if not path.is_file():
            missing.append(f"{file} (not found)")
            continue
        if source.get("sha256") and sha256_of(path) != source["sha256"]:
            missing.append(f"{file} (changed since: its sha256 differs)")
            continue
        data = read_frame(path).data
        slices = list(data) if data.ndim == 3 and data.shape[-1] not in (3, 4) else [data]
        frames.extend((f"{path.name}[{i}]" if len(slices) > 1 else path.name, prepare_frame(s))
                      for i, s in enumerate(slices))
    if not sources:
        missing.append("no source files recorded")
    return frames, missing


@dataclass(frozen=True)
class ExportNoise:
    """The noise model baked into the export (None for a blind denoiser), where it came from,
    and a frame to make the test image of (None: the bundled sample)."""

    model: NoiseModel | None
    source: str
    frame: np.ndarray | None = None
    frame_name: str | None = None


def choose_noise(entry: WeightsEntry, noise: NoiseModel | str | None = None,
                 from_frame: str | os.PathLike | None = None) -> ExportNoise:
    """`noise` (GAIN,OFFSET on the input scale) or the noise of `from_frame`; for adapted
    weights given neither, the median noise of their adaptation frames."""
    if noise is not None and from_frame is not None:
        raise ExportError("give --noise or --from-frame, not both")
    example = read_first_frame(from_frame) if from_frame is not None else None
    name = Path(from_frame).name if from_frame is not None else None
    if not entry.config.swinir.noise_map:
        if noise is not None:
            raise ExportError(f"the denoiser of '{entry.name}' is blind (it takes no noise level): export it "
                              "without --noise")
        return ExportNoise(None, "none: a blind denoiser", example, name)
    if noise is not None:
        model = parse_noise(noise) if isinstance(noise, str) else checked_noise(noise)
        return ExportNoise(model, "given (--noise)", example, name)
    if example is not None:
        return ExportNoise(checked_noise(noise_on_input_scale(example)), f"estimated from {name}", example, name)
    adapted = entry.folder / ADAPTATION_RECORD
    if adapted.is_file():
        frames, missing = _adaptation_frames(entry)
        if frames:
            models = [noise_on_input_scale(frame) for _, frame in frames]
            model = NoiseModel(gain=float(np.median([m.gain for m in models])),
                               offset=float(np.median([m.offset for m in models])))
            names = ", ".join(n for n, _ in frames)
            return ExportNoise(checked_noise(model), f"estimated from the adaptation frames ({names}; median "
                               f"of {len(frames)})", frames[0][1], frames[0][0])
        raise ExportError(
            f"the frames '{entry.name}' was adapted on cannot be read back to estimate the detector's noise "
            f"({'; '.join(missing)}): give --from-frame FRAME (a frame from that detector) or --noise GAIN,OFFSET")
    raise ExportError(
        f"the denoiser of '{entry.name}' is noise-aware and an exported model has one fixed noise model: give "
        "--from-frame FRAME (a typical frame of your detector: its noise is estimated) or --noise GAIN,OFFSET "
        "(var = GAIN * y + OFFSET, y on the model's [0, 1] input scale: the frame's 0.1 and 99.9 percentiles)")


# ---- the package ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    noise: ExportNoise
    size_bytes: int
    weights: dict  # provenance of the exported weights


def centre_crop(frame: np.ndarray, side: int = TEST_SIDE) -> np.ndarray:
    """The centre crop of `frame`, at most `side` px, on a valid input size (64 + 8 n)."""
    height, width = frame.shape
    crop_h, crop_w = (min(side, s) for s in (height, width))
    crop_h, crop_w = (MIN_SIZE + (s - MIN_SIZE) // SIZE_STEP * SIZE_STEP for s in (crop_h, crop_w))
    if min(height, width) < MIN_SIZE:
        raise ExportError(f"the example frame is {height}x{width} px; the test image needs at least {MIN_SIZE} px")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return frame[top : top + crop_h, left : left + crop_w]


def _cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """input | output, both on the input's [0, 1] scale (clipped), 2:1, enlarged (whole pixels) to
    at least COVER_WIDTH px wide so that model zoos show it legibly."""
    from PIL import Image

    side_by_side = np.concatenate([test_input, test_output], axis=1)
    zoom = max(1, -(-COVER_WIDTH // side_by_side.shape[1]))
    side_by_side = side_by_side.repeat(zoom, axis=0).repeat(zoom, axis=1)
    Image.fromarray((np.clip(side_by_side, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)).save(path)


def _describe_noise(noise: ExportNoise) -> str:
    if noise.model is None:
        return "none (a blind denoiser: it estimates the noise itself)"
    return (f"var = {noise.model.gain:.6g} * y + {noise.model.offset:.6g} on the [0, 1] input scale "
            f"({noise.model.describe(0.0, 1.0)}); {noise.source}")


def _documentation(entry: WeightsEntry, noise: ExportNoise, name: str, package: str, test_image: str) -> str:
    provenance = entry.provenance()
    adapted = provenance.get("adapted_from")
    origin = (f"adapted by `etdms adapt` from '{adapted['base']['name']}' ({adapted['base']['hash']}), "
              f"{adapted['iterations']} steps" if isinstance(adapted, dict) else "as shipped with napari-etdms")
    gain = noise.model.gain if noise.model else 0.0
    offset = noise.model.offset if noise.model else 0.0
    noise_section = textwrap.dedent(f"""\
        The noise model is **fixed** in this export: variance = gain * y + offset, with y on the model's [0, 1]
        input scale, **gain = {gain:.6g}, offset = {offset:.6g}** ({noise.model.describe(0.0, 1.0)}).
        Source: {noise.source}. A frame whose noise differs (another dose, dwell time, detector or contrast
        setting) is denoised as if it had this noise: too little if it is noisier, too much (detail lost) if
        it is cleaner. Export one model per imaging condition (`etdms export WEIGHTS --from-frame FRAME`), or
        use napari-etdms itself (`etdms infer --no-sr`), which estimates the noise of every frame.
        """) if noise.model else "This denoiser is blind: it takes no noise model.\n"
    return textwrap.dedent(f"""\
        # {name}

        Stage 1 (denoising) of ETDMS for scanning electron microscope (SEM) frames, exported by napari-etdms
        {__version__} (`etdms export`) from the weights **{entry.name}** (hash {entry.short_hash}), {origin}.
        A {'noise-aware ' if entry.config.swinir.noise_map else ''}SwinIR (embed {entry.config.swinir.embed_dim},
        depths {list(entry.config.swinir.depths)}, window {entry.config.swinir.window_size}) removes the noise of
        one greyscale 2D frame and nothing else: no super-resolution (stage 2 of ETDMS is not in this model).

        ## What the model computes

        1. Preprocessing (declared in the description, applied by the consumer): `scale_range` over (y, x)
           with percentiles 0.1 and 99.9: y = (x - p0.1) / (p99.9 - p0.1), per frame.
        2. Inside the model (TorchScript `{TORCHSCRIPT_FILE}`; the same as `{STATE_FILE}` with the architecture
           `{ARCHITECTURE_FILE}`, torch only), as napari-etdms does it: the signal's range, the 0.1 and 99.9
           percentiles of the input smoothed by a Gaussian of {SIGNAL_SMOOTHING:g} px (noise stretches the raw
           percentiles), the input and the fixed Poisson-Gaussian noise model below rescaled to it; the
           generalised Anscombe transform of that noise model, mapped to [-1, 1]; the network, told that
           transform's noise level, on the input with {HALO} px mirrored around it (cropped after); the exact
           inverse transform, and back to the scale of step 1.
        3. Output: the denoised frame **on the same [0, 1] scale** (there is no postprocessing). Multiply by
           (p99.9 - p0.1) and add p0.1 of the input to get the input's units back.

        ## Noise model

        {textwrap.indent(noise_section, '        ').strip()}

        ## Use

        - **Fiji / deepImageJ** (deepImageJ 3, which reads spec 0.5, with its PyTorch engine): install the
          model with *Plugins > DeepImageJ > DeepImageJ Install Model* from this local zip file, open a frame
          (8-, 16- or 32-bit, one channel) and run *Plugins > DeepImageJ > DeepImageJ Run* with it. deepImageJ
          applies the declared scale_range; the result is a 32-bit image on the [0, 1] scale above (set its
          display range to 0-1). Large frames are tiled: tiles (patches) overlap by the declared halo ({HALO} px
          per side), which is cropped; each tile takes its own signal range (step 2), which changes the result
          little: measured by napari-etdms (bioimageio.core in blocks) on a 512 px region of a Zeiss InLens
          frame against one pass over the whole region, tiles of 128 px (halo included) differ by 0.004 % of
          the range on average (0.3 % at most), of 256 px by 0.002 % (0.04 % at most).
        - **QuPath** (0.5 or later): its bioimage.io extension turns models into pixel classifiers, which an
          image-to-image model is not. Run the TorchScript file `{TORCHSCRIPT_FILE}` from a script through the
          Deep Java Library extension (PyTorch engine) on a region or tiles of it: input (1, 1, y, x) float32
          scaled as in step 1, output as in step 3; add the result as an image (channel) of its own.
        - **Python** (`pip install bioimageio.core torch`):

          ```python
          import numpy as np
          from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description
          model = load_model_description("{package}")
          frame = np.asarray(image, dtype=np.float32)[None, None]   # (batch, channel, y, x)
          tensor = Tensor(frame, dims=("batch", "channel", "y", "x"))
          sample = Sample(members={{"input": tensor}}, stat={{}}, id="frame")
          with create_prediction_pipeline(model) as pipeline:
              pipeline.apply_preprocessing(sample)                    # the frame's own percentiles
              out = pipeline.predict_sample_without_blocking(sample, skip_preprocessing=True)  # halo: reflect, cropped
          denoised = out.members["output"].data.values[0, 0]        # on the [0, 1] scale
          ```

          `bioimageio.core.predict(model=..., inputs=..., blocksize_parameter=n)` tiles large frames (blocks of
          64 + 8 n px, halo included, at most the frame's size) and takes the percentiles of the whole frame;
          without blocks, `predict` pads the halo before it takes them, which shifts them slightly. To get
          exactly what `etdms infer --no-sr` gives on a frame it runs as one tile, skip that padding
          (`skip_input_padding=True, skip_output_cropping=True`): the model mirrors its own context.
        - **napari-etdms** itself: `etdms infer FRAME --no-sr -w {entry.name}` with the noise estimated per
          frame, and the x4 super-resolution of stage 2.

        ## Limits

        - SEM frames (secondary or backscattered electrons), greyscale, 2D: what the weights were trained on
          (the shipped ones on SEM frames with simulated noise, see `MODEL_CARD.md` when attached); other
          modalities are out of scope.
        - One fixed noise model (above). Noise correlated along the scan line and line offsets are not in the
          transform; weights adapted to a detector (`etdms adapt`) have learnt those of their frames.
        - Step 1 must see the whole frame: a consumer that applies scale_range to each tile separately rescales
          the fixed noise model with it, and tiles of flat background are then denoised too little or too much.
        - The model denoises; it adds no detail. Compare with the input before interpreting fine structure.

        ## Validation

        - Test image: {test_image} (`test_input.npy`, `test_output.npy`; `sample_input.tif` and
          `sample_output.tif` hold the same for viewing, `cover.png` shows input | output). bioimageio.core's
          `test_model` reproduces it with both weight formats.
        - Against napari-etdms: on a frame that its stage 1 runs as one tile ({TEST_SIDE} px, as the test image),
          this model's output, scaled back to the frame's units, is `etdms infer FRAME --no-sr` told the same
          noise (exported with `--from-frame FRAME`: FRAME's own estimate) to float rounding in float32
          (`--precision float32`): 2e-7 of the frame's range at most on a crop of a Zeiss InLens frame
          (napari-etdms' `tests/test_bioimageio.py`); where napari-etdms computes in bfloat16, 0.35 %.
          Consumers that pad the halo before running the model (bioimageio.core's `predict`) take the range of
          the padded frame: 0.03 % of the range on average (0.6 % at most) on that crop. On larger frames
          napari-etdms tiles stage 1 and blends the tiles, a difference of the size given for tiles above.
        - Denoising quality of the weights: measured by napari-etdms on held-out frames (`MODEL_CARD.md` when
          attached; for adapted weights, the held-out pair losses in `adaptation.json`).

        ## Provenance

        ```json
        {textwrap.indent(json.dumps(provenance, indent=2), '        ').strip()}
        ```

        ## Licence and citation

        MIT (the weights and this code). Please cite ETDMS: {ETDMS_CITATION}
        and SwinIR and the Poisson-Gaussian noise model (the description's `cite` entries).
        """)


def export_model(weights: str | os.PathLike | None, output: str | os.PathLike, noise: NoiseModel | str | None = None,
                 from_frame: str | os.PathLike | None = None, overwrite: bool = False) -> ExportResult:
    """Write stage 1 of `weights` (registry name or folder) as a bioimage.io model zip at `output`."""
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise ExportError(f"{output}: a bioimage.io model package is a .zip file; name it e.g. {output.name}.zip")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists: choose another name, or pass --overwrite")
    try:
        from bioimageio.spec import ValidationContext
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ExportError("exporting needs bioimageio.spec: pip install 'napari-etdms[bioimageio]'") from None

    entry = resolve(weights)
    chosen = choose_noise(entry, noise, from_frame)
    model = build_exported(entry, chosen.model)
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it is what Java consumers run
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        scripted = torch.jit.script(model)
    if chosen.frame is not None:
        example, example_name = chosen.frame, chosen.frame_name
    else:
        from napari_etdms.samples import sample_path

        example, example_name = read_first_frame(sample_path("superalloy")), "the bundled sample 'superalloy'"
    crop = centre_crop(example).astype(np.float32)
    test_image = f"the centre {crop.shape[0]}x{crop.shape[1]} px of {example_name}"
    name = f"ETDMS SEM denoiser {entry.name}"[:128]
    name = "".join(ch if ch.isalnum() or ch in "_+- ()" else "-" for ch in name)
    with tempfile.TemporaryDirectory(prefix="etdms-export-") as tmp:
        tmp = Path(tmp)
        _write_package_files(tmp, entry, chosen, model, scripted, crop)
        (tmp / "README.md").write_text(_documentation(entry, chosen, name, output.name, test_image))
        with ValidationContext(perform_io_checks=True):
            description = _model_description(v0_5, tmp, entry, chosen, model, name, test_image)
            _save_package(description, output)
    return ExportResult(output, chosen, output.stat().st_size, entry.provenance())


def _write_package_files(folder: Path, entry: WeightsEntry, chosen: ExportNoise, model: nn.Module, scripted,
                         crop: np.ndarray) -> None:
    """The architecture, both weights formats, the test and sample tensors and the cover."""
    (folder / ARCHITECTURE_FILE).write_text(architecture_source())
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
    (folder / STATE_FILE).write_bytes(buffer.getvalue())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        torch.jit.save(scripted, str(folder / TORCHSCRIPT_FILE))
    with torch.no_grad():
        test_output = scripted(torch.from_numpy(to_input_scale(crop))[None, None]).numpy()
    np.save(folder / "test_input.npy", crop[None, None])
    np.save(folder / "test_output.npy", test_output.astype(np.float32))
    tifffile.imwrite(folder / "sample_input.tif", crop)
    tifffile.imwrite(folder / "sample_output.tif", test_output[0, 0].astype(np.float32))
    _cover(to_input_scale(crop), test_output[0, 0], folder / "cover.png")


def _tensor_descriptions(v0_5, folder: Path) -> tuple[list, list]:
    """The input (any size from MIN_SIZE in steps of SIZE_STEP, scaled by its own percentiles)
    and the output (the same size, HALO px of each side less trustworthy)."""
    y, x = v0_5.AxisId("y"), v0_5.AxisId("x")
    input_id = v0_5.TensorId("input")
    inputs = [v0_5.InputTensorDescr(
        id=input_id,
        description="one greyscale SEM frame, any intensity units (cast to float32, then scaled by its own "
                    "0.1 and 99.9 percentiles)",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("sem")]),
              v0_5.SpaceInputAxis(id=y, size=v0_5.ParameterizedSize(min=MIN_SIZE, step=SIZE_STEP)),
              v0_5.SpaceInputAxis(id=x, size=v0_5.ParameterizedSize(min=MIN_SIZE, step=SIZE_STEP))],
        test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_input.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        pad=v0_5.ReflectPadding(mode="reflect"),  # explicit: spec 0.5.12 drops an unset mode (read: constant 0)
        preprocessing=[
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                axes=[y, x], min_percentile=LOW_PERCENTILE, max_percentile=HIGH_PERCENTILE, eps=SCALE_RANGE_EPS)),
        ],
    )]
    outputs = [v0_5.OutputTensorDescr(
        id=v0_5.TensorId("output"),
        description="the denoised frame on the input's [0, 1] scale (0: its 0.1th percentile, 1: its 99.9th)",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("denoised")]),
              *(v0_5.SpaceOutputAxisWithHalo(id=axis, halo=HALO, size=v0_5.SizeReference(
                  tensor_id=input_id, axis_id=axis)) for axis in (y, x))],
        test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=v0_5.FileDescr(source=folder / "sample_output.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
    )]
    return inputs, outputs


def _weights_description(v0_5, folder: Path, entry: WeightsEntry, chosen: ExportNoise):
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    state = v0_5.PytorchStateDictWeightsDescr(
        source=folder / STATE_FILE,
        architecture=v0_5.ArchitectureFromFileDescr(source=folder / ARCHITECTURE_FILE,
                                                    callable=v0_5.Identifier("FixedNoiseDenoiser"),
                                                    kwargs=architecture_kwargs(entry, chosen.model)),
        pytorch_version=torch_version,
        comment=f"{entry.name} stage 1 in its fixed-noise wrapper; noise: {_describe_noise(chosen)}",
    )
    torchscript = v0_5.TorchscriptWeightsDescr(
        source=folder / TORCHSCRIPT_FILE, pytorch_version=torch_version, parent="pytorch_state_dict",
        comment="torch.jit.script of FixedNoiseDenoiser (etdms_denoiser.py)")
    return v0_5.WeightsDescr(pytorch_state_dict=state, torchscript=torchscript)


def _model_description(v0_5, folder: Path, entry: WeightsEntry, chosen: ExportNoise, model, name: str,
                       test_image: str):
    inputs, outputs = _tensor_descriptions(v0_5, folder)
    size = entry.config.swinir
    noise_text = _describe_noise(chosen)
    etdms_config = {
        "weights": entry.provenance(),
        "noise_model": {"gain": chosen.model.gain, "offset": chosen.model.offset,
                        "variance": "gain * y + offset", "scale": "y: the model's [0, 1] input scale "
                        "(scale_range, percentiles 0.1 and 99.9)", "source": chosen.source} if chosen.model else None,
        "test_image": test_image,
        "exported_by": f"napari-etdms {__version__}",
        "citation": ETDMS_CITATION,
    }
    attachments = [v0_5.FileDescr(source=entry.folder / extra) for extra in (MANIFEST, entry.card, ADAPTATION_RECORD)
                   if extra and (entry.folder / extra).is_file()]
    return v0_5.ModelDescr(
        name=name,
        description=(f"Denoising (stage 1 of ETDMS, noise-aware SwinIR) of greyscale SEM frames, from the "
                     f"napari-etdms weights {entry.name} ({entry.short_hash}). Fixed noise model: "
                     f"{noise_text}. Output on the input's 0.1-99.9 percentile [0, 1] scale.")[:1024],
        covers=[v0_5.FileDescr(source=folder / "cover.png")],
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        authors=[v0_5.Author(name="napari-etdms developers")],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in CITATIONS],
        license=v0_5.LicenseId("MIT"),
        tags=["denoising", "image-restoration", "electron-microscopy", "scanning-electron-microscopy",
              "sem", "2d", "pytorch", "torchscript", "deepimagej", "fiji", "imagej", "qupath", "swinir",
              "transformer", "materials-science", "napari-etdms"],
        attachments=attachments,
        timestamp=v0_5.Datetime(datetime.now(timezone.utc)),
        inputs=inputs,
        outputs=outputs,
        weights=_weights_description(v0_5, folder, entry, chosen),
        config=v0_5.Config(
            bioimageio=v0_5.BioimageioConfig(
                architecture_type="SwinIR",
                architecture_description=(f"noise-aware SwinIR, embed {size.embed_dim}, depths "
                                          f"{list(size.depths)}, heads {list(size.num_heads)}, window "
                                          f"{size.window_size}, in a fixed-noise Anscombe wrapper"),
                modality="scanning electron microscopy", task="denoising",
                model_parameter_count=sum(p.numel() for p in model.parameters()),
            ),
            etdms=etdms_config,
        ),
    )


def _save_package(description, output: Path) -> None:
    """The package appears under `output` complete, or not at all."""
    from bioimageio.spec import save_bioimageio_package

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial.zip")
    try:
        with warnings.catch_warnings():  # spec 0.5.12 warns while it validates every package it writes
            warnings.filterwarnings("ignore", message="Found mapping with 'source'", category=UserWarning)
            save_bioimageio_package(description, output_path=partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


__all__ = ["ExportError", "ExportNoise", "ExportResult", "FixedNoiseDenoiser", "architecture_source", "choose_noise",
           "export_model", "frame_units", "noise_on_input_scale", "to_input_scale"]
