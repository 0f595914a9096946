"""Viewer tests: the dock widget from the manifest, in a real napari viewer (Xvfb)."""

import numpy as np
import pytest
from conftest import copy_with_preset, sem_like

OUTPUT_NAMES = {"sem denoised", "sem ETDMS x4", "sem bicubic x4", "sem denoised bicubic x4"}


@pytest.fixture
def setup(make_napari_viewer, tiny_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path / "config"))  # keep settings out of the home folder
    viewer = make_napari_viewer()
    data = sem_like((40, 48), np.uint16)
    layer = viewer.add_image(data, name="sem", scale=(5.0, 5.0), translate=(100.0, 20.0), units=("nm", "nm"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    widget.image.value = layer
    widget.weights.value = "tiny-test"
    widget.advanced.value = True
    widget.sampler.value = "ddim"
    widget.steps.value = 2
    widget.tile.value = 32
    widget.overlap.value = 8
    return viewer, widget, layer, data.copy()


def run_and_wait(qtbot, widget, timeout=60_000):
    widget.run_button.clicked()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_run_adds_overlaid_outputs_with_provenance(setup, qtbot):
    viewer, widget, layer, original = setup
    run_and_wait(qtbot, widget)
    names = {lay.name for lay in viewer.layers}
    assert OUTPUT_NAMES <= names and "sem ETDMS x4 std" not in names
    assert np.array_equal(layer.data, original)  # the input layer is untouched
    denoised, x4 = viewer.layers["sem denoised"], viewer.layers["sem ETDMS x4"]
    assert denoised.data.shape == (40, 48) and x4.data.shape == (160, 192)
    assert tuple(denoised.scale) == (5.0, 5.0) and tuple(denoised.translate) == (100.0, 20.0)
    assert tuple(x4.scale) == (1.25, 1.25)
    assert [str(u) for u in x4.units] == ["nanometer", "nanometer"]
    for i, j in [(0, 0), (7, 11), (39, 47)]:  # centre of x4 pixel (4i+1.5, 4j+1.5) = centre of input (i, j)
        assert np.allclose(x4.data_to_world((4 * i + 1.5, 4 * j + 1.5)), layer.data_to_world((i, j)))
    meta = x4.metadata
    assert meta["weights"]["name"] == "tiny-test" and meta["sampler"] == "ddim" and meta["steps"] == 2
    assert meta["input_layer"] == "sem" and meta["tiling"]["tile"] == 32 and "napari-etdms" in meta["plugin"]
    assert widget.run_button.text == "Run" and "done" in widget.status.value
    # the device line says what the run computed in, and why
    assert meta["precision"] in widget.device_info.value and widget.device_info.value.startswith("last run: cpu")
    assert meta["precision_reason"] in widget.device_info.tooltip and meta["threads"] >= 1


def test_one_evaluation_weights_hide_the_sampler_and_give_their_predicted_std(regression_weights, setup, qtbot):
    viewer, widget, layer, original = setup
    widget.weights.value = "tiny-regression"
    assert not (widget.sampler.enabled or widget.steps.enabled or widget.seed.enabled)
    assert widget.data_consistency.value is False  # the weights' preset
    widget.samples.value = 2
    run_and_wait(qtbot, widget)
    assert "done" in widget.status.value, widget.status.value
    meta = viewer.layers["sem ETDMS x4"].metadata
    assert meta["stage2"] == "regression" and meta["sampler"] is None and meta["steps"] == 1
    assert viewer.layers["sem ETDMS x4 std"].data.shape == (160, 192)
    assert np.array_equal(layer.data, original)
    widget.weights.value = "tiny-test"
    assert widget.sampler.enabled and widget.steps.enabled and widget.seed.enabled


def test_rerun_replaces_outputs_and_samples_add_uncertainty(setup, qtbot):
    viewer, widget, _, _ = setup
    run_and_wait(qtbot, widget)
    count = len(viewer.layers)
    widget.samples.value = 2
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == count + 1  # only the new std layer, no duplicates
    assert viewer.layers["sem ETDMS x4 std"].data.shape == (160, 192)
    assert viewer.layers["sem ETDMS x4"].metadata["samples"] == 2


def test_cancel_stops_the_run_and_changes_nothing(setup, qtbot):
    viewer, widget, _, _ = setup
    widget.steps.value = 150
    before = [lay.name for lay in viewer.layers]
    widget.run_button.clicked()
    qtbot.waitUntil(lambda: widget.progress_bar.value > 2, timeout=60_000)  # drawn by the timer
    assert widget.run_button.text == "Cancel"
    widget.run_button.clicked()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert [lay.name for lay in viewer.layers] == before
    assert widget.run_button.text == "Run" and widget.run_button.enabled
    assert widget.status.value == "cancelled"


def test_errors_reset_the_widget(setup, qtbot):
    viewer, widget, _, _ = setup
    viewer.add_image(np.full((30, 30), 5.0), name="flat")
    widget.image.value = viewer.layers["flat"]
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("error:") and "constant" in widget.status.value
    assert widget.run_button.text == "Run" and not widget.running
    assert "flat denoised" not in [lay.name for lay in viewer.layers]


def test_settings_that_do_not_fit_together_are_refused_before_any_work(setup):
    viewer, widget, _, _ = setup
    before = [lay.name for lay in viewer.layers]
    widget.tile.value, widget.overlap.value = 32, 32
    widget.run_button.clicked()
    assert not widget.running and widget.run_button.text == "Run"
    assert "overlap must be in [0, tile)" in widget.status.value
    assert [lay.name for lay in viewer.layers] == before


def test_shapes_region_places_the_crop_in_place(setup, qtbot):
    viewer, widget, layer, _ = setup
    shapes = viewer.add_shapes([[[100 + 5 * 10, 20 + 5 * 12], [100 + 5 * 30, 20 + 5 * 40]]], shape_type="rectangle")
    widget.region.value = "shapes rectangle"
    widget.shapes.value = shapes
    widget.image.value = layer
    run_and_wait(qtbot, widget)
    denoised = viewer.layers["sem denoised"]
    assert denoised.data.shape == (21, 29)
    assert np.allclose(denoised.data_to_world((0, 0)), layer.data_to_world((10, 12)))
    x4 = viewer.layers["sem ETDMS x4"]
    assert np.allclose(x4.data_to_world((1.5, 1.5)), layer.data_to_world((10, 12)))
    assert x4.metadata["noise_estimated_on"] == "whole slice"


def test_current_slice_of_a_stack(setup, qtbot):
    viewer, widget, _, _ = setup
    stack = np.stack([sem_like((32, 32), np.uint8, seed=s) for s in range(3)])
    viewer.add_image(stack, name="stack")
    viewer.dims.current_step = (1, 0, 0)
    widget.image.value = viewer.layers["stack"]
    assert not widget.slices.native.isHidden()  # the slice choice appears for stacks
    run_and_wait(qtbot, widget)
    assert viewer.layers["stack denoised"].data.shape == (32, 32)
    assert viewer.layers["stack denoised"].metadata["slice"] == 1


def test_settings_persist_between_sessions(setup, qtbot):
    viewer, widget, _, _ = setup
    widget.seed.value = 42
    widget.samples.value = 2
    run_and_wait(qtbot, widget)
    from napari_etdms.plugin.widget import ETDMSWidget

    again = ETDMSWidget(viewer)
    assert again.seed.value == 42 and again.samples.value == 2 and again.sampler.value == "ddim"  # persisted
    assert again.steps.value == 2 and again.tile.value == 32


def test_manifest_validates_with_imports():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-etdms", "--imports"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sample_opens_and_a_region_of_it_runs(make_napari_viewer, tiny_weights, monkeypatch, tmp_path, qtbot):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-etdms", "superalloy")
    sample = viewer.layers[-1]
    assert sample.data.shape == (512, 512)
    _, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    shapes = viewer.add_shapes([[[200, 200], [240, 248]]], shape_type="rectangle")
    widget.image.value = sample
    widget.region.value = "shapes rectangle"
    widget.shapes.value = shapes
    widget.weights.value = "tiny-test"
    widget.sampler.value = "ddim"
    widget.steps.value = 2
    run_and_wait(qtbot, widget)
    x4 = viewer.layers[f"{sample.name} ETDMS x4"]
    assert x4.data.shape == (4 * 41, 4 * 49)
    assert x4.metadata["region"]["offset_px"] == [200, 200]


def test_all_slices_of_a_stack_give_stacked_outputs(setup, qtbot):
    viewer, widget, _, _ = setup
    stack = np.stack([sem_like((24, 28), np.uint8, seed=s) for s in range(2)])
    viewer.add_image(stack, name="stack", scale=(3.0, 2.0, 2.0))
    widget.image.value = viewer.layers["stack"]
    widget.slices.value = "all slices"
    widget.super_resolve.value = False
    run_and_wait(qtbot, widget)
    denoised = viewer.layers["stack denoised"]
    assert denoised.data.shape == (2, 24, 28) and tuple(denoised.scale) == (3.0, 2.0, 2.0)
    assert viewer.layers["stack bicubic x4"].data.shape == (2, 96, 112)
    assert "stack ETDMS x4" not in [lay.name for lay in viewer.layers]


def test_new_widget_uses_the_weights_preset(make_napari_viewer, tiny_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path))
    from napari_etdms.plugin.widget import ETDMSWidget
    from napari_etdms.weights import DEFAULT_WEIGHTS

    widget = ETDMSWidget(make_napari_viewer())
    assert widget.weights.value == DEFAULT_WEIGHTS  # not merely the first installed weights
    widget.weights.value = "tiny-test"  # its preset: ddim, 4 steps
    assert widget.sampler.value == "ddim" and widget.steps.value == 4
    assert widget.data_consistency.value
    copy_with_preset(tiny_weights, tiny_weights.folder.parent / "free", "tiny-free",
                     {"sampler": "dpmpp-sde", "steps": 10, "data_consistency": False})
    widget.weights.reset_choices()
    widget.weights.value = "tiny-free"
    assert widget.sampler.value == "dpmpp-sde" and widget.steps.value == 10
    assert not widget.data_consistency.value


