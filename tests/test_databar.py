"""Databar detection for every painted layout (Zeiss SmartSEM, Tescan): synthetic layouts drawn with text
and a scale bar over dark, bright and textured content, frames without a bar, and the raw vendor files."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from napari_etdms.io import detect_databar, read_frame

DATA = Path(__file__).parent / "data"
SIZES = {"1024x768": (768, 1024), "2048x1536": (1536, 2048)}
# bar rows per layout and frame height; (c) scales with the store resolution as SmartSEM does
BAR_ROWS = {"a": {768: 56, 1536: 80}, "b": {768: 64, 1536: 76}, "c": {768: 83, 1536: 166}}


# --- frames ------------------------------------------------------------------------------------


def sem_content(shape, kind, seed=0):
    """SEM-like content in [0, 1]: Gaussian-filtered noise (grains, texture) plus shot noise, at a dark,
    bright or mid ('textured': two scales and bright particles) grey."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 6)
    smooth /= smooth.std()
    shot = rng.standard_normal(shape, dtype=np.float32)
    if kind == "dark":
        frame = 0.12 + 0.05 * smooth + 0.02 * shot
    elif kind == "bright":
        frame = 0.82 + 0.05 * smooth + 0.02 * shot
    elif kind == "textured":
        fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.5)
        frame = 0.45 + 0.12 * smooth + 0.25 * fine / fine.std() + 0.04 * shot
        ys, xs = rng.integers(0, shape[0], 60), rng.integers(0, shape[1], 60)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        for y, x in zip(ys, xs):  # bright particles
            frame[(yy - y) ** 2 + (xx - x) ** 2 <= 25] = 0.9
    else:
        raise ValueError(kind)
    return np.clip(frame, 0, 1)


def font(size):
    return ImageFont.load_default(size=size)


def scale_bar(draw, x, y, length, thick, label, fill, size):
    """A labelled scale bar with end ticks, as SmartSEM draws it."""
    draw.text((x, y), label, fill=fill, font=font(size))
    top = y + size + 2
    draw.rectangle([x, top, x + length, top + thick], fill=fill)
    draw.rectangle([x, top - thick, x + thick, top + 2 * thick], fill=fill)
    draw.rectangle([x + length - thick, top - thick, x + length, top + 2 * thick], fill=fill)


