"""napari contributions (reader, writer, sample data, widget); thin wrappers over `napari_etdms.io`."""