def test_strength_zero_leaves_the_frame_undenoised_and_the_noise_is_shown(make_napari_viewer, noise_aware_weights,
                                                                          monkeypatch, tmp_path, qtbot):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(noise_aware_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path / "config"))
    viewer = make_napari_viewer()
    data = sem_like((64, 64), np.uint16)
    layer = viewer.add_image(data, name="sem")
    _, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    widget.image.value = layer
    widget.weights.value = "tiny-noise-aware"
    widget.super_resolve.value = False
    widget.strength.value = 0.0
    run_and_wait(qtbot, widget)
    denoised = viewer.layers["sem denoised"]
    assert np.allclose(denoised.data, data, atol=1e-3 * data.max())
    assert denoised.metadata["strength"] == 0.0 and denoised.metadata["noise"]["gain"] >= 0
    assert widget.noise_info.value.startswith("noise (processed frame):") and "mid-grey" in widget.noise_info.value
    widget.strength.value = 1.5
    run_and_wait(qtbot, widget)
    assert viewer.layers["sem denoised"].metadata["strength"] == 1.5
    assert not np.allclose(viewer.layers["sem denoised"].data, data, atol=1e-3 * data.max())


def test_image_choice_follows_the_layer_selection_until_the_user_picks(make_napari_viewer, tiny_weights,
                                                                        monkeypatch, tmp_path, qtbot):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    first = viewer.add_image(sem_like((40, 40), np.uint8), name="first")  # as if dropped in before the widget
    _, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    assert widget.image.value is first  # not empty: Run works on the frame on screen
    second = viewer.add_image(sem_like((40, 40), np.uint8, seed=1), name="second")
    assert widget.image.value is second  # the newest (napari selects it)
    viewer.layers.selection.active = first
    assert widget.image.value is first
    viewer.add_points([[1, 1]])  # not an image: the choice stays
    assert widget.image.value is first
    widget.weights.value, widget.sampler.value, widget.steps.value = "tiny-test", "ddim", 2
    widget.advanced.value, widget.tile.value, widget.overlap.value = True, 32, 8
    run_and_wait(qtbot, widget)
    assert widget.image.value is first  # our new output layers are selected by napari, never chosen
    widget.image.value = second  # the user's pick holds against the selection
    viewer.layers.selection.active = first
    assert widget.image.value is second
    viewer.layers.remove(second)  # its layer gone: follow the selection again
    viewer.layers.selection.active = first
    assert widget.image.value is first