def databar(layout, rows, width):
    """One painted bar (grey in [0, 1], drawn black on white or white on black) of the three SmartSEM
    layouts seen in the issue."""
    s = width / 1024  # layouts scale with the store resolution
    line = max(1, round(2 * s))
    small = round(12 * s)
    if layout == "a":  # black panel, white text and scale bar, under a thin light line
        bar = Image.new("L", (width, rows), 0)
        d = ImageDraw.Draw(bar)
        d.rectangle([0, 0, width - 1, line - 1], fill=200)
        fields = [["UB19_14.tif", "EHT = 5.00 kV", "WD = 8.5 mm"],
                  ["Store resolution = 1024 x 768", "Signal A = InLens", "Mag = 10.00 K X"]]
        for column, texts in enumerate(fields):
            for k, text in enumerate(texts):
                d.text((round((10 + 230 * column) * s), line + round((5 + 16 * k) * s)), text, fill=255,
                       font=font(small))
        scale_bar(d, round(600 * s), line + round(8 * s), round(200 * s), line, "2 um", 255, small)
    elif layout == "b":  # white panel framed by black lines, black text, a lab logo at the right
        bar = Image.new("L", (width, rows), 255)
        d = ImageDraw.Draw(bar)
        d.rectangle([0, 0, width - 1, rows - 1], outline=0, width=line)
        d.line([(round(700 * s), 0), (round(700 * s), rows)], fill=0, width=line)
        texts = ["EHT = 15.00 kV   WD = 6.2 mm   Mag = 2.50 K X", "Signal A = SE2   Date: 4 Mar 2023",
                 "Photo No. = 1234   Aperture = 30.00 um"]
        for k, text in enumerate(texts):
            d.text((round(12 * s), line + round((4 + 16 * k) * s)), text, fill=0, font=font(small))
        scale_bar(d, round(480 * s), line + round(6 * s), round(150 * s), line, "10 um", 0, small)
        cx, cy, r = round(860 * s), rows // 2, rows // 2 - 3 * line  # the logo: a black disc with white letters
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
        d.text((cx - r // 2, cy - r // 3), "LAB", fill=255, font=font(round(r * 0.6)))
        d.polygon([(round(930 * s), cy + r), (round(960 * s), cy - r), (round(990 * s), cy + r)], fill=0)
    elif layout == "c":  # black panel framed by a white line, very large white text and a scale bar
        bar = Image.new("L", (width, rows), 0)
        d = ImageDraw.Draw(bar)
        d.rectangle([0, 0, width - 1, rows - 1], outline=255, width=line)
        big = round(rows * 0.42)
        d.text((round(16 * s), line + round(4 * s)), "Mag = 5.00 K X", fill=255, font=font(big))
        d.text((round(16 * s), line + round(4 * s) + big + 2), "WD = 8.5 mm", fill=255, font=font(big))
        scale_bar(d, round(640 * s), rows // 3, round(300 * s), 2 * line, "1 um", 255, big)
    else:
        raise ValueError(layout)
    return np.asarray(bar, dtype=np.float32) / 255


def frame_with_bar(layout, size, kind, seed=0):
    """(frame in [0, 1], scan rows): the bar painted over the content's bottom rows."""
    height, width = SIZES[size]
    rows = BAR_ROWS[layout][height]
    frame = sem_content((height, width), kind, seed)
    frame[height - rows :] = databar(layout, rows, width)
    return frame, height - rows


def stored(frame, dtype):
    """The frame as a TIFF would hold it: 8-bit, 16-bit, or grey stored as RGB (three equal channels)."""
    if dtype == "uint16":
        return np.round(frame * 65535).astype(np.uint16)
    grey = np.round(frame * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1) if dtype == "rgb" else grey


def zeiss_tag(pixel_nm=2.6):
    """A minimal CZ_SEM (34118) tag as SmartSEM writes it: unnamed values, then 'Name = value unit'."""
    raw = ("\r\n".join(["0", "0", "0", "0", "0", "AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {pixel_nm} nm"])
           + "\r\n").encode("cp1252")
    return (34118, "B", len(raw), raw, True)


def tescan_tag(pixel_size_m="1.5e-08"):
    text = f"[MAIN]\r\nDevice=MIRA3\r\nPixelSizeX={pixel_size_m}\r\nPixelSizeY={pixel_size_m}\r\n"
    raw = b"\x00\x01binary-header" + text.encode()
    return (50431, "B", len(raw), raw, True)


# --- bars are found ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dark", "bright", "textured"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_each_layout_is_cut_at_its_top_edge(layout, size, kind):
    frame, scan_rows = frame_with_bar(layout, size, kind)
    cut = detect_databar(stored(frame, "uint8"))
    assert cut is not None and abs(cut - scan_rows) <= 2, (cut, scan_rows)


@pytest.mark.parametrize("dtype", ["uint16", "rgb"])
@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_16_bit_and_rgb_frames_are_cut_like_8_bit(layout, dtype):
    frame, scan_rows = frame_with_bar(layout, "2048x1536", "textured", seed=3)
    assert abs(detect_databar(stored(frame, dtype)) - scan_rows) <= 2


@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_a_resampled_jpeg_or_noisy_bar_is_found(layout):
    """Nearly two levels is enough: a bar shrunk with its frame, saved as JPEG, or with noise added."""
    frame, scan_rows = frame_with_bar(layout, "2048x1536", "textured", seed=8)
    image = stored(frame, "uint8")
    half = np.asarray(Image.fromarray(image).resize((1024, 768), Image.BOX))
    assert abs(detect_databar(half) - scan_rows / 2) <= 2
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, "JPEG", quality=90)
    assert abs(detect_databar(np.asarray(Image.open(jpeg))) - scan_rows) <= 2
    noisy = np.clip(image + np.random.default_rng(8).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    assert abs(detect_databar(noisy) - scan_rows) <= 2


@pytest.mark.parametrize("block", ["tall", "short"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("layout, shade", [("b", 0.0), ("c", 1.0), ("a", 0.0), ("a", 1.0)])
def test_a_bar_under_flat_image_is_cut_at_its_own_top(layout, shade, size, block):
    """A straight-edged flat block of image (vacuum, a cavity, saturation) over the bar, tall (its top above
    the bottom quarter) or short (inside it): it stays image. Where it has the shade of the bar's frame line
    (layouts b, c) it hides the line's top edge and the cut lands within the line's thickness."""
    frame, scan_rows = frame_with_bar(layout, size, "textured", seed=4)
    rows = frame.shape[0] // (3 if block == "tall" else 40)
    frame[scan_rows - rows : scan_rows] = shade
    assert abs(detect_databar(stored(frame, "uint8")) - scan_rows) <= 2


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "rgb"])
@pytest.mark.parametrize("layout", ["a", "b", "c"])
def test_read_frame_splits_every_layout_of_a_zeiss_file(layout, dtype, tmp_path):
    frame, scan_rows = frame_with_bar(layout, "1024x768", "textured", seed=5)
    image = stored(frame, dtype)
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, image, extratags=[zeiss_tag()])
    read = read_frame(path)
    assert read.pixel_size_nm == pytest.approx(2.6)
    assert abs(read.data.shape[0] - scan_rows) <= 2
    assert read.metadata["databar_source"].startswith("painted Zeiss databar")
    assert np.array_equal(np.concatenate([read.data, read.databar]), image)  # nothing lost


def test_read_frame_splits_a_tescan_file_with_the_same_detector(tmp_path):
    frame, scan_rows = frame_with_bar("c", "1024x768", "dark", seed=6)
    path = tmp_path / "tescan.tif"
    tifffile.imwrite(path, stored(frame, "uint8"), extratags=[tescan_tag()])
    read = read_frame(path)
    assert abs(read.data.shape[0] - scan_rows) <= 2 and read.pixel_size_nm == pytest.approx(15.0)
    assert read.metadata["databar_source"].startswith("painted Tescan databar")


# --- frames without a bar are kept whole --------------------------------------------------------


def no_bar_frame(case, size):
    height, width = SIZES[size]
    rng = np.random.default_rng(7)
    frame = sem_content((height, width), "textured", seed=7)
    bottom = height - height // 6
    if case in ("dark bottom", "bright bottom"):  # a cavity or charging, straight-edged, with specks
        flat, speck = (0.0, 1.0) if case == "dark bottom" else (1.0, 0.0)
        frame[bottom:] = flat
        ys, xs = rng.integers(bottom, height, 400), rng.integers(0, width, 400)
        frame[ys, xs] = speck
    elif case in ("dark bottom, wavy", "bright bottom, wavy"):  # clipped below a wavy boundary, with particles
        flat, blob = (0.0, 1.0) if case.startswith("dark") else (1.0, 0.0)
        boundary = bottom + 12 * np.sin(np.arange(width) / width * 9)
        frame[np.arange(height)[:, None] >= boundary[None, :]] = flat
        yy, xx = np.ogrid[:height, :width]
        for y, x in zip(rng.integers(bottom + 15, height, 30), rng.integers(0, width, 30)):
            frame[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = blob
    elif case == "wafer edge":  # a sharp full-width step, textured image above and below
        frame[bottom:] = np.clip(frame[bottom:] + 0.35, 0, 1)
        frame[:bottom] = np.clip(frame[:bottom] - 0.25, 0, 1)
    elif case in ("flat noisy bottom", "flat, very noisy bottom"):  # a straight-edged flat region with noise
        noise = 0.012 if case == "flat noisy bottom" else 0.06
        frame[bottom:] = 0.4 + noise * rng.standard_normal((height - bottom, width))
    elif case == "bar-like panel over half the frame":  # two levels and text, but far too tall for a databar
        tall = height // 2
        frame[height - tall :] = databar("c", tall, width)
    elif case != "plain":
        raise ValueError(case)
    return np.clip(frame, 0, 1)


NO_BAR = ["dark bottom", "bright bottom", "dark bottom, wavy", "bright bottom, wavy", "wafer edge",
          "flat noisy bottom", "flat, very noisy bottom", "bar-like panel over half the frame", "plain"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", NO_BAR)
def test_frames_without_a_bar_are_not_cut(case, size):
    assert detect_databar(stored(no_bar_frame(case, size), "uint8")) is None


@pytest.mark.parametrize("case", ["dark bottom", "wafer edge", "flat noisy bottom"])
def test_zeiss_files_without_a_bar_are_read_whole(case, tmp_path):
    image = stored(no_bar_frame(case, "1024x768"), "uint16")
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, image, extratags=[zeiss_tag()])
    read = read_frame(path)
    assert read.databar is None and "databar_source" not in read.metadata
    assert np.array_equal(read.data, image)


# --- raw vendor files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, scan_rows", [("zeiss_auriga_inlens_UB19_14_databar.tif", 676),
                                             ("zeiss_auriga_WF69_18_databar.tif", 676),
                                             ("zeiss_ultra55_bsd_rgb_databar.tif", 691)])
def test_real_zeiss_files_keep_their_cut(name, scan_rows):
    """Two Auriga frames (black line over a white panel; one's scan is black down to the line, the other's
    last strip overlays 16 image rows) and an Ultra 55 frame stored as RGB with a coloured logo."""
    read = read_frame(DATA / name)
    assert read.data.shape[0] == scan_rows and detect_databar(tifffile.imread(DATA / name)) == scan_rows
    assert read.metadata["databar_source"].startswith("painted Zeiss databar")


@pytest.mark.parametrize("name", ["fei_bse_uint16_databar.tif", "fei_lungcells_uint8_databar.tif"])
def test_fei_files_keep_their_metadata_cut_which_the_detector_agrees_with(name):
    read = read_frame(DATA / name)
    assert read.metadata["databar_source"] == "FEI Image/ResolutionY"
    rows = read.metadata["fei"]["Image"]["ResolutionY"]
    assert read.data.shape[0] == rows == 1024
    assert detect_databar(tifffile.imread(DATA / name)) == rows  # its white line over a black panel


# --- speed ---------------------------------------------------------------------------------------


def test_detection_on_a_2048x1536_frame_is_fast():
    frame, scan_rows = frame_with_bar("c", "2048x1536", "textured")
    image = stored(frame, "uint16")
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        cut = detect_databar(image)
        seconds.append(time.perf_counter() - start)
    assert cut == scan_rows and min(seconds) < 0.25  # about 20 ms on one core
