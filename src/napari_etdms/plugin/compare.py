"""Compare: a run's input and outputs side by side in napari's grid, each panel named and
with a scale bar (the std map with its colour bar), framed on the outputs, and back to the
overlay exactly as it was. Qt only for font metrics; the rest is napari's own overlays."""

from __future__ import annotations

import numpy as np
from qtpy.QtGui import QFont, QFontMetricsF

NAME_FONT_SIZE = (6.0, 10.0)  # the layer names, scale bars and colour bar in the panels (points)
COLORBAR_SIZE = (12.0, 80.0)  # the std map's colour bar, under its name (px)
SCALE_BAR_WIDTH = (150.0, 0.45)  # the scale bars: at most this many px, and this fraction of a panel


class CompareView:
    """The grid of one viewer. The grid is one canvas with one camera: zoom and pan move every
    panel together; after a region run the camera frames the region in every panel."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._state: dict | None = None  # what `restore` puts back, while the grid shows

    @property
    def active(self) -> bool:
        return self._state is not None

    def show(self, compared: list[str]) -> bool:
        """The input and the outputs named in `compared` (input first) in napari's grid, in
        that order; False (nothing changed) when fewer than two of them are in the viewer."""
        layers, grid = self.viewer.layers, grid_of(self.viewer)
        names = [name for name in compared if name in layers]
        if len(names) < 2:
            return False
        camera = camera_of(self.viewer)
        self._state = state = {
            "order": [layer.name for layer in layers],
            "visible": {layer.name: layer.visible for layer in layers},
            "grid": (grid.enabled, grid.stride, grid.shape),
            "camera": (tuple(camera.center), camera.zoom),
            "limits": {},  # name -> (before, set by Compare)
            "overlays": [],  # (overlay, {field: value before Compare})
        }
        for name in names:  # the grid places visible layers by list index: move ours to the end, in order
            layers.move(layers.index(name), len(layers))
        limits = tuple(layers[names[0]].contrast_limits)
        for layer in layers:
            layer.visible = layer.name in names
            if layer.name in names[1:] and layer.metadata.get("output") != "std":
                state["limits"][layer.name] = (tuple(layer.contrast_limits), limits)
                layer.contrast_limits = limits
        grid.stride, grid.shape, grid.enabled = 1, (-1, -1), True
        framing = _framing(self.viewer, [layers[name] for name in names[1:]])
        self._label_panels([layers[name] for name in names], None if framing is None else framing[1])
        if framing is None:
            self.viewer.reset_view()
        else:
            camera.center, camera.zoom = framing
        camera.events.zoom.connect(self._fit_scale_bar)
        return True

    def _label_panels(self, compared, zoom: float | None):
        """Napari's own overlays, per panel: the layer's name (top left), a scale bar in the
        layers' units (bottom right), the std map's colour bar (bottom left), in a font that
        fits the names in a panel; the scale bar's length fits the camera's `zoom` (None: the
        current one). Layer overlays always sit in their layer's panel; the scale bar is a
        canvas overlay, repeated in every panel when gridded."""
        saved = self._state["overlays"]
        size = _panel_font_size(self.viewer, [layer.name for layer in compared])
        for layer in compared:
            _set_overlay(saved, getattr(layer, "name_overlay", None), visible=True, font_size=size)
            if layer.metadata.get("output") == "std":  # a legend beside the scale bar, clear of the name
                _set_overlay(saved, getattr(layer, "colorbar", None), visible=True, size=COLORBAR_SIZE, font_size=size,
                             position="bottom_left")
        bar = scale_bar_of(self.viewer)
        _set_overlay(saved, bar, length=getattr(bar, "length", None))
        self._fit_scale_bar(zoom=zoom)
        _set_overlay(saved, bar, visible=True, gridded=True, font_size=size)

    def _fit_scale_bar(self, _event=None, zoom: float | None = None):
        """While comparing, the scale bars are a round length (1, 2 or 5 x 10^k world units)
        that fits a panel at `zoom` (else the camera's): napari's own aim at 150 px, wider
        than a panel of the default window's 2 x 3 grid. Follows the zoom."""
        bar, canvas = scale_bar_of(self.viewer), getattr(self.viewer, "canvas", None)
        if self._state is None or not hasattr(bar, "length") or not hasattr(canvas, "viewbox_size"):
            return
        most, fraction = SCALE_BAR_WIDTH
        pixels = min(most, fraction * float(canvas.viewbox_size(self.viewer.layers)[-1]))
        length = _round_down(pixels / float(zoom or camera_of(self.viewer).zoom))
        if length != bar.length:
            bar.length = length
            # napari redraws its scale bars on a zoom or a font change, not on a new length
            # alone (and may have redrawn for this zoom already): ask for the redraw
            signal = getattr(bar.events, "font_size", None)
            getattr(signal, "emit", signal)(bar.font_size)

    def restore(self):
        """Back from the grid: the layer order, the visibility, the contrast `show` matched
        (unless changed since), napari's overlays and the camera as they were."""
        state, self._state = self._state, None
        layers, grid = self.viewer.layers, grid_of(self.viewer)
        camera_of(self.viewer).events.zoom.disconnect(self._fit_scale_bar)
        for overlay, values in reversed(state["overlays"]):
            for field, value in values.items():
                setattr(overlay, field, value)
        grid.enabled, grid.stride, grid.shape = state["grid"]
        order = [name for name in state["order"] if name in layers]
        order += [layer.name for layer in layers if layer.name not in order]  # added while comparing: on top
        for name in order:
            layers.move(layers.index(name), len(layers))
        for layer in layers:
            layer.visible = state["visible"].get(layer.name, layer.visible)
            before, matched = state["limits"].get(layer.name, (None, None))
            if before is not None and np.allclose(layer.contrast_limits, matched):
                layer.contrast_limits = before
        camera = camera_of(self.viewer)
        center, zoom = state["camera"]
        if len(center) == len(camera.center):
            camera.center, camera.zoom = center, zoom
        else:  # the displayed dimensions changed meanwhile
            self.viewer.reset_view()



def camera_of(viewer):
    """The viewer's camera (napari >= 0.9 keeps it on the scene)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera



def scale_bar_of(viewer):
    """The viewer's scale bar overlay (napari >= 0.9 keeps it on the canvas)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays.scale_bar if overlays is not None else getattr(viewer, "scale_bar", None)



def _panel_font_size(viewer, names: list[str]) -> float:
    """The largest font size (points, within NAME_FONT_SIZE) at which napari writes the longest
    of `names` within one grid panel: the default window's panels are narrow, and names long
    ("<input> ETDMS x4 std"). Napari draws its overlay text with Qt's font, 4/3 as wide as
    Qt's metrics give for the same point size."""
    smallest, largest = NAME_FONT_SIZE
    canvas = getattr(viewer, "canvas", None)
    if not hasattr(canvas, "viewbox_size") or not names:
        return largest
    font = QFont()
    font.setPointSizeF(10.0)
    per_point = max(QFontMetricsF(font).horizontalAdvance(name) for name in names) * 4 / 3 / 10.0
    width = float(canvas.viewbox_size(viewer.layers)[-1]) - 24  # the text box's padding and margin
    return float(np.clip(np.floor(2 * width / per_point) / 2, smallest, largest))



def _round_down(value: float) -> float:
    """The largest of 1, 2 or 5 x 10^k not above `value` (> 0)."""
    exponent = int(np.floor(np.log10(value)))
    mantissa = max(m for m in (1, 2, 5) if m * 10.0 ** exponent <= value * (1 + 1e-9))
    return float(f"{mantissa}e{exponent}")



def _set_overlay(saved: list, overlay, **values) -> None:
    """Set those of an overlay's fields that this napari has, remembering their values in
    `saved` to restore them."""
    if overlay is None:
        return
    values = {field: value for field, value in values.items() if hasattr(overlay, field)}
    saved.append((overlay, {field: getattr(overlay, field) for field in values}))
    for field, value in values.items():
        setattr(overlay, field, value)



def _framing(viewer, layers, margin: float = 0.05):
    """The camera's (center, zoom) that centres the layers' extent (their last two axes, in
    world units) and fills a grid panel with it: after a region run every panel shows the
    region, not the input's whole frame. None where napari's reset_view should do (3D
    display, transposed axes, napari < 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    ndim = viewer.dims.ndim
    if (viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed) != (ndim - 2, ndim - 1)
            or not hasattr(canvas, "viewbox_size")):
        return None
    corners = []
    for layer in layers:
        height, width = layer.level_shapes[0][-2:] if hasattr(layer, "level_shapes") else layer.data.shape[-2:]
        lead = [0] * (layer.ndim - 2)
        for y, x in ((-0.5, -0.5), (height - 0.5, width - 0.5)):
            corners.append(np.asarray(layer.data_to_world(lead + [y, x]))[-2:])
    corners = np.array(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = np.maximum(high - low, 1e-9)
    center = tuple(camera_of(viewer).center)[:-2] + tuple(float(c) for c in (low + high) / 2)
    return center, float((1 - margin) * np.min(np.asarray(canvas.viewbox_size(viewer.layers)) / size))



def grid_of(viewer):
    """The viewer's grid settings (napari >= 0.9 keeps them on the canvas)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None else viewer.grid