def test_compare_shows_input_and_outputs_side_by_side_and_returns_to_the_overlay(setup, qtbot):
    from napari_etdms.plugin.compare import grid_of

    viewer, widget, layer, _ = setup
    grid = grid_of(viewer)
    other = viewer.add_image(np.zeros((10, 10)), name="other")
    widget.image.value = layer  # the new layer was selected, and the choice followed it
    assert not widget.compare_button.enabled  # nothing to compare before a run
    widget.samples.value = 2  # the std map joins the grid
    run_and_wait(qtbot, widget)
    order = [lay.name for lay in viewer.layers]
    layer.contrast_limits = (100, 5000)
    widget.compare_button.clicked()
    expected = ["sem", "sem denoised", "sem ETDMS x4", "sem bicubic x4", "sem ETDMS x4 std"]
    shown = [lay for lay in viewer.layers if lay.visible]
    assert grid.enabled and [lay.name for lay in shown] == expected
    layers = list(viewer.layers)
    cells = [grid.position(layers.index(lay), layers) for lay in shown]
    assert cells == sorted(cells) and len(set(cells)) == len(expected)  # one panel each, in reading order
    assert grid.actual_shape(layers) == (2, 3)
    for name in expected[1:4]:  # matched contrast: the input's, which the user had just stretched
        assert tuple(viewer.layers[name].contrast_limits) == (100, 5000)
    assert not other.visible and not viewer.layers["sem denoised bicubic x4"].visible
    # linked views: napari's one camera drives every panel's view (zoom and pan together)

    camera = viewer.camera if not hasattr(viewer, "scene") else viewer.scene.camera
    before = tuple(np.round(panel_views(viewer, shown)[0].camera.rect.size, 3))
    camera.zoom *= 2.5
    camera.center = (0.0, 80.0, 60.0)[-len(camera.center):]
    qtbot.wait(50)
    rects = {tuple(np.round(view.camera.rect.size, 3)) for view in panel_views(viewer, shown)}
    assert len(panel_views(viewer, shown)) == len(expected) and len(rects) == 1 and rects != {before}
    assert widget.compare_button.text == "Overlay"
    widget.compare_button.clicked()
    assert not grid.enabled and [lay.name for lay in viewer.layers] == order
    assert other.visible and all(lay.visible for lay in viewer.layers)
    assert widget.compare_button.text == "Compare"


