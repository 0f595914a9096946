"""Databars: the strip of text and scale bar under the scan area. FEI/Thermo append it below
the rows their metadata names (`fei.fei_scan_rows`); Zeiss SmartSEM and Tescan paint it into the
frame, found here from what every layout shares."""

from __future__ import annotations

import math

import numpy as np


def split_databar(image: np.ndarray, scan_rows: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a frame into (scan area, databar) given the number of scan rows."""
    if scan_rows is None or scan_rows >= image.shape[0]:
        return image, None
    return image[:scan_rows], image[scan_rows:]



# --- databars painted into the frame (Zeiss SmartSEM, Tescan) ----------------------------------
# Grey values here are fractions of the frame's own grey range, so 8-bit, 16-bit and float frames
# are judged alike. Painted bars are exact; the tolerance leaves room for compression and resampling.
LEVEL_TOLERANCE = 0.04  # two values this close are the same level
UNIFORM_ROW = 0.97  # share of a frame line's (or blank panel margin's) pixels at its median; side borders differ
EDGE_COLUMNS = 0.9  # share of the columns that change level across a full-width edge
MIN_LEVEL_CONTRAST = 0.5  # between the panel's background and text levels: painted text is legible
MIN_ON_LEVELS = 0.75  # share of the panel at its two levels; SmartSEM's last strip may overlay ~16 image rows
MIN_TEXT_SHARE = 0.005  # share of the panel at its second (text) level
# glyph edges (level changes along a row that go on in the next row) per column of the panel: text has
# 1 to 5 (real SmartSEM and FEI bars: 2.6 to 3.4), scattered specks (dust, charging dots) next to none
MIN_GLYPH_EDGES_PER_COLUMN = 1 / 32
LEVEL_BINS = 100  # histogram bins over the grey range, for finding the panel's two levels


def _as_grey(image: np.ndarray) -> np.ndarray | None:
    """A 2D frame as is, an RGB(A) frame as the mean of its colour channels, else (stacks) None."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].mean(axis=-1, dtype=np.float32)
    return image if image.ndim == 2 else None


def _painted_panels(window: np.ndarray, tops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether each panel `window[top:]` (grey in [0, 1]) looks painted: essentially two levels, the second
    one (text) present, with glyph edges; and the histogram bins of its background and text levels."""
    n, width = window.shape
    # histograms of the panels below every row at once: row histograms summed from the bottom up
    bins = np.minimum((window * LEVEL_BINS).astype(np.intp), LEVEL_BINS - 1)
    row_hist = np.bincount((bins + LEVEL_BINS * np.arange(n)[:, None]).ravel(), minlength=n * LEVEL_BINS)
    panel_hist = np.cumsum(row_hist.reshape(n, LEVEL_BINS)[::-1], axis=0)[::-1][tops]
    reach = round(LEVEL_TOLERANCE * LEVEL_BINS)
    padded = np.pad(panel_hist, ((0, 0), (reach, reach)))
    near = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=1).sum(axis=-1)  # at a level
    background = panel_hist.argmax(axis=1)  # the most common level, then the most common one far from it
    far = np.abs(np.arange(LEVEL_BINS) - background[:, None]) >= MIN_LEVEL_CONTRAST * LEVEL_BINS
    text = np.where(far, panel_hist, -1).argmax(axis=1)
    each = np.arange(tops.size)
    pixels = (n - tops) * width
    glyph_side = np.abs(np.diff(window, axis=1)) > MIN_LEVEL_CONTRAST / 2
    glyph_edges = np.count_nonzero(glyph_side[:-1] & glyph_side[1:], axis=1)
    glyph_edges_below = np.append(np.cumsum(glyph_edges[::-1])[::-1], 0)[tops]
    painted = (
        (near[each, background] + near[each, text] >= MIN_ON_LEVELS * pixels)
        & (near[each, text] >= MIN_TEXT_SHARE * pixels)
        & (glyph_edges_below >= MIN_GLYPH_EDGES_PER_COLUMN * width)
    )
    return painted, background, text


def detect_databar(image: np.ndarray, max_fraction: float = 0.25, min_fraction: float = 0.03) -> int | None:
    """Scan rows above a databar painted over the bottom of the frame (Zeiss SmartSEM, Tescan), or None.

    Every layout starts at a full-width straight edge onto a uniform row (its frame line or the panel's
    blank margin), below which the panel is essentially two grey levels (background, text) with glyph
    edges; the topmost such edge in the bottom `max_fraction` of the frame marks the bar, which must be
    at least `min_fraction` of the height. A long uniform block that ends on another full-width edge is
    flat image (a black scan, vacuum) over the bar, not its panel. Uniform rows just above the edge are
    the bar's frame line when thin; when they run on at a panel level (a black scan over SmartSEM's black
    line), the line is hidden and taken as SmartSEM draws it. A dark, bright or flat-noisy bottom has no
    second level or no glyphs, and textured image (a wafer edge included) has no uniform rows: neither is cut.
    """
    grey = _as_grey(image)
    if grey is None or grey.shape[0] < 8:
        return None
    height, width = grey.shape
    lo, hi = float(grey.min()), float(grey.max())
    if not lo < hi:
        return None
    window_top = height - math.floor(max_fraction * height)
    min_rows = max(2, math.ceil(min_fraction * height))
    frame_line_rows = max(2, height // 200)  # thicker uniform runs are image or a panel's blank margin
    slab_top = max(0, window_top - frame_line_rows - 1)  # the window, and room for a frame line above it
    rows = (grey[slab_top:].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    n_rows, in_window = rows.shape[0], window_top - slab_top

    # per row: its level, whether it is uniform, whether a full-width edge opens it (on a uniform row)
    level = np.median(rows, axis=1)
    uniform = (np.abs(rows - level[:, None]) <= LEVEL_TOLERANCE).mean(axis=1) >= UNIFORM_ROW
    changes = (np.abs(np.diff(rows, axis=0)) > LEVEL_TOLERANCE).mean(axis=1) >= EDGE_COLUMNS
    opens = np.zeros_like(uniform)
    opens[1:] = uniform[1:] & changes
    tops = in_window + np.flatnonzero(opens[in_window : n_rows - min_rows + 1])
    # the uniform block each top opens (rows of its level) and the row after it
    goes_on = uniform[:-1] & uniform[1:] & (np.abs(np.diff(level)) <= LEVEL_TOLERANCE)
    block_ends = np.append(np.flatnonzero(~goes_on), n_rows - 1)
    after = block_ends[np.searchsorted(block_ends, tops)] + 1
    flat_image = (after - tops > frame_line_rows) & (after < n_rows) & opens[np.minimum(after, n_rows - 1)]
    tops = tops[~flat_image]
    if tops.size == 0:
        return None
    painted, background, text = _painted_panels(rows[in_window:], tops - in_window)
    if not painted.any():
        return None
    first = int(np.argmax(painted))
    edge = int(tops[first])

    # uniform rows of one shade directly above the edge: the bar's frame line, or image hiding it
    above = slice(max(0, edge - frame_line_rows - 1), edge)
    same = (uniform[above] & (np.abs(level[above] - level[edge - 1]) <= LEVEL_TOLERANCE))[::-1]  # upwards
    run = int(np.argmin(same)) if not same.all() else same.size
    if 0 < run <= frame_line_rows:  # a frame line whose top edge is too faint against the image
        edge -= run
    elif run > frame_line_rows and not opens[edge + 1 : edge + frame_line_rows + 1].any():
        # the edge opens the panel itself, not a frame line: image at a panel level hides the line over it,
        # taken as SmartSEM draws it, a row per 1024 columns (its bars scale with the store resolution)
        shade = min(int(level[edge - 1] * LEVEL_BINS), LEVEL_BINS - 1)
        if min(abs(shade - background[first]), abs(shade - text[first])) <= round(LEVEL_TOLERANCE * LEVEL_BINS):
            edge -= max(1, round(width / 1024))
    return slab_top + edge
