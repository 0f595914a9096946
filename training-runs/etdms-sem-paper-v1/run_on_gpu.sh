#!/usr/bin/env bash
# Trains a GPU configuration on one lent GPU machine (H100/H200, 16 cores, no network) in one
# ten-minute command, from the repository root. Prepare it here first with
# prepare_payload.sh (beside this file): it builds the two ignored folders the call carries,
#   .whl       wheels its Python image lacks (pydantic, diffusers and their needs)
#   .gpu-data  the split's frames as 8-bit central crops (only 64 MiB may travel)
# and says which tracked checkpoints to move aside for the call.
# Stages 1 and 2 train side by side (stage 1 alone when the config's fine-tune grows from
# shipped CLSR weights: configs/etdms_medium_gpu.json), then stage 2 is fine-tuned on
# stage-1 outputs; the weights come back as an fp16 file split into parts (files back are
# limited to 16 MiB).
#   CONFIG=configs/etdms_paper_gpu.json RUN=training-runs/etdms-sem-paper-v1 (the default)
#   CONFIG=configs/etdms_medium_gpu.json RUN=training-runs/etdms-sem-medium-v1
# Locally (CPU, small config) the same script checks its own flow:
#   DEVICE=cpu CONFIG=... RUN=/tmp/run TRAIN_MIN=0.2 TUNE_MIN=0.1 OUT=/tmp/out bash run_on_gpu.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-configs/etdms_paper_gpu.json}
RUN=${RUN:-training-runs/etdms-sem-paper-v1}
TRAIN_MIN=${TRAIN_MIN:-4.0}
TUNE_MIN=${TUNE_MIN:-1.25}
LOGS=$OUT/logs
mkdir -p "$LOGS" "$RUN"

if ! python3 -c "import pydantic, diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [ ! -e /work/shared/data/sem-train ]; then  # where split.json says the frames are
  mkdir -p /work/shared/data && ln -s "$PWD/.gpu-data" /work/shared/data/sem-train
fi
etdms() { python3 -m napari_etdms.cli "$@"; }
(nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())") > "$LOGS/machine.txt" 2>&1

etdms train -c "$CONFIG" -s 1 --run-dir "$RUN" --device "$DEVICE" --max-minutes "$TRAIN_MIN" > "$LOGS/stage1.txt" 2>&1 &
GROWN=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['finetune'].get('grow_from') or '')" "$CONFIG")
[ -z "$GROWN" ] && etdms train -c "$CONFIG" -s 2 --run-dir "$RUN" --device "$DEVICE" --max-minutes "$TRAIN_MIN" > "$LOGS/stage2.txt" 2>&1 &
[ "$DEVICE" = cuda ] && timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$LOGS/test_cuda.txt" 2>&1 &
wait

# The iterations reached become the stages' targets, so that -s 0 goes on to the fine-tune.
python3 - "$CONFIG" "$RUN" <<'PY' || { echo "stage 1 or 2 left no checkpoint: see $LOGS"; exit 1; }
import json, sys, torch
from pathlib import Path
config, run = json.load(open(sys.argv[1])), sys.argv[2]
grows = config["finetune"].get("grow_from")
if grows:  # relative to the config, which is rewritten into the run folder
    config["finetune"]["grow_from"] = str((Path(sys.argv[1]).parent / grows).resolve())
for stage in ("stage1",) if grows else ("stage1", "stage2"):
    config[stage]["iterations"] = torch.load(f"{run}/{stage}/checkpoint.pt", map_location="cpu", weights_only=True)["iteration"]
config["data"]["inputs"] = ["/work/shared/data/sem-train"]
json.dump(config, open(f"{run}/config.json", "w"), indent=1)
PY
etdms train -c "$RUN/config.json" -s 0 --run-dir "$RUN" --device "$DEVICE" --max-minutes "$TUNE_MIN" > "$LOGS/finetune.txt" 2>&1

python3 - "$RUN" "$OUT" <<'PY' || { echo "export failed: see $LOGS"; exit 1; }
import json, sys, torch
from napari_etdms.training.trainer import export, load_train_config
run, out = sys.argv[1:]
config = json.load(open(f"{run}/config.json"))
config["finetune"]["iterations"] = torch.load(f"{run}/finetune/checkpoint.pt", map_location="cpu", weights_only=True)["iteration"]
json.dump(config, open(f"{out}/logs/config.json", "w"), indent=1)
entry = export(run, load_train_config(f"{run}/config.json"), "/tmp/run-weights", card=None)
half = {part: {k: v.half() if v.is_floating_point() else v for k, v in torch.load(entry.folder / f"{part}.pt", weights_only=True).items()}
        for part in ("denoiser", "clsr")}
torch.save(half, "/tmp/weights.half.pt")
PY
split -b 15M -d /tmp/weights.half.pt "$OUT/weights.half.pt.part"

timeout 75 python3 -m napari_etdms.cli eval --split "$RUN/split.json" --crop 512 -w /tmp/run-weights --device "$DEVICE" -o "$LOGS/eval-run" > "$LOGS/eval-run.txt" 2>&1
timeout 45 python3 -m napari_etdms.cli eval --split "$RUN/split.json" --crop 512 --device "$DEVICE" -o "$LOGS/eval-lite" > "$LOGS/eval-lite.txt" 2>&1
[ "$DEVICE" = cuda ] && timeout 60 python3 benchmarks/bench_pipeline.py --device cuda --repeats 2 > "$LOGS/bench.txt" 2>&1
for stage in stage1 stage2 finetune; do cp "$RUN/$stage/log.jsonl" "$LOGS/$stage.jsonl" 2>/dev/null; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
ls -la "$OUT"