def test_compare_after_a_region_run_and_a_new_run_returns_to_the_overlay(setup, qtbot):
    from napari_etdms.plugin.compare import grid_of

    viewer, widget, layer, _ = setup
    grid = grid_of(viewer)
    shapes = viewer.add_shapes([[[100 + 5 * 10, 20 + 5 * 12], [100 + 5 * 30, 20 + 5 * 40]]], shape_type="rectangle")
    widget.region.value, widget.shapes.value = "shapes rectangle", shapes
    widget.image.value = layer
    run_and_wait(qtbot, widget)
    widget.compare_button.clicked()
    assert grid.enabled and [lay.name for lay in viewer.layers if lay.visible] == [
        "sem", "sem denoised", "sem ETDMS x4", "sem bicubic x4"]
    run_and_wait(qtbot, widget)  # a new run leaves the grid first, then adds its outputs
    assert not grid.enabled and widget.compare_button.text == "Compare"
    assert shapes.visible


def panel_views(viewer, shown):
    """The vispy view (with its camera) that draws each of `shown`'s grid panel."""
    views = []
    for layer in shown:
        node = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node
        while not hasattr(node, "camera"):
            node = node.parent
        views.append(node)
    return views


def test_compare_names_each_panel_with_a_scale_bar_frames_the_region_and_overlay_restores_it(setup, qtbot):
    from napari_etdms.plugin.compare import camera_of, grid_of, scale_bar_of

    viewer, widget, layer, _ = setup
    viewer.window.show()  # drawn: each panel's view has its real size
    grid, bar, camera = grid_of(viewer), scale_bar_of(viewer), camera_of(viewer)
    # a rectangle as napari's "new shapes" button makes it over the image: its scale, translate and units
    shapes = viewer.add_shapes([[[10, 12], [30, 40]]], shape_type="rectangle", scale=layer.scale,
                               translate=layer.translate, units=layer.units)
    widget.region.value, widget.shapes.value = "shapes rectangle", shapes
    widget.image.value = layer
    widget.samples.value = 2  # the std map joins the grid, with its colour bar
    run_and_wait(qtbot, widget)
    std, x4 = viewer.layers["sem ETDMS x4 std"], viewer.layers["sem ETDMS x4"]
    bar.font_size = 12  # the user's own settings, to be found again after Compare
    layer.contrast_limits = (100, 5000)
    fields = ("visible", "gridded", "font_size", "length")

    def name_overlays():
        return {lay.name: (lay.name_overlay.visible, lay.name_overlay.font_size) for lay in viewer.layers}

    before = {
        "bar": {field: getattr(bar, field) for field in fields},
        "names": name_overlays(),
        "colorbar": (std.colorbar.visible, std.colorbar.position, tuple(std.colorbar.size)),
        "camera": (tuple(camera.center), camera.zoom),
        "limits": tuple(x4.contrast_limits),
    }
    widget.compare_button.clicked()
    qtbot.wait(50)
    expected = ["sem", "sem denoised", "sem ETDMS x4", "sem bicubic x4", "sem ETDMS x4 std"]
    shown = [viewer.layers[name] for name in expected]
    assert [lay.name for lay in viewer.layers if lay.visible] == expected
    # napari's overlays: each panel's layer name, a scale bar per panel (gridded), the std map's colour bar
    assert bar.visible and bar.gridded
    assert all(lay.name_overlay.visible for lay in shown)
    assert not any(lay.name_overlay.visible for lay in viewer.layers if lay not in shown)
    assert std.colorbar.visible and not any(lay.colorbar.visible for lay in shown[:-1])
    canvas, layers = viewer.window._qt_viewer.canvas, list(viewer.layers)
    panels = [canvas.grid[grid.position(layers.index(lay), layers)] for lay in shown]
    assert len(set(panels)) == len(expected)
    for lay, panel in zip(shown, panels):  # each name is drawn in its own layer's panel
        assert canvas._layer_overlay_to_visual[lay][lay.name_overlay].node.parent is panel
    bars = canvas._viewer_overlay_to_visual[bar]
    assert {vis.node.parent for vis in bars} == set(panels)  # one scale bar in every panel
    panel_width = viewer.canvas.viewbox_size(viewer.layers)[-1]

    def scale_bars_fit():  # a round length in the layers' units (nm), drawn within its panel
        assert 0.45 * panel_width / 2.5 < bar.length * camera.zoom <= 0.45 * panel_width
        assert {vis.node.text.text for vis in canvas._viewer_overlay_to_visual[bar]} == {f"{bar.length:g} nm"}

    scale_bars_fit()
    # framed on the region (rows 10-30, columns 12-40 at 5 nm): every panel, the input's too, shows
    # the whole region and little more, not the input's whole frame
    top, left, bottom, right = 100 + 5 * 9.5, 20 + 5 * 11.5, 100 + 5 * 30.5, 20 + 5 * 40.5
    assert np.allclose(camera.center[-2:], ((top + bottom) / 2, (left + right) / 2))
    for view in panel_views(viewer, shown):
        rect = view.camera.rect
        (x0, x1), (y0, y1) = sorted((rect.left, rect.right)), sorted((rect.bottom, rect.top))
        assert x0 <= left + 1e-6 and x1 >= right - 1e-6 and y0 <= top + 1e-6 and y1 >= bottom - 1e-6
        assert min((x1 - x0) / (right - left), (y1 - y0) / (bottom - top)) == pytest.approx(1 / 0.95, rel=1e-3)
        assert not (x0 <= 17.5 and x1 >= 257.5 and y0 <= 97.5 and y1 >= 297.5)  # the input's extent
    camera.zoom *= 4  # zooming in: the scale bars shorten to fit again
    qtbot.wait(50)
    scale_bars_fit()
    widget.compare_button.clicked()  # back to the overlay: napari's overlays, camera and contrast as they were
    qtbot.wait(50)
    assert not grid.enabled and widget.compare_button.text == "Compare"
    assert {field: getattr(bar, field) for field in fields} == before["bar"]
    assert name_overlays() == before["names"]
    assert (std.colorbar.visible, std.colorbar.position, tuple(std.colorbar.size)) == before["colorbar"]
    assert np.allclose(camera.center, before["camera"][0]) and camera.zoom == pytest.approx(before["camera"][1])
    assert tuple(x4.contrast_limits) == before["limits"]


