"""Files as sets: listing a batch's inputs, writing outputs all or nothing (temporaries
published in one step), and clearing what a killed run left behind."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from napari_etdms.io.frame import IMAGE_SUFFIXES, ZARR_SUFFIX
from napari_etdms.io.read import read_provenance


def iter_image_files(inputs: list[str | os.PathLike], skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Expand files and folders (non-recursive) into a sorted list of image files (and
    OME-Zarr folders); `skip` leaves files of folders out (inputs named one by one are
    always kept)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir() and item.suffix.lower() != ZARR_SUFFIX:
            files.extend(sorted(p for p in item.iterdir() if _is_image(p) and not (skip and skip(p))))
        else:
            files.append(item)
    return files


def _is_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    return (suffix in IMAGE_SUFFIXES and path.is_file()) or (suffix == ZARR_SUFFIX and path.is_dir())


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: setting it to read it is not thread-safe


def write_file_atomically(path: str | os.PathLike, write: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """`write(temporary_path)` beside `path`, then publish it under `path` in one step, so the file
    appears only once complete. An existing file is never replaced unless `overwrite` is true."""
    return write_files_atomically({path: write}, overwrite=overwrite)[0]


TEMPORARY_SUFFIX = ".part"


def write_files_atomically(writes: dict[str | os.PathLike, Callable[[str], None]], *,
                           overwrite: bool = False, folders: bool = False) -> list[Path]:
    """A set of files, all or nothing: each `write(temporary_path)` runs on a hidden temporary
    beside its file; only when every one is complete are they published, each in one step.
    Without `overwrite`, an existing file refuses the whole set before anything is written,
    and a failure while publishing removes the files this set had published. With it, each
    file is swapped in by one `os.replace` (readers see the old or the new file, never a
    partial one). New files follow the umask.

    With `folders`, each output is a folder (an OME-Zarr image), its temporary an empty
    folder to fill. A folder cannot replace another in one step: with `overwrite` the old one
    is renamed aside first, and removed once the new one is in place."""
    paths = [Path(p) for p in writes]
    if not overwrite:
        for path in paths:
            if path.exists():
                raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    temporaries: dict[Path, str] = {}
    published: list[Path] = []
    try:
        for path, write in zip(paths, writes.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
            if folders:
                tmp = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
                os.chmod(tmp, 0o777 & ~_UMASK)
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
                os.close(fd)
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; a new file follows the umask
            temporaries[path] = tmp
            write(tmp)
        for path, tmp in temporaries.items():
            if folders:
                _publish_folder(tmp, path, overwrite)
            elif overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if path appeared meanwhile, unlike os.replace
            published.append(path)
    except BaseException:
        if not overwrite:
            for path in published:
                remove_file_or_folder(path)
        raise
    finally:
        for tmp in temporaries.values():
            remove_file_or_folder(Path(tmp))
    return paths


def _publish_folder(tmp: str, path: Path, overwrite: bool) -> None:
    if not path.exists():
        os.rename(tmp, path)  # fails if a non-empty folder appeared meanwhile
        return
    if not overwrite:  # it appeared since the check: another run's
        raise FileExistsError(f"{path}: exists already; refusing to overwrite")
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
    os.rmdir(aside)  # only its unique name is wanted: renaming onto a folder fails on Windows
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)  # the old output back in place
        raise
    remove_file_or_folder(aside)


def remove_file_or_folder(path: Path) -> None:
    """A file or a whole folder (an OME-Zarr image); nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike, older_than_s: float = 600.0) -> list[Path]:
    """Remove the temporaries that `write_files_atomically` left beside `path` when its process
    was killed mid-write (older than `older_than_s`: a write in progress is left alone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    cutoff = time.time() - older_than_s
    stale = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}")
             if p.stat().st_mtime < cutoff]
    for p in stale:
        remove_file_or_folder(p)
    return stale


def is_our_output(path: str | os.PathLike) -> bool:
    """A file this package wrote (its provenance names napari-etdms): never taken as an input
    by a batch, so a rerun into the input folder does not process its own outputs."""
    try:
        software = read_provenance(path)["provenance"].get("software", "")
    except Exception:  # unreadable, or a zarr without the zarr extra: reported when it is processed
        return False
    return str(software).startswith("napari-etdms")
