"""Simulated acquisition, shared by training and evaluation: a clean frame degraded as an SEM
would record it at a dose (`degradation`), and the frames clean enough to serve as truth
(`ground_truth`)."""

from napari_etdms.simulation.degradation import SCALE, DegradationConfig, degrade, degrade_with_details
from napari_etdms.simulation.ground_truth import load_ground_truth, load_normalised, validation_frames

__all__ = ["DegradationConfig", "SCALE", "degrade", "degrade_with_details", "load_ground_truth", "load_normalised",
           "validation_frames"]
