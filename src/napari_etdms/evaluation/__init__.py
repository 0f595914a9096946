"""Measuring: how well ETDMS restores degraded clean frames, against bicubic, NLM and BM3D.

- `metrics`: PSNR/SSIM after matching, NRMSE, FRC resolution, data consistency, uncertainty calibration
- `baselines`: the classical methods (non-local means, BM3D) on the low-res frame, then bicubic x4
- `protocol`: the methods, the doses and degradation kinds of a sweep, sources, one frame scored
- `sweep`: `run_evaluation`, over frames and doses; `reports`: tables, CSV and figures
- `learned_metrics`: LPIPS and patch FID from user-supplied networks
"""

from napari_etdms.evaluation.protocol import (
    CLEAN,
    DEGRADATION_KINDS,
    METHODS,
    centre_crop,
    dose_degradation,
    dose_label,
    evaluate_frame,
    parse_doses,
    split_held_out_sources,
)
from napari_etdms.evaluation.sweep import run_evaluation

__all__ = ["CLEAN", "DEGRADATION_KINDS", "METHODS", "centre_crop", "dose_degradation", "dose_label", "evaluate_frame",
           "parse_doses", "run_evaluation", "split_held_out_sources"]