def test_the_dock_fits_beside_the_canvas_in_naparis_default_window(make_napari_viewer, tiny_weights, monkeypatch,
                                                                    tmp_path, qtbot):
    monkeypatch.setenv("NAPARI_ETDMS_WEIGHTS", str(tiny_weights.folder.parent))
    monkeypatch.setenv("NAPARI_ETDMS_CONFIG_DIR", str(tmp_path))
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1090, 640)  # napari's default window on a first start
    viewer.add_image(sem_like((40, 48), np.uint16), name="a frame with the long name a microscope gives it 0001")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    width_before = dock.minimumSizeHint().width()
    widget.weights.value, widget.sampler.value, widget.steps.value = "tiny-test", "ddim", 2
    run_and_wait(qtbot, widget)
    assert len(widget.noise_info.value) > 60 and widget.device_info.value.startswith("last run")  # long lines
    widget.status.value = "error: " + "a long message that says what went wrong and what to do " * 2
    widget.advanced.value = True  # unfolded: the form is taller than the window
    qtbot.wait(100)
    assert dock.minimumSizeHint().width() <= 380 and dock.minimumSizeHint().width() == width_before
    assert window.width() == 1090 and window.height() <= 640  # the form scrolls; the window keeps its size
    assert viewer.window._qt_viewer.canvas.native.width() > dock.width()
    for note in (widget.noise_info, widget.device_info, widget.status):  # wrapped, and shown whole
        native = note.native
        assert native.wordWrap() and native.height() >= native.heightForWidth(native.width())
    assert not widget.advanced.value or not widget.tile.native.isHidden()
    assert widget.image.native.toolTip() == widget.image.value.name  # an elided name, whole in the tooltip


