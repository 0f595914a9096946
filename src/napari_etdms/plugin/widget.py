"""The ETDMS dock widget: a thin Qt layer over the pipeline.

The form (this module) snapshots the chosen layer on the main thread and starts the job;
`jobs` runs it in a napari generator worker (the GUI stays responsive) with its progress in
the dock and napari's activity panel; `output_layers` adds the outputs as layers that overlay
the input exactly; `compare` shows them side by side; `adapt_panel` adapts stage 1 to the
image. Viewer and layers are only touched on the main thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QSettings, QSize, Qt
from qtpy.QtWidgets import QComboBox, QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from napari_etdms.diffusion import DEFAULT_PRESET, SAMPLERS
from napari_etdms.engine import DEFAULTS, MAX_STRENGTH, MIN_TILE, RunSettings
from napari_etdms.io import open_volume
from napari_etdms.plugin.adapt_panel import AdaptPanel
from napari_etdms.plugin.compare import CompareView
from napari_etdms.plugin.jobs import JobControls
from napari_etdms.plugin.output_layers import add_output_layers, add_stack_layers, is_output
from napari_etdms.plugin.worker import Job, StackJob, adapt_job, run_job, stack_job
from napari_etdms.weights import DEFAULT_WEIGHTS, available

LOCAL_FILE = "local weights file..."
SAMPLES_TIP = "more than 1 adds the mean and a per-pixel uncertainty (std) layer"
ONE_EVALUATION = "these weights' stage 2 is one evaluation per tile (the posterior mean): no sampler, steps or seed"
REGIONS = ("whole frame", "current view", "shapes rectangle")
SLICES = ("current slice", "all slices")
# The dock's width, so that it fits beside the canvas in napari's default window (about
# 1090 x 640 px): long text wraps or is elided, and the form scrolls rather than forcing the
# window taller.
DOCK_WIDTH, DOCK_MAX_WIDTH = 320, 420  # preferred and largest width (px)
COMBO_MIN_CHARS = 8  # a combo box shows this many characters; longer names are elided
PERSISTED = ("denoise", "strength", "super_resolve", "weights", "device", "sampler", "steps", "seed", "samples",
             "data_consistency", "region", "tile", "overlap", "batch_size", "precision", "adapt_minutes",
             "adapt_steps")
ADAPT_FIELDS = {"adapt_minutes": "minutes", "adapt_steps": "steps"}  # persisted names -> AdaptPanel fields


def detected_summary(devices: list[str]) -> tuple[str, str]:
    """The device line before any run, and its tooltip: what "auto" finds and the precision
    it will run in, from the processor's capabilities (where they cannot tell, the first run
    measures it; the line after a run says what was used)."""
    import torch

    from napari_etdms.runtime import CpuFeatures, choose_precision, select_device

    auto = "CUDA" if torch.cuda.is_available() else ("MPS" if "mps" in devices else "CPU only")
    device = select_device("auto")
    line = f"detected: {auto}, torch {torch.__version__}"
    if device.type == "cpu" and CpuFeatures.detect().bfloat16 == "unknown":
        return f"{line}; precision: measured on the first run", "this processor's bfloat16 speed is measured once"
    precision = choose_precision(device)
    return f"{line}; {precision.name}", f"precision {precision.name}: {precision.reason}"


def ran_on(metadata: dict) -> tuple[str, str]:
    """The device line after a run, and its tooltip: the precision used and why, the threads."""
    threads = f", {metadata['threads']} threads" if metadata.get("threads") else ""
    return (f"last run: {metadata['device']}, {metadata['precision']}{threads}",
            f"precision {metadata['precision']}: {metadata['precision_reason']}")


def detected_devices() -> list[str]:
    import torch

    devices = ["auto"]
    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices + ["cpu"]


class ETDMSWidget(QWidget):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self._image_pinned = False  # the user chose an image: stop following the layer selection
        self._following = False  # the widget, not the user, is setting the image choice
        self._compared: list[str] = []  # the last run's input and output layer names
        self.compare = CompareView(viewer)
        self._build()
        self.jobs = JobControls(self, [self.run_button, self.adapt_panel.button], self.progress_bar, self.status)
        self._restore_settings()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_selection)
        self._image_pinned = False  # building the form set its first value: not the user's pick
        self._follow_selection()

    # ---- construction -----------------------------------------------------------------
    def _build(self):
        self.image = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.slices = ComboBox(label="3D stack", choices=SLICES, value=SLICES[0], visible=False)
        self.stack_output = FileEdit(
            label="stack output", mode="d", visible=False,
            tooltip="all slices of a stack file go to 3D OME-Zarr outputs in this folder, as etdms infer writes "
                    "them (opened lazily); running again resumes a stopped run")
        # a narrow dock: the path gets the room (its end shown, all of it in the tooltip), the button little
        self.stack_output.choose_btn.text = "..."
        self.stack_output.changed.connect(self._show_stack_path)
        self.denoise = CheckBox(label="denoise (stage 1)", value=DEFAULTS.denoise)
        self.strength = FloatSlider(
            label="denoise strength", min=0.0, max=MAX_STRENGTH, step=0.05, value=DEFAULTS.strength,
            tooltip="0 = no denoising (the x4 step takes the frame as noise-free), 1 = the noise level "
                    "estimated from the frame, told to both stages; below 1 where the frame is cleaner than "
                    "estimated (fine texture read as noise); above 1 = smoother (total-variation smoothing of "
                    "the output; noise-aware weights only)")
        self.noise_info = Label(value="")
        self.super_resolve = CheckBox(label="super-resolve x4 (stage 2)", value=DEFAULTS.super_resolve)
        self.weights = ComboBox(label="weights", choices=self._weights_choices)
        if DEFAULT_WEIGHTS in self.weights.choices:  # else the first installed
            self.weights.value = DEFAULT_WEIGHTS
        self.weights_file = FileEdit(label="weights.json", filter="weights.json", visible=False)
        devices = detected_devices()
        self.device = ComboBox(label="device", choices=devices, value="auto")
        line, why = detected_summary(devices)
        self.device_info = Label(value=line, tooltip=why)
        self.sampler = ComboBox(label="sampler", choices=list(SAMPLERS), value="dpmpp")
        self.steps = SpinBox(label="steps", min=1, max=2000, value=20)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.samples = SpinBox(label="samples", min=1, max=64, value=DEFAULTS.samples, tooltip=SAMPLES_TIP)
        self.data_consistency = CheckBox(
            label="data consistency", value=True,
            tooltip="keep the 4x4 block means of the x4 output equal to the (denoised) input frame",
        )
        self.region = ComboBox(label="region", choices=REGIONS, value=REGIONS[0])
        self.shapes = ComboBox(label="shapes layer", choices=self._shapes_choices, nullable=True, visible=False)
        self.advanced = CheckBox(label="advanced settings", value=False)
        self.tile = SpinBox(label="tile (px)", min=MIN_TILE, max=512, step=4, value=DEFAULTS.tile, visible=False)
        self.overlap = SpinBox(label="overlap (px)", min=0, max=256, value=DEFAULTS.overlap, visible=False)
        self.batch_size = SpinBox(label="tiles per batch", min=0, max=64, value=0, visible=False,
                                  tooltip="0: automatic (8 on a CUDA GPU, else 1)")
        self.precision = ComboBox(label="precision", choices=("auto", "float32", "bfloat16", "float16"),
                                  value="auto", visible=False)
        self.adapt_panel = AdaptPanel()
        self.run_button = PushButton(text="Run")
        self.compare_button = PushButton(
            text="Compare", enabled=False,
            tooltip="the input and the last run's outputs side by side (one linked view, matched contrast); "
                    "press again to return to the overlay")
        self.progress_bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        self.form = Container()  # filled once built: magicgui then aligns the labels in one column
        self.form.extend([
            self.image, self.slices, self.stack_output, self.denoise, self.strength, self.noise_info,
            self.super_resolve, self.weights,
            self.weights_file,
            self.device, self.device_info, self.sampler, self.steps, self.seed, self.samples,
            self.data_consistency, self.region,
            self.shapes, self.advanced, self.tile, self.overlap, self.batch_size, self.precision,
            self.adapt_panel.minutes, self.adapt_panel.steps,
            self.run_button, self.compare_button, self.adapt_panel.button, self.progress_bar, self.status,
        ])
        self._fit_the_dock()
        self.advanced.changed.connect(self._toggle_advanced)
        self.weights.changed.connect(lambda v: setattr(self.weights_file, "visible", v == LOCAL_FILE))
        self.region.changed.connect(lambda v: setattr(self.shapes, "visible", v == "shapes rectangle"))
        self.image.changed.connect(self._image_changed)
        self.slices.changed.connect(self._show_stack_output)
        self.sampler.changed.connect(self._sampler_changed)
        self.weights.changed.connect(self._apply_preset)
        self._apply_preset(self.weights.value)
        self.run_button.changed.connect(self._run_or_cancel)
        self.compare_button.changed.connect(self._toggle_compare)
        self.adapt_panel.button.changed.connect(self._adapt_or_cancel)
        self._image_changed(self.image.value)

    def _fit_the_dock(self):
        """Keep the dock narrow whatever the text: the notes (noise estimate, device line,
        status) wrap across the dock's whole width, combo boxes elide long layer and weights
        names, and the dock asks for DOCK_WIDTH (at most DOCK_MAX_WIDTH), so the canvas keeps
        most of napari's window."""
        for note in (self.noise_info, self.device_info, self.status):
            _wrapped_note(note)
        for combo in (self.image, self.slices, self.weights, self.device, self.sampler, self.region, self.shapes,
                      self.precision):
            native = combo.native
            if isinstance(native, QComboBox):
                native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
                native.setMinimumContentsLength(COMBO_MIN_CHARS)
        for combo in (self.image, self.weights):  # the whole name in a tooltip, where elided
            combo.changed.connect(lambda value, native=combo.native: native.setToolTip(_choice_name(value)))
            combo.native.setToolTip(_choice_name(combo.value))
        content = QWidget()
        inner = QVBoxLayout(content)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(self.form.native)
        inner.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(_VerticalScroll(content))
        self.setMaximumWidth(DOCK_MAX_WIDTH)

    def sizeHint(self) -> QSize:
        """Napari gives a new dock its size hint: DOCK_WIDTH, or what the form needs if more."""
        width = min(max(self.minimumSizeHint().width(), DOCK_WIDTH), DOCK_MAX_WIDTH)
        return QSize(width, super().sizeHint().height())

    def _image_choices(self, _widget=None):
        import napari

        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)
                and not layer.rgb and layer.ndim in (2, 3)]

    def _shapes_choices(self, _widget=None):
        import napari

        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Shapes)]

    @staticmethod
    def _weights_choices(_widget=None):
        names = list(available())
        return names + [LOCAL_FILE] if names else [LOCAL_FILE]

    def _refresh_layers(self, _event=None):
        self.form.reset_choices()
        self._follow_selection()

    def _default_image(self):
        """The selected image layer, else the current choice, else the newest image; never one
        of our outputs."""
        inputs = [layer for layer in self._image_choices() if not is_output(layer)]
        for layer in (self.viewer.layers.selection.active, self.image.value):
            if layer in inputs:
                return layer
        return inputs[-1] if inputs else None

    def _follow_selection(self, _event=None):
        """Until the user picks an image, the choice follows napari's layer selection."""
        if self._image_pinned:
            return
        layer = self._default_image()
        if layer is not None and layer is not self.image.value:
            self._following = True
            try:
                self.image.value = layer
            finally:
                self._following = False

    def _toggle_advanced(self, shown: bool):
        for w in (self.tile, self.overlap, self.batch_size, self.precision, self.adapt_panel.minutes,
                  self.adapt_panel.steps):
            w.visible = shown

    def _image_changed(self, layer):
        self.slices.visible = layer is not None and layer.ndim == 3
        self._show_stack_output()
        if not self._following:  # the user's choice (or its layer was removed: follow again)
            self._image_pinned = layer is not None

    def _apply_preset(self, name):
        """The weights' measured default sampling (persisted settings override it)."""
        from napari_etdms.weights import WeightsError, resolve

        if not name or name == LOCAL_FILE:
            return
        try:
            entry = resolve(name)
        except WeightsError:
            return
        preset = entry.recommended
        self._show_sampling(entry.config.stage2 != "regression")
        if preset.get("sampler") in SAMPLERS:
            self.sampler.value = preset["sampler"]
            self.steps.value = int(preset.get("steps", self.steps.value))
        self.data_consistency.value = bool(preset.get("data_consistency", DEFAULT_PRESET["data_consistency"]))

    def _show_sampling(self, diffusion: bool):
        """Sampler, steps and seed mean something only for a diffusion stage 2; a regression
        one is a single evaluation (the posterior mean), whose samples > 1 adds its error std."""
        for control in (self.sampler, self.steps, self.seed):
            control.enabled = diffusion
            control.tooltip = "" if diffusion else ONE_EVALUATION
        self.samples.tooltip = SAMPLES_TIP if diffusion else "more than 1 adds the predicted error std (uncertainty)"

    def _sampler_changed(self, name: str):
        from napari_etdms.config import DiffusionConfig
        from napari_etdms.diffusion import default_steps

        self.steps.value = default_steps(name, DiffusionConfig())

    # ---- settings ----------------------------------------------------------------------
    @staticmethod
    def _settings() -> QSettings:
        from platformdirs import user_config_dir

        folder = Path(os.environ.get("NAPARI_ETDMS_CONFIG_DIR") or user_config_dir("napari-etdms"))
        return QSettings(str(folder / "dock-widget.ini"), QSettings.Format.IniFormat)

    def _persisted(self, name: str):
        if name in ADAPT_FIELDS:
            return getattr(self.adapt_panel, ADAPT_FIELDS[name])
        return getattr(self, name)

    def _restore_settings(self):
        settings = self._settings()
        for name in PERSISTED:
            value = settings.value(name)
            widget = self._persisted(name)
            if value is None:
                continue
            try:
                if isinstance(widget, CheckBox):
                    widget.value = str(value).lower() == "true"
                elif isinstance(widget, SpinBox):
                    widget.value = int(value)
                elif isinstance(widget, (FloatSlider, FloatSpinBox)):
                    widget.value = float(value)
                elif value in widget.choices:
                    widget.value = value
            except (ValueError, TypeError):
                continue  # a stale or foreign value: keep the default

    def _save_settings(self):
        settings = self._settings()
        for name in PERSISTED:
            settings.setValue(name, self._persisted(name).value)

    # ---- running -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.jobs.running

    def cancel(self):
        self.jobs.cancel()

    def _run_or_cancel(self, _=None):
        if self.running:
            self.cancel()
        else:
            self.run()

    def _adapt_or_cancel(self, _=None):
        if self.running:
            self.cancel()
        else:
            self.adapt()

    def _selected_weights(self) -> str | None:
        if self.weights.value == LOCAL_FILE:
            path = Path(self.weights_file.value)
            if not path.is_file():
                raise ValueError("choose a weights.json file, or install trained weights")
            return str(path)
        return self.weights.value or DEFAULT_WEIGHTS

    def _region(self, layer) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) in the layer's data pixels (last two axes)."""
        height, width = layer.data.shape[-2:]
        if self.region.value == "current view":
            corners = np.asarray(layer.corner_pixels)[:, -2:]
            y0, x0 = np.clip(corners[0], 0, None)
            y1, x1 = corners[1] + 1
        elif self.region.value == "shapes rectangle":
            shapes = self.shapes.value
            if shapes is None or len(shapes.data) == 0:
                raise ValueError("draw a rectangle in a Shapes layer and choose that layer")
            index = next(iter(shapes.selected_data), len(shapes.data) - 1)
            world = np.array([shapes.data_to_world(v) for v in shapes.data[index]])
            pixels = np.array([layer.world_to_data(w) for w in world])[:, -2:]
            y0, x0 = np.floor(pixels.min(axis=0)).astype(int)
            y1, x1 = np.ceil(pixels.max(axis=0)).astype(int) + 1
        else:
            return 0, height, 0, width
        y0, y1 = int(max(0, y0)), int(min(height, y1))
        x0, x1 = int(max(0, x0)), int(min(width, x1))
        if y1 - y0 < 8 or x1 - x0 < 8:
            raise ValueError(f"the region is only {y1 - y0}x{x1 - x0} px; choose at least 8x8 px inside the image")
        return y0, y1, x0, x1

    def _planes(self, layer) -> tuple[list[int | None], int | None]:
        """The slices to process (None: the layer is 2D) and the current slice's index, if only it."""
        if layer.ndim == 3 and self.slices.value == "current slice":
            index = int(self.viewer.dims.current_step[0])
            return [min(max(index, 0), layer.data.shape[0] - 1)], index
        if layer.ndim == 3:
            return list(range(layer.data.shape[0])), None
        return [None], None

    def _chosen_image(self):
        if self.image.value is None:
            raise ValueError("open an SEM image first (File > Open, or a sample under File > Open Sample)")
        return self.image.value

    def _snapshot(self):
        layer = self._chosen_image()
        y0, y1, x0, x1 = self._region(layer)
        data = layer.data
        planes, slice_index = self._planes(layer)
        plane = lambda i: data if i is None else data[i]  # noqa: E731
        frames = [np.array(plane(i)[y0:y1, x0:x1]) for i in planes]
        whole = (y0, y1, x0, x1) == (0, data.shape[-2], 0, data.shape[-1])
        # a region's noise is that of its whole slice: more pixels, a steadier estimate
        noise_frames = None if whole else [np.asarray(plane(i)) for i in planes]
        return layer, frames, noise_frames, (y0, x0), slice_index

    def run(self):
        """Start a run (the Run button). Errors in the settings are shown, nothing starts."""
        from napari.utils.notifications import show_error

        if self.compare.active:
            self._return_to_overlay()  # new outputs land in the overlay, where they are added
        try:
            layer = self._chosen_image()
            weights = self._selected_weights()
            if not (self.denoise.value or self.super_resolve.value):
                raise ValueError("choose at least one stage (denoise or super-resolve)")
            settings = self._run_settings()  # checked together before any work, as the CLI checks them
            whole_stack = self.slices.value == SLICES[1] and self.region.value == REGIONS[0]
            stack = self._stack_file(layer) if whole_stack else None
            if stack is None:
                _, frames, noise_frames, offset, slice_index = self._snapshot()
        except ValueError as err:
            show_error(f"ETDMS: {err}")
            self.status.value = f"error: {err}"
            return
        self._save_settings()
        context = {"layer": layer, "started": time.monotonic()}
        if stack is not None:
            job = StackJob(stack, Path(self.stack_output.value), weights, self.device.value, self.precision.value,
                           settings)
            self.jobs.start(lambda cancel: stack_job(job, cancel), lambda outcome: self._finish(outcome, context),
                            self.run_button, "loading weights...")
            return
        job = Job(frames, weights, self.device.value, self.precision.value, settings, noise_frames)
        context |= {"offset": offset, "slice": slice_index, "region": self.region.value,
                    "noise_from_whole": noise_frames is not None}
        self.jobs.start(lambda cancel: run_job(job, cancel), lambda outcome: self._finish(outcome, context),
                        self.run_button, "loading weights...")

    def _run_settings(self) -> RunSettings:
        sampled = self.sampler.enabled  # a diffusion stage 2 (see _show_sampling)
        return RunSettings(denoise=self.denoise.value, super_resolve=self.super_resolve.value,
                           sampler=self.sampler.value if sampled else None,
                           steps=self.steps.value if sampled else None, seed=self.seed.value,
                           samples=self.samples.value, data_consistency=self.data_consistency.value,
                           tile=self.tile.value, overlap=self.overlap.value,
                           batch_size=self.batch_size.value or None,  # 0: auto
                           strength=round(float(self.strength.value), 3))

    def _stack_file(self, layer) -> Path | None:
        """The stack file (3D OME-Zarr, multi-page TIFF) a 3D image layer was read from, if any."""
        source = (layer.metadata or {}).get("source_path") if layer is not None and layer.ndim == 3 else None
        try:
            return Path(source) if source and open_volume(source, max_pixels=2**62) is not None else None
        except (OSError, ValueError, ImportError):  # moved, unreadable, or no zarr extra: run in memory
            return None

    def _show_stack_path(self, _=None):
        path = str(self.stack_output.value)
        self.stack_output.line_edit.tooltip = path
        self.stack_output.line_edit.native.setCursorPosition(len(path))  # the folder's name, not the drive's

    def _show_stack_output(self, _=None):
        """All slices of a stack file go to 3D OME-Zarr outputs: the folder is asked for then."""
        source = self._stack_file(self.image.value) if self.slices.value == SLICES[1] else None
        self.stack_output.visible = source is not None
        if source is not None and str(self.stack_output.value) in ("", "."):
            stem = source.name.split(".")[0]
            self.stack_output.value = source.parent / f"{stem}-etdms"

    def adapt(self):
        """Adapt stage 1 of the chosen weights to the chosen image (the "Adapt to this image"
        button): its whole frame, or every slice of a stack with "all slices"."""
        from napari.utils.notifications import show_error

        if self.compare.active:
            self._return_to_overlay()
        try:
            layer = self._chosen_image()
            base = self._selected_weights()
        except ValueError as err:
            show_error(f"ETDMS: {err}")
            return
        job = self.adapt_panel.job(layer, self._planes(layer)[0], base, self.device.value, self.precision.value)
        self._save_settings()
        self.jobs.start(lambda cancel: adapt_job(job, cancel),
                        lambda outcome: self.adapt_panel.finish(outcome, self.weights, self.status),
                        self.adapt_panel.button, "adapting: preparing the frames...")

    def _finish(self, outcome: dict, context: dict):
        from napari.utils.notifications import show_error, show_info

        if "error" in outcome:
            show_error(f"ETDMS failed: {outcome['error']}")
            self.status.value = f"error: {outcome['error']}"
        elif outcome.get("results") is None:
            show_info("ETDMS: cancelled; no layers were added or changed")
            self.status.value = "cancelled"
        elif isinstance(outcome["results"], dict):  # a stack's stores (worker.stack_job)
            self._compared = add_stack_layers(self.viewer, context["layer"], outcome["results"], context)
            self.status.value = f"done in {time.monotonic() - context['started']:.1f} s"
            self.compare_button.enabled = len(self._compared) > 1
        else:
            self._show_outputs(outcome["results"], context)

    def _show_outputs(self, results: list, context: dict):
        self._compared = add_output_layers(self.viewer, results, context)
        self.status.value = f"done in {time.monotonic() - context['started']:.1f} s"
        self.compare_button.enabled = len(self._compared) > 1
        mapped = results[0].metadata["intensity_map"]
        where = "whole slice" if context.get("noise_from_whole") else "processed frame"
        self.noise_info.value = f"noise ({where}): {results[0].noise.describe(mapped['low'], mapped['high'])}"
        self.device_info.value, self.device_info.tooltip = ran_on(results[0].metadata)

    # ---- compare --------------------------------------------------------------------------
    def _toggle_compare(self, _=None):
        from napari.utils.notifications import show_info

        if self.compare.active:
            self._return_to_overlay()
        elif self.compare.show(self._compared):
            self.compare_button.text = "Overlay"
        else:
            show_info("ETDMS: run first; Compare shows the input beside the outputs of the last run")

    def _return_to_overlay(self):
        self.compare.restore()
        self.compare_button.text = "Compare"


class _VerticalScroll(QScrollArea):
    """The form scrolls vertically when napari's window is shorter than the form (so the dock
    never forces the window taller), never horizontally: it is as wide as the form needs."""

    def __init__(self, content: QWidget):
        super().__init__()
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width + 2 * self.frameWidth(), hint.height())

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        return QSize(self.minimumSizeHint().width(), hint.height() + 2 * self.frameWidth())


def _choice_name(value) -> str:
    """A combo box choice as text: a layer's name, a weights name, or nothing."""
    return "" if value is None else str(getattr(value, "name", value))


def _wrapped_note(label: Label) -> None:
    """A read-only line of the form that wraps instead of widening the dock, across the dock's
    whole width: its row's label column (empty for a note) is hidden."""
    native = label.native
    if not isinstance(native, QLabel):
        return
    native.setWordWrap(True)
    policy = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)  # magicgui's is Fixed
    policy.setHeightForWidth(True)  # taller as it wraps
    native.setSizePolicy(policy)
    native.setTextInteractionFlags(native.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse)
    row = native.parentWidget()
    if row is None:
        return
    for child in row.findChildren(QLabel, options=Qt.FindChildOption.FindDirectChildrenOnly):
        if child is not native and not child.text():
            child.hide()
