"""napari reader, writer and sample-data contributions (no Qt needed: layers are built headless)."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_etdms.io import ReadError, detect_databar, read_frame, read_provenance, write_tiff
from napari_etdms.io.tescan import parse_tescan_metadata
from napari_etdms.io.zeiss import zeiss_pixel_size_nm
from napari_etdms.plugin.reader import napari_get_reader, read_sem
from napari_etdms.plugin.sample_data import coating_sample, superalloy_sample
from napari_etdms.plugin.writer import write_sem_tiff

DATA = Path(__file__).parent / "data"
FEI = [("fei_bse_uint16_databar.tif", 65.1042), ("fei_lungcells_uint8_databar.tif", 134.896)]


def by_name(layers):
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layers}


def napari_layer(layer_data):
    """Build the napari layer headless: checks that napari 0.9 accepts the kwargs."""
    from napari.layers import Layer

    return Layer.create(*layer_data)


def scan_with_painted_bar(height=200, width=256, bar_rows=16, seed=0):
    """A noisy 8-bit scan (values 20..230) whose bottom rows are a black bar with white 'text'."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 231, size=(height, width), dtype=np.uint8)
    image[-bar_rows:] = 0
    image[-bar_rows + 3 : -3, 10:20] = 255  # a glyph: 10 of 256 pixels per row, bar rows stay > 90 % extreme
    image[-bar_rows + 5, 40:45] = 128  # an anti-aliased edge
    return image


