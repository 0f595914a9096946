"""napari-etdms: two-stage (SwinIR denoise + CLSR diffusion x4) SEM super-resolution."""

__version__ = "0.1.0"

from napari_etdms.engine.pipeline import InputError, Pipeline, Result  # noqa: E402
from napari_etdms.engine.tiling import Cancelled  # noqa: E402
from napari_etdms.weights import WeightsError  # noqa: E402

__all__ = ["Cancelled", "InputError", "Pipeline", "Result", "WeightsError", "__version__"]
