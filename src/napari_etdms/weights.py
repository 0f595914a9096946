"""Registry of named weights: each is a folder holding `weights.json` (name, model config,
files with sha256, model card, recommended sampler) next to its state-dict files.

Folders are searched in `NAPARI_ETDMS_WEIGHTS` (os.pathsep-separated), then the user's own
weights folder (where "Adapt to this image" writes), then the copy shipped inside the
installed package, then the `weights/` folder of a source checkout.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from napari_etdms.config import ConfigError, ModelConfig, model_config
from napari_etdms.io import write_file_atomically

DEFAULT_WEIGHTS = "etdms-sem-v3.1"
MANIFEST = "weights.json"
ADAPTATION_RECORD = "adaptation.json"  # beside the manifest of weights adapted by `etdms adapt`
PARTS = ("denoiser", "clsr")
ENV_VAR = "NAPARI_ETDMS_WEIGHTS"


class WeightsError(RuntimeError):
    """Weights are missing, corrupt or inconsistent; the message names the file."""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    folder: Path
    config: ModelConfig
    files: dict[str, dict] = field(default_factory=dict)  # part -> {"file", "sha256"}
    card: str | None = None
    recommended: dict = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        joined = "".join(self.files[p]["sha256"] for p in sorted(self.files))
        return hashlib.sha256(joined.encode()).hexdigest()[:12]

    def provenance(self) -> dict:
        """Name and hashes; for weights adapted to a user's frames, also what they were adapted from."""
        record = {"name": self.name, "hash": self.short_hash, "files": {p: f["sha256"] for p, f in self.files.items()}}
        adaptation = self.folder / ADAPTATION_RECORD
        if adaptation.is_file():
            try:
                adapted = json.loads(adaptation.read_text())
                record["adapted_from"] = {key: adapted[key] for key in ("base", "method", "iterations")}
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                record["adapted_from"] = f"unreadable {ADAPTATION_RECORD} ({err})"
        return record


def user_folder() -> Path:
    """The user's own weights (e.g. adapted to their microscope), e.g. ~/.local/share/napari-etdms/weights."""
    from platformdirs import user_data_path

    return user_data_path("napari-etdms") / "weights"


def search_path() -> list[Path]:
    paths = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    paths.append(user_folder())
    package_dir = Path(__file__).resolve().parent
    paths.append(package_dir / "shipped_weights")  # wheel: the checkout's weights/ as package data
    paths.append(package_dir.parents[1] / "weights")  # source checkout / editable install
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_entry(folder: Path) -> WeightsEntry:
    manifest = folder / MANIFEST
    try:
        data = json.loads(manifest.read_text())
        files = data["files"]
        for part, spec in files.items():
            if part not in PARTS or not {"file", "sha256"} <= set(spec):
                raise KeyError(f"files.{part}")
        return WeightsEntry(
            name=data["name"],
            folder=folder,
            config=model_config(data["config"]),
            files=files,
            card=data.get("card"),
            recommended=data.get("recommended", {}),
        )
    except FileNotFoundError:
        raise WeightsError(f"{manifest}: not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise WeightsError(f"{manifest}: invalid weights manifest ({err})") from None


def scan() -> tuple[dict[str, WeightsEntry], dict[Path, str]]:
    """The search path's weights folders: the readable ones by name (the first of a name
    wins), and the broken ones (a weights.json that cannot be read) with the reason."""
    found: dict[str, WeightsEntry] = {}
    broken: dict[Path, str] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        candidates = [root] if (root / MANIFEST).is_file() else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in candidates:
            if (folder / MANIFEST).is_file():
                try:
                    entry = read_entry(folder)
                except WeightsError as err:
                    broken[folder] = str(err)
                    continue
                found.setdefault(entry.name, entry)
    return found, broken


def available() -> dict[str, WeightsEntry]:
    """Every named weights folder found on the search path (the first of a name wins)."""
    return scan()[0]


def broken_folders() -> dict[Path, str]:
    """Weights folders on the search path whose weights.json cannot be read, with the reason."""
    return scan()[1]


def resolve(name_or_path: str | os.PathLike | None = None) -> WeightsEntry:
    """A registry name, a weights folder, or the path of its weights.json."""
    name_or_path = DEFAULT_WEIGHTS if name_or_path is None else name_or_path
    path = Path(name_or_path)
    if path.name == MANIFEST:
        path = path.parent
    if path.is_dir():
        return read_entry(path)
    entries, broken = scan()
    if str(name_or_path) in entries:
        return entries[str(name_or_path)]
    known = ", ".join(entries) or "none installed"
    unreadable = "".join(f"; cannot read {reason}" for reason in broken.values())
    raise WeightsError(
        f"weights '{name_or_path}' not found (known: {known}{unreadable}). Give a weights folder, or set "
        f"{ENV_VAR} to a folder of weights; trained weights ship with the package."
    )


def load_state(entry: WeightsEntry, part: str) -> dict:
    """Verify the file's sha256, then load its state dict without unpickling code."""
    if part not in entry.files:
        raise WeightsError(f"weights '{entry.name}' have no {part} file")
    spec = entry.files[part]
    path = entry.folder / spec["file"]
    if not path.is_file():
        raise WeightsError(f"{path}: weights file missing")
    actual = sha256_of(path)
    if actual != spec["sha256"]:
        raise WeightsError(
            f"{path}: sha256 mismatch (expected {spec['sha256'][:12]}..., got {actual[:12]}...); "
            "the file is truncated or corrupt: reinstall or re-export it"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"{path}: cannot load ({err})") from None


def write_entry(
    folder: str | os.PathLike,
    name: str,
    config: ModelConfig,
    states: dict[str, dict],
    recommended: dict | None = None,
    card: str | None = None,
) -> WeightsEntry:
    """Save state dicts and a manifest with their hashes (the export format)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for part, state in states.items():
        path = folder / f"{part}.pt"
        # serialised in memory: torch.save names its archive after the file, and the temporary
        # file's random name would make the bytes (and the hash) differ on every export
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
        write_file_atomically(path, lambda tmp, data=buffer.getvalue(): Path(tmp).write_bytes(data), overwrite=True)
        files[part] = {"file": path.name, "sha256": sha256_of(path)}
    manifest = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "files": files,
        "card": card,
        "recommended": recommended or {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return read_entry(folder)