def scan_with_zeiss_bar(height=200, width=256, bar_rows=40, seed=0, content=None):
    """A scan with SmartSEM's data zone painted over its bottom rows: a black line, a white
    panel with black text, a black strip with white text."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 231, size=(height, width), dtype=np.uint8) if content is None else content.copy()
    top = height - bar_rows
    image[top] = 0
    image[top + 1 : top + bar_rows // 2] = 255
    image[top + 6 : top + 12, 30:90:3] = 0  # text on the panel
    image[top + bar_rows // 2 :] = 0
    image[top + bar_rows // 2 + 4 : -4, 150:200:4] = 255  # text on the strip
    return image


def zeiss_tag(pixel_line="Image Pixel Size = 2.6 nm", unnamed_pixel_m=2.5e-9):
    """CZ_SEM (34118) text as SmartSEM writes it: unnamed values, then UPPERCASE keys and 'Name = value unit'."""
    lines = ["0", "0", "0", repr(unnamed_pixel_m), "0"]
    if pixel_line:
        lines += ["AP_IMAGE_PIXEL_SIZE", pixel_line]
    lines += ["AP_WD", "WD = 8.5 mm", "DP_DETECTOR_TYPE", "Signal A = SE2"]
    raw = ("\r\n".join(lines) + "\r\n").encode("cp1252")
    return (34118, "B", len(raw), raw, True)


def tescan_tag(pixel_size_m="1.5e-08"):
    text = f"[MAIN]\r\nDevice=MIRA3\r\nPixelSizeX={pixel_size_m}\r\nPixelSizeY={pixel_size_m}\r\n[SEM]\r\nHV=20000\r\n"
    raw = b"\x00\x01\x7f\xfebinary-header" + text.encode()
    return (50431, "B", len(raw), raw, True)


# --- napari_get_reader -------------------------------------------------------------------------


def test_get_reader_is_cheap_and_never_raises(tmp_path):
    assert napari_get_reader(str(tmp_path / "x.tif")) is read_sem  # need not exist: names only
    assert napari_get_reader(str(tmp_path / "x.TIFF")) is read_sem
    assert napari_get_reader(tmp_path / "x.png") is read_sem
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.png")]) is read_sem
    for bad in [str(tmp_path / "notes.txt"), str(tmp_path), [str(tmp_path / "a.tif"), "b.czi"], [], None, 3,
                [None], {"a": 1}, "image.jpg"]:
        assert napari_get_reader(bad) is None


def test_corrupt_and_missing_files_raise_read_error_from_the_reader_only(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    reader = napari_get_reader(str(bad))
    assert callable(reader)
    with pytest.raises(ReadError, match="bad.tif: cannot read image"):
        reader(str(bad))
    truncated = tmp_path / "truncated.tif"
    tifffile.imwrite(truncated, np.arange(60000, dtype=np.uint16).reshape(200, 300))
    truncated.write_bytes(truncated.read_bytes()[:80000])
    with pytest.raises(ReadError, match="corrupt or truncated"):
        read_sem(str(truncated))
    png = tmp_path / "bad.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ReadError, match="bad.png"):
        napari_get_reader(str(png))(str(png))
    with pytest.raises(ReadError, match="no such file"):
        read_sem(str(tmp_path / "missing.tif"))


# --- FEI/Thermo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, pixel_nm", FEI)
def test_fei_scale_from_metadata_and_databar_as_hidden_layer_below(name, pixel_nm):
    layers = read_sem(str(DATA / name))
    assert [kind for *_, kind in layers] == ["image", "image"]
    stem = Path(name).stem
    assert layers[-1][1]["name"] == stem  # scan image on top of the layer list, so it gets selected
    named = by_name(layers)
    scan, kwargs, _ = named[stem]
    bar, bar_kwargs, _ = named[f"{stem} databar"]

    assert scan.shape == (1024, 1536) and bar.shape == (79, 1536)
    assert np.array_equal(np.vstack([scan, bar]), tifffile.imread(DATA / name))  # nothing lost
    assert kwargs["scale"] == pytest.approx((pixel_nm, pixel_nm), rel=1e-4)
    assert kwargs["units"] == ("nm", "nm") and kwargs["axis_labels"] == ("y", "x")
    meta = kwargs["metadata"]
    assert meta["pixel_size_nm"] == pytest.approx(pixel_nm, rel=1e-4)
    assert meta["pixel_size_source"] == "FEI Scan/PixelWidth"
    assert meta["vendor"] == "FEI" and meta["fei"]["Scan"]["PixelWidth"] > 0
    assert meta["source_path"] == str(DATA / name)
    assert meta["databar"] is bar

    assert bar_kwargs["visible"] is False
    assert bar_kwargs["scale"] == kwargs["scale"] and bar_kwargs["units"] == ("nm", "nm")
    assert bar_kwargs["translate"] == pytest.approx((1024 * kwargs["scale"][0], 0.0))

    image_layer, bar_layer = napari_layer(layers[-1]), napari_layer(layers[0])
    assert [str(u) for u in image_layer.units] == ["nanometer", "nanometer"]
    # world coordinates: the bar's first row sits one pixel below the scan's last row
    last_scan_row = image_layer.data_to_world((1023, 0))[0]
    first_bar_row = bar_layer.data_to_world((0, 0))[0]
    assert first_bar_row - last_scan_row == pytest.approx(kwargs["scale"][0])
    assert not bar_layer.visible


# --- Zeiss -------------------------------------------------------------------------------------


def test_zeiss_pixel_size_and_painted_databar(tmp_path):
    image = scan_with_zeiss_bar(bar_rows=16)
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, image, extratags=[zeiss_tag()])
    named = by_name(read_sem(str(path)))
    scan, kwargs, _ = named["zeiss"]
    bar, bar_kwargs, _ = named["zeiss databar"]
    assert scan.shape == (184, 256) and bar.shape == (16, 256)
    assert np.array_equal(np.vstack([scan, bar]), image)
    assert kwargs["scale"] == pytest.approx((2.6, 2.6)) and kwargs["units"] == ("nm", "nm")
    meta = kwargs["metadata"]
    assert meta["vendor"] == "Zeiss" and meta["pixel_size_source"] == "Zeiss ap_image_pixel_size"
    assert meta["zeiss"]["dp_detector_type"] == ["Signal A", "SE2"]
    assert meta["databar_source"].startswith("painted Zeiss databar")
    assert bar_kwargs["translate"] == pytest.approx((184 * 2.6, 0.0))
    napari_layer((scan, kwargs, "image"))


@pytest.mark.parametrize("name, scan_rows, pixel_nm", [("zeiss_auriga_inlens_UB19_14_databar.tif", 676, 385.3),
                                                       ("zeiss_auriga_WF69_18_databar.tif", 676, 111.6),
                                                       ("zeiss_ultra55_bsd_rgb_databar.tif", 691, 223.3)])
def test_real_zeiss_files_lose_their_databar(name, scan_rows, pixel_nm):
    """SmartSEM files of two instruments (the InLens frame's rows above the bar are black)."""
    whole = tifffile.imread(DATA / name)
    frame = read_frame(DATA / name)
    assert frame.data.shape[0] == scan_rows and frame.pixel_size_nm == pytest.approx(pixel_nm)
    assert np.array_equal(np.concatenate([frame.data, frame.databar]), whole)  # nothing lost


@pytest.mark.parametrize("content", ["black", "white", "black bottom", "no bar"])
def test_zeiss_frames_without_a_databar_are_not_split(content, tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(20, 231, size=(200, 256), dtype=np.uint8)
    if content == "black":  # a cavity: nearly every pixel at the minimum
        image[:] = 0
        image[50:60, 50:60] = 255
    elif content == "white":  # charging: saturated
        image[:] = 255
        image[50:60, 50:60] = 0
    elif content == "black bottom":  # a dark region along the bottom, with white specks
        image[150:] = 0
        image[170:200:7, ::5] = 255
    path = tmp_path / "zeiss.tif"
    tifffile.imwrite(path, image, extratags=[zeiss_tag()])
    frame = read_frame(path)
    assert frame.databar is None and np.array_equal(frame.data, image)


def test_a_zeiss_bar_under_black_content_is_found():
    content = np.random.default_rng(2).integers(20, 231, size=(200, 256), dtype=np.uint8)
    content[120:] = 0  # the scan's bottom is black right down to the bar's black line
    image = scan_with_zeiss_bar(bar_rows=40, content=content)
    assert detect_databar(image) == 160


def test_zeiss_fallback_to_unnamed_value_and_micrometre_units(tmp_path):
    image = scan_with_painted_bar()
    fallback = tmp_path / "fallback.tif"
    tifffile.imwrite(fallback, image, extratags=[zeiss_tag(pixel_line=None, unnamed_pixel_m=2.5e-9)])
    frame = read_frame(fallback)
    assert frame.pixel_size_nm == pytest.approx(2.5 * 1024 / 256)  # rosettasciio: sem[''][3] * 1024 / width
    assert frame.metadata["pixel_size_source"].startswith("Zeiss CZ_SEM[''][3]")

    micro = tmp_path / "micro.tif"
    tifffile.imwrite(micro, image, extratags=[zeiss_tag(pixel_line="Image Pixel Size = 1.2 µm")])
    assert read_frame(micro).pixel_size_nm == pytest.approx(1200.0)


def test_zeiss_parsing_on_a_sem_metadata_dict():
    sem = {"": (0, 0, 0, 5e-9, 0), "ap_image_pixel_size": ("Image Pixel Size", 3.5, "nm")}
    assert zeiss_pixel_size_nm(sem, 1024) == [(3.5, "Zeiss ap_image_pixel_size"),
                                              (pytest.approx(5.0), "Zeiss CZ_SEM[''][3]*1024/width")]
    assert zeiss_pixel_size_nm({"ap_image_pixel_size": ("Image Pixel Size", "4.5nm")}, 512)[0][0] == 4.5
    assert zeiss_pixel_size_nm({"ap_image_pixel_size": ("Image Pixel Size", -1.0, "nm")}, 512)[0][0] is None
    assert zeiss_pixel_size_nm({"": (0, 1)}, 512) == []


def test_painted_bar_is_only_looked_for_in_vendor_files(tmp_path):
    image = scan_with_painted_bar()
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image)
    layers = read_sem(str(path))
    assert len(layers) == 1 and np.array_equal(layers[0][0], image)


def test_detect_painted_databar_limits():
    image = scan_with_painted_bar(bar_rows=16)
    assert detect_databar(image) == 184
    assert detect_databar(scan_with_painted_bar(bar_rows=4)) is None  # < 3 % of the height
    assert detect_databar(scan_with_painted_bar(bar_rows=120)) is None  # > 1/3: a dark region
    assert detect_databar(np.zeros((50, 40), np.uint8)) is None  # uniform frame
    assert detect_databar(np.zeros((3, 50, 40), np.uint8)) is None  # stacks: never
    rgb = np.repeat(image[..., None], 3, axis=-1)
    assert detect_databar(rgb) == 184


# --- Tescan ------------------------------------------------------------------------------------


def test_tescan_ini_tag(tmp_path):
    image = scan_with_painted_bar(bar_rows=12)
    path = tmp_path / "tescan.tif"
    tifffile.imwrite(path, image, extratags=[tescan_tag()])
    named = by_name(read_sem(str(path)))
    scan, kwargs, _ = named["tescan"]
    assert kwargs["scale"] == pytest.approx((15.0, 15.0))
    meta = kwargs["metadata"]
    assert meta["vendor"] == "Tescan" and meta["pixel_size_source"] == "Tescan MAIN/PixelSizeX"
    assert meta["tescan"]["MAIN"]["Device"] == "MIRA3" and meta["tescan"]["SEM"]["HV"] == 20000
    assert np.array_equal(np.vstack([scan, named["tescan databar"][0]]), image)


def test_tescan_parser_inputs_and_errors():
    raw = tescan_tag()[3]
    assert parse_tescan_metadata(raw)["MAIN"]["PixelSizeX"] == pytest.approx(1.5e-8)
    assert parse_tescan_metadata(tuple(raw))["MAIN"]["PixelSizeY"] == pytest.approx(1.5e-8)
    with pytest.raises(ValueError, match="no INI sections"):
        parse_tescan_metadata(b"\x00\x01 no ini here")


def test_tescan_tag_without_ini_is_read_without_pixel_size(tmp_path):
    path = tmp_path / "odd.tif"
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    tifffile.imwrite(path, image, extratags=[(50431, "B", 4, b"\x00\x01\x02\x03", True)])
    frame = read_frame(path)
    assert frame.pixel_size_nm is None and frame.databar is None and np.array_equal(frame.data, image)
    assert "Tescan tag 50431" in frame.metadata["pixel_size_warning"]


# --- OME, ImageJ, plain TIFF, PNG --------------------------------------------------------------


@pytest.mark.parametrize("size, unit, expected_nm", [(0.25, "µm", 250.0), (7.5, "nm", 7.5), (0.5, None, 500.0)])
def test_ome_physical_size(tmp_path, size, unit, expected_nm):
    path = tmp_path / "ome.ome.tif"
    metadata = {"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit:
        metadata |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    tifffile.imwrite(path, image, ome=True, metadata=metadata)
    (data, kwargs, _), = read_sem(str(path))
    assert np.array_equal(data, image)
    assert kwargs["scale"] == pytest.approx((expected_nm, expected_nm)) and kwargs["units"] == ("nm", "nm")
    assert kwargs["name"] == "ome.ome"
    assert kwargs["metadata"]["pixel_size_source"] == "OME PhysicalSizeX"
    assert kwargs["metadata"]["ome"]["SizeX"] == 30


def test_imagej_resolution_and_unit(tmp_path):
    path = tmp_path / "ij.tif"
    image = np.arange(600, dtype=np.float32).reshape(20, 30)
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.04, 1 / 0.04), metadata={"unit": "um"})
    (data, kwargs, _), = read_sem(str(path))
    assert np.array_equal(data, image)
    assert kwargs["scale"] == pytest.approx((40.0, 40.0)) and kwargs["units"] == ("nm", "nm")
    assert kwargs["metadata"]["pixel_size_source"] == "ImageJ unit/XResolution"


