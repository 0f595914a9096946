"""`python -m napari_etdms.cli`, as the `etdms` command."""
import sys

from napari_etdms.cli import main

sys.exit(main())