def adapt_and_wait(qtbot, widget, timeout=300_000):
    widget.adapt_panel.button.clicked()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


@pytest.fixture
def spiky_layer(setup, monkeypatch, tmp_path):
    """A frame from a detector with impulsive spikes, and the user's weights folder in tmp_path."""
    from test_adapt import spiky_frame

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    viewer, widget, _, _ = setup
    data = spiky_frame()
    layer = viewer.add_image(data, name="spiky")
    widget.image.value = layer
    return viewer, widget, layer, data.copy()


def test_adapt_to_this_image_adds_the_weights_chooses_them_and_run_uses_them(spiky_layer, qtbot):
    from napari_etdms.weights import user_folder

    viewer, widget, layer, original = spiky_layer
    widget.weights.value = "etdms-sem-v2"  # the shipped weights: spikes are not in their noise model
    widget.adapt_panel.steps.value = 2
    adapt_and_wait(qtbot, widget)
    adapted = widget.weights.value
    assert adapted.startswith("adapted-spiky-") and adapted in widget.weights.choices, widget.status.value
    assert (user_folder() / adapted / "adaptation.json").is_file()
    assert widget.adapt_panel.button.text == "Adapt to this image" and widget.run_button.enabled
    assert np.array_equal(layer.data, original)
    widget.super_resolve.value = False
    run_and_wait(qtbot, widget, timeout=120_000)
    weights = viewer.layers["spiky denoised"].metadata["weights"]
    assert weights["name"] == adapted and weights["adapted_from"]["base"]["name"] == "etdms-sem-v2"