def test_plain_tiff_and_png_open_with_scale_1_and_no_units(tmp_path):
    image = np.arange(1200, dtype=np.uint16).reshape(30, 40)
    tifffile.imwrite(tmp_path / "plain.tif", image, resolution=(72, 72))  # dpi is not a pixel size
    from PIL import Image

    Image.fromarray((image % 256).astype(np.uint8)).save(tmp_path / "plain.png")
    for name, expected in [("plain.tif", image), ("plain.png", (image % 256).astype(np.uint8))]:
        layers = read_sem(str(tmp_path / name))
        assert len(layers) == 1
        data, kwargs, kind = layers[0]
        assert kind == "image" and np.array_equal(data, expected)
        assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs
        assert kwargs["metadata"]["pixel_size_nm"] is None and kwargs["metadata"]["databar"] is None
        layer = napari_layer(layers[0])
        assert [str(u) for u in layer.units] == ["pixel", "pixel"]


def test_rgb_png_is_an_rgb_layer(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    (data, kwargs, _), = read_sem(str(tmp_path / "rgb.png"))
    assert np.array_equal(data, rgb) and kwargs["rgb"] is True and kwargs["scale"] == (1.0, 1.0)
    assert napari_layer((data, kwargs, "image")).rgb


def test_list_of_paths_gives_one_layer_per_frame(tmp_path):
    for k in range(2):
        tifffile.imwrite(tmp_path / f"f{k}.tif", np.full((8, 9), k, np.uint8))
    layers = napari_get_reader([str(tmp_path / "f0.tif"), str(tmp_path / "f1.tif")])(
        [str(tmp_path / "f0.tif"), str(tmp_path / "f1.tif")]
    )
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["f0", "f1"]


# --- stacks ------------------------------------------------------------------------------------


def test_multipage_tiff_opens_as_3d_stack(tmp_path):
    stack = np.arange(5 * 20 * 30, dtype=np.uint16).reshape(5, 20, 30)
    tifffile.imwrite(tmp_path / "plain_stack.tif", stack)
    (data, kwargs, _), = read_sem(str(tmp_path / "plain_stack.tif"))
    assert np.array_equal(data, stack)
    assert kwargs["scale"] == (1.0, 1.0, 1.0) and kwargs["axis_labels"] == ("z", "y", "x")
    assert "units" not in kwargs

    write_tiff(tmp_path / "ij_stack.tif", stack, 12.5, {"origin": "test"}, axes="TYX")
    layers = read_sem(str(tmp_path / "ij_stack.tif"))
    assert len(layers) == 1  # no databar split for stacks
    data, kwargs, _ = layers[0]
    assert np.array_equal(data, stack)
    assert kwargs["scale"] == pytest.approx((1.0, 12.5, 12.5))
    assert kwargs["units"] == ("pixel", "nm", "nm") and kwargs["axis_labels"] == ("t", "y", "x")
    assert kwargs["metadata"]["provenance"] == {"origin": "test"}
    layer = napari_layer(layers[0])
    assert layer.ndim == 3 and list(layer.axis_labels) == ["t", "y", "x"]


def test_multipage_fei_like_stack_is_not_split(tmp_path):
    # FEI metadata on a multi-page file: pages stay whole (no databar split for 3D data)
    with tifffile.TiffFile(DATA / "fei_lungcells_uint8_databar.tif") as tif:
        tag = tif.pages[0].tags[34682]  # tifffile parses it; copy the raw INI text
        tif.filehandle.seek(tag.valueoffset)
        fei_text = tif.filehandle.read(tag.count).rstrip(b"\x00")
    stack = np.stack([tifffile.imread(DATA / "fei_lungcells_uint8_databar.tif")] * 2)
    path = tmp_path / "fei_stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", extratags=[(34682, "s", 0, fei_text, True)])
    frame = read_frame(path)
    assert frame.data.shape == (2, 1103, 1536) and frame.databar is None
    assert frame.pixel_size_nm == pytest.approx(134.896, rel=1e-4)


