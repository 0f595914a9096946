"""Sharing what was trained beyond napari-etdms: stage 1 as a bioimage.io model (`bioimageio`)."""

from napari_etdms.export.bioimageio import ExportError, export_model

__all__ = ["ExportError", "export_model"]