def test_cancel_adapting_writes_no_weights(spiky_layer, qtbot):
    from napari_etdms.weights import user_folder

    _, widget, _, _ = spiky_layer
    widget.adapt_panel.steps.value = 100_000  # far more than can end before the cancel below
    widget.adapt_panel.button.clicked()
    qtbot.waitUntil(lambda: widget.progress_bar.value >= 2, timeout=60_000)
    assert widget.adapt_panel.button.text == "Cancel" and not widget.run_button.enabled
    widget.adapt_panel.button.clicked()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.status.value == "adapting cancelled" and widget.weights.value == "tiny-test"
    assert not user_folder().exists() or list(user_folder().iterdir()) == []
    assert widget.adapt_panel.button.text == "Adapt to this image" and widget.run_button.enabled


def test_adapting_on_a_frame_too_small_says_why(setup, qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    _, widget, _, _ = setup  # a 40x48 frame
    adapt_and_wait(qtbot, widget)
    assert widget.status.value.startswith("error:") and "too small to adapt on" in widget.status.value
    assert widget.adapt_panel.button.text == "Adapt to this image" and not widget.running


def test_all_slices_of_a_stack_file_go_to_3d_ome_zarr_and_a_rerun_resumes(setup, qtbot, tmp_path, monkeypatch):
    pytest.importorskip("ome_zarr", reason="the zarr extra is part of the test extra")
    from napari_etdms.engine import Pipeline
    from napari_etdms.io import VolumeStore
    from napari_etdms.plugin.reader import read_sem

    viewer, widget, _, _ = setup
    source = tmp_path / "stack.ome.zarr"
    store = VolumeStore(source)
    store.create((3, 24, 28), pixel_size_nm=4.0, z_spacing_nm=10.0, record={"layer": "input"})
    for z in range(3):
        store.write_slice(z, sem_like((24, 28), np.uint16, seed=z))
    [(data, kwargs, _)] = read_sem(str(source))
    layer = viewer.add_image(data, **kwargs)
    widget.image.value = layer
    shown = lambda: not widget.stack_output.native.isHidden()  # noqa: E731  (the viewer itself is not shown)
    assert not shown()  # the current slice runs in memory, as before
    widget.slices.value = "all slices"
    assert shown() and widget.stack_output.value == tmp_path / "stack-etdms"
    assert widget.stack_output.line_edit.tooltip == str(tmp_path / "stack-etdms")  # the whole path, where cut
    computed = []
    run_with = Pipeline.run_with
    monkeypatch.setattr(Pipeline, "run_with", lambda self, image, *a, **k: computed.append(1) or run_with(
        self, image, *a, **k))
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("done"), widget.status.value
    x4 = viewer.layers["stack ETDMS x4"]
    assert x4.data.shape == (3, 96, 112) and tuple(x4.scale) == pytest.approx((10.0, 1.0, 1.0))
    assert type(x4.data).__module__.startswith("dask")  # read lazily from its store
    assert VolumeStore(tmp_path / "stack-etdms" / "stack_etdms_x4.ome.zarr").completed() == {0, 1, 2}
    assert len(computed) == 3
    run_and_wait(qtbot, widget)  # everything complete: nothing is computed again
    assert len(computed) == 3 and widget.status.value.startswith("done")