# --- writer ------------------------------------------------------------------------------------


def test_writer_round_trip_of_a_fei_layer_via_napari_state(tmp_path):
    layers = read_sem(str(DATA / "fei_bse_uint16_databar.tif"))
    layer = napari_layer(layers[-1])
    data, meta, _ = layer.as_layer_data_tuple()  # what napari hands to a writer (pint units included)
    out = tmp_path / "saved.tif"
    assert write_sem_tiff(str(out), data, meta) == [str(out)]

    (back, kwargs, _), = read_sem(str(out))  # the databar is not part of the layer: none comes back
    assert np.array_equal(back, layer.data) and back.dtype == np.uint16
    assert kwargs["scale"] == pytest.approx(tuple(layer.scale), rel=1e-6)
    assert kwargs["units"] == ("nm", "nm")
    provenance = kwargs["metadata"]["provenance"]
    assert provenance["layer_name"] == "fei_bse_uint16_databar"
    assert provenance["fei"]["Scan"]["PixelWidth"] == pytest.approx(6.51042e-08)
    assert provenance["source_path"].endswith("fei_bse_uint16_databar.tif")
    assert "databar" not in provenance  # arrays are left out
    assert provenance["layer_units"] == ["nm", "nm"]


@pytest.mark.parametrize("units, scale, expected_nm", [
    (("um", "um"), (0.02, 0.02), 20.0), (("µm", "µm"), (0.02, 0.02), 20.0), (("nm", "nm"), (3.0, 3.0), 3.0),
    (("pixel", "pixel"), (3.0, 3.0), None), (None, (3.0, 3.0), None),
])
def test_writer_pixel_size_from_scale_and_units(tmp_path, units, scale, expected_nm):
    data = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    meta = {"name": "result", "scale": scale, "metadata": {"arr": np.zeros(3), "k": np.int64(2), "ok": (1, "a")}}
    if units is not None:
        meta["units"] = units
    out = tmp_path / "w.tif"
    write_sem_tiff(str(out), data, meta)
    info = read_provenance(out)
    assert np.array_equal(tifffile.imread(out), data)
    if expected_nm is None:
        assert info["pixel_size_nm"] is None
        assert by_name(read_sem(str(out)))["w"][1]["scale"] == (1.0, 1.0)
    else:
        assert info["pixel_size_nm"] == pytest.approx(expected_nm, rel=1e-6)
    assert info["provenance"]["k"] == 2 and info["provenance"]["ok"] == [1, "a"] and "arr" not in info["provenance"]
    assert info["provenance"]["layer_name"] == "result" and info["provenance"]["layer_scale"] == list(scale)


