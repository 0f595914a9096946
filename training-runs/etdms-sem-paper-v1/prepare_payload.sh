#!/usr/bin/env bash
# Builds, on this CPU machine, the two ignored folders that run_on_gpu.sh needs on a lent
# GPU machine (which has PyTorch but no network), and checks that the tree can travel:
#   .whl       wheels of the package's needs that the GPU image lacks (Python 3.12 there)
#   .gpu-data  the split's frames, robustly normalised, as 8-bit central crops
#              (TRAIN_CROP px for training frames, VAL_CROP px for validation frames)
# A call sends tracked files, untracked-not-ignored files and the carried paths, 64 MiB in
# all. The run checkpoints under training-runs/ are tracked and large: move them aside
# (outside the repository) for the call and back afterwards, as the script prints.
# Usage, from the repository root:
#   bash training-runs/etdms-sem-paper-v1/prepare_payload.sh [SPLIT]
set -euo pipefail
SPLIT=${1:-training-runs/etdms-sem-lite-v1/split.json}
TRAIN_CROP=${TRAIN_CROP:-640}
VAL_CROP=${VAL_CROP:-512}
[ -d .git ] || { echo "run from the repository root"; exit 2; }
mkdir -p .git/info
for folder in .whl .gpu-data; do
  grep -qxF "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done

# The GPU image (KINDS.md) holds torch, numpy, scipy, scikit-image, tifffile, Pillow, tqdm,
# psutil, matplotlib, huggingface-hub, safetensors, regex; these are missing there.
# (imagecodecs, 27 MiB, stays behind: nothing imports it, and tifffile reads zlib crops alone.)
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic pydantic-core annotated-types typing-inspection diffusers importlib-metadata \
  PyWavelets platformdirs
python3 - .whl <<'PY'
import re, sys
from pathlib import Path
names = [re.split(r"-\d", w.name)[0].lower().replace("_", "-") for w in Path(sys.argv[1]).glob("*.whl")]
duplicates = {n for n in names if names.count(n) > 1}
if duplicates:
    sys.exit(f"two versions of {sorted(duplicates)} in .whl: the install there would stop")
PY

rm -rf .gpu-data
python3 - "$SPLIT" .gpu-data "$TRAIN_CROP" "$VAL_CROP" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
import tifffile
from napari_etdms.frames import load_normalised

split, out = json.load(open(sys.argv[1])), Path(sys.argv[2])
crops = {"train": int(sys.argv[3]), "validation": int(sys.argv[4])}
out.mkdir()
for part, size in crops.items():
    for row in split[part]:
        image = load_normalised(Path(row["path"]))
        top, left = max(0, (image.shape[0] - size) // 2), max(0, (image.shape[1] - size) // 2)
        crop = np.clip(image[top:top + size, left:left + size], 0.0, 1.0)
        tifffile.imwrite(out / Path(row["path"]).with_suffix(".tif").name, np.round(crop * 255).astype(np.uint8), compression="zlib")
print(f"{sum(len(split[p]) for p in crops)} frames -> {out}")
PY

mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
bytes() { du -cb "$@" | tail -1 | cut -f1; }
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
checkpoints=$(git ls-files 'training-runs/*checkpoint.pt')
aside=$( [ -n "$checkpoints" ] && bytes $checkpoints || echo 0)
total=$((tracked - aside + $(bytes .whl) + $(bytes .gpu-data)))
echo "travels: tracked $(mib "$tracked") MiB - run checkpoints $(mib "$aside") MiB + .whl $(mib "$(bytes .whl)") MiB" \
     "+ .gpu-data $(mib "$(bytes .gpu-data)") MiB = $(mib "$total") MiB of 64"
[ "$total" -lt $((64 * 1048576)) ] || { echo "too large: lower TRAIN_CROP"; exit 1; }
echo "before the device call: git ls-files 'training-runs/*checkpoint.pt' | tar cf /tmp/aside.tar -T - --remove-files"
echo "after it:               tar xf /tmp/aside.tar"
