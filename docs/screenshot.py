"""Screenshot of napari with the ETDMS widget and its results on the bundled sample.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshot.py docs/screenshot.png

In napari's default window size (about 1090 x 640 px), opens the superalloy sample, runs
the shipped weights on a 96x96 px region (a rectangle in a Shapes layer, as a CPU user
would preview), and presses Compare: the input, denoised, ETDMS x4 and bicubic x4 side by
side in napari's grid, each panel named and with its scale bar, all framed on the region
by the one linked camera; the dock beside the canvas.
"""

import os
import sys
import tempfile
import time

import napari
from qtpy.QtWidgets import QApplication

WINDOW = (1090, 640)  # napari's default window on a first start (px)


def main(out: str) -> None:
    # the widget's defaults, not settings persisted by earlier sessions on this machine
    os.environ["NAPARI_ETDMS_CONFIG_DIR"] = tempfile.mkdtemp()
    viewer = napari.Viewer(show=True, title="napari-etdms")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-etdms", "superalloy")
    sample = viewer.layers[-1]
    _, widget = viewer.window.add_plugin_dock_widget("napari-etdms", "ETDMS")
    roi = viewer.add_shapes([[[208, 208], [303, 303]]], shape_type="rectangle", edge_color="yellow",
                            face_color="transparent", edge_width=2, name="region")
    widget.image.value = sample
    widget.region.value = "shapes rectangle"
    widget.shapes.value = roi
    widget.run()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.05)
    QApplication.processEvents()
    widget.compare_button.clicked()
    viewer.layers.selection.active = viewer.layers[f"{sample.name} ETDMS x4"]
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(out, canvas_only=False)
    print(f"wrote {out}; status: {widget.status.value}")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png")