def test_writer_replaces_existing_file_atomically(tmp_path):
    out = tmp_path / "result.tif"
    first = np.zeros((8, 8), np.uint8)
    second = np.full((10, 6), 7, np.uint8)
    write_sem_tiff(str(out), first, {"name": "a", "scale": (1, 1)})
    write_sem_tiff(str(out), second, {"name": "b", "scale": (2.0, 2.0), "units": ("nm", "nm")})
    assert np.array_equal(tifffile.imread(out), second)
    assert read_provenance(out)["provenance"]["layer_name"] == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["result.tif"]  # no temp files left
    with pytest.raises(FileExistsError):  # the library default still refuses
        write_tiff(out, first, None, {})
    write_tiff(out, first, None, {}, overwrite=True)
    assert np.array_equal(tifffile.imread(out), first)


def test_writer_3d_and_non_imagej_dtypes_round_trip(tmp_path):
    stack = np.random.default_rng(0).random((4, 10, 12))  # float64: ImageJ cannot hold it, kept unchanged
    meta = {"name": "stack", "scale": (1.0, 2.5, 2.5), "units": ("pixel", "nm", "nm"), "axis_labels": ("z", "y", "x")}
    out = tmp_path / "stack.tif"
    write_sem_tiff(str(out), stack, meta)
    (back, kwargs, _), = read_sem(str(out))
    assert back.dtype == np.float64 and np.array_equal(back, stack)
    assert kwargs["scale"] == pytest.approx((1.0, 2.5, 2.5)) and kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["metadata"]["provenance"]["layer_name"] == "stack"

    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgb_meta = {"name": "rgb", "rgb": True, "scale": (5.0, 5.0), "units": ("nm", "nm")}
    write_sem_tiff(str(tmp_path / "rgb.tif"), rgb, rgb_meta)
    (back, kwargs, _), = read_sem(str(tmp_path / "rgb.tif"))
    assert np.array_equal(back, rgb) and kwargs["rgb"] is True and kwargs["scale"] == pytest.approx((5.0, 5.0))


def test_writer_refuses_unsupported_shapes(tmp_path):
    with pytest.raises(ValueError, match="2D, 3D or RGB only"):
        write_sem_tiff(str(tmp_path / "x.tif"), np.zeros((2, 2, 4, 4)), {"scale": (1, 1, 1, 1)})
    assert not (tmp_path / "x.tif").exists()


# --- sample data -------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, shape", [(superalloy_sample, (512, 512)), (coating_sample, (1024, 1024))])
def test_sample_data(factory, shape):
    (data, kwargs), = factory()
    assert data.shape == shape and data.dtype == np.uint8
    assert kwargs["metadata"]["licence"] == "MIT (NASA pretrained-microscopy-models, Stuckner et al.)"
    assert Path(kwargs["metadata"]["source"]).is_file()
    assert kwargs["name"]
