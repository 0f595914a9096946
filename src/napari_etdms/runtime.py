"""What this machine computes fast: the device, the precision and the CPU threads a run
uses, each chosen with a reason that `etdms info`, the widget, every benchmark and every
output's provenance show.

Precision. bfloat16 autocast doubles conv throughput where the processor computes it
natively (AVX512-BF16 or AMX on the CPU, CUDA from compute capability 8.0) and is several
times *slower* where it is emulated: on an AVX2-only AMD EPYC (Zen 3) one CLSR step of the
lite model took 0.85 s in bfloat16 against 0.11 s in float32 (benchmarks/bench_precision.py).
torch's own capability queries settle most processors. Where they cannot (a CPU whose
oneDNN takes bfloat16 without computing it natively: AVX512 without BF16, AVX2-VNNI-2,
ARM), one tile of the networks is timed in each precision once, and the verdict is cached
per machine in the user's cache folder, keyed by torch version, processor, capability and
networks, so it costs nothing after the first run. A stale or corrupt cache file is ignored
and rewritten.

Threads. Two torch threads on two cores that another process also uses slow a run (1.5x with
one core busy on a Zen 3, 4-20x in an earlier test: each thread waits for the slowest at
every parallel region), so by default a run takes the
cores that are free now: the cores this process may use (affinity, cgroup quota), less the
load on them measured over a short moment, at most torch's own default (physical cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE_ENV_VAR = "NAPARI_ETDMS_CACHE"
CACHE_FILE = "precision.json"
# bfloat16 must win by this much to be chosen over float32 by measurement: closer than this,
# float32's exact arithmetic is worth more than a gain within timing noise
MEASURED_MARGIN = 0.9
TORCH_DEFAULT_THREADS = torch.get_num_threads()  # physical cores, or OMP_NUM_THREADS


# ---- device ---------------------------------------------------------------------------
def select_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def processor_name() -> str:
    """The CPU's model name as the operating system reports it (e.g. "AMD EPYC 7B13")."""
    with contextlib.suppress(OSError):
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            # a virtual machine may hide the model number; family and model still name the core
            family = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
            return fields["model name"] + family
    if platform.system() == "Darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
    return platform.processor() or platform.machine() or "unknown processor"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple GPU ({processor_name()})"
    return processor_name()


# ---- precision ------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuFeatures:
    """torch's own answers about the CPU's arithmetic."""

    capability: str  # the vector kernels torch dispatches to: "AVX2", "AVX512", "DEFAULT", ...
    avx512_bf16: bool  # native bfloat16 dot products
    amx: bool  # Intel AMX tiles (bfloat16 matrix units)
    onednn_bf16: bool  # oneDNN runs bfloat16 convolutions here, natively or by conversion

    @classmethod
    def detect(cls) -> CpuFeatures:
        cpu = getattr(torch, "cpu", None)

        def query(name: str) -> bool:
            function = getattr(cpu, name, None)  # private torch queries: absent in some versions
            try:
                return bool(function()) if function is not None else False
            except RuntimeError:
                return False

        try:
            onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            onednn = False
        return cls(torch.backends.cpu.get_cpu_capability(), query("_is_avx512_bf16_supported"),
                   query("_is_amx_tile_supported"), onednn)

    @property
    def bfloat16(self) -> str:
        """"native", "emulated" (torch would convert every bfloat16 op to float32 and back)
        or "unknown" (oneDNN takes bfloat16 here, but not as a native instruction torch names)."""
        if self.avx512_bf16 or self.amx:
            return "native"
        return "unknown" if self.onednn_bf16 else "emulated"


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a run's networks, and why it was chosen."""

    name: str  # a key of PRECISIONS
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.name]

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


# seconds for one tile of the networks in the named precision
PrecisionProbe = Callable[[str], float]


def choose_precision(device: torch.device, requested: str = "auto", probe: PrecisionProbe | None = None,
                     probe_key: str = "", training: bool = False) -> Precision:
    """The precision a run uses on `device`. `auto`: reduced precision only where the
    device computes it natively and it is faster for these networks; `probe` times a tile
    where the capability queries cannot tell (`probe_key` names the networks it times).
    `training`: never float16, whose gradients underflow without loss scaling."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"unknown precision '{requested}' (choose auto, {', '.join(PRECISIONS)})")
        return Precision(requested, "as asked")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
        if major >= 8:  # Ampere and later compute bfloat16 in their tensor cores
            return Precision("bfloat16", f"native bfloat16 on {name}")
        if major >= 7 and not training:
            return Precision("float16", f"tensor cores without native bfloat16 on {name}")
        return Precision("float32", f"no native bfloat16 on {name}" + (" (float16 is not trained in)" if
                                                                          major >= 7 else ""))
    if device.type != "cpu":
        return Precision("float32", f"reduced precision unmeasured on {device.type}")
    features = CpuFeatures.detect()
    support = features.bfloat16
    if support == "native":
        return Precision("bfloat16", f"native bfloat16 ({'AMX' if features.amx else 'AVX512-BF16'})")
    if support == "emulated":
        return Precision("float32", f"no native bfloat16 ({features.capability}): emulated, 5-9x slower")
    if probe is None:
        return Precision("float32", f"bfloat16 not native ({features.capability}) and not measured")
    return measured_precision(probe, cache_key(features, probe_key))


def cache_key(features: CpuFeatures, probe_key: str) -> str:
    """What a measurement depends on: torch, the processor, its kernels, the threads, the networks."""
    return (f"torch {torch.__version__} | {processor_name()} | {features.capability} | "
            f"{torch.get_num_threads()} threads | {probe_key}")


def cache_path() -> Path:
    folder = os.environ.get(CACHE_ENV_VAR)
    if folder:
        return Path(folder) / CACHE_FILE
    from platformdirs import user_cache_path

    return user_cache_path("napari-etdms") / CACHE_FILE


def read_cache() -> dict:
    """The cached verdicts; an unreadable or malformed file reads as empty (it is rewritten)."""
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {key: value for key, value in entries.items() if isinstance(value, dict)
            and value.get("precision") in PRECISIONS and isinstance(value.get("reason"), str)}


CACHE_ENTRIES = 32  # the newest measurements kept: torch upgrades and other weights add keys


def write_cache(entries: dict) -> None:
    """Best effort: a read-only or full cache folder costs a measurement next time, no error."""
    from napari_etdms.io import write_file_atomically

    path = cache_path()
    newest = sorted(entries.items(), key=lambda item: str(item[1].get("measured", "")))[-CACHE_ENTRIES:]
    text = json.dumps(dict(newest), indent=1, sort_keys=True)
    with contextlib.suppress(OSError):
        write_file_atomically(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)


def measured_precision(probe: PrecisionProbe, key: str) -> Precision:
    """bfloat16 when a tile runs faster in it than in float32 (by MEASURED_MARGIN), from the
    cache when this machine measured it before."""
    entries = read_cache()
    if key in entries:
        return Precision(entries[key]["precision"], entries[key]["reason"])
    seconds = {}
    for name in ("float32", "bfloat16"):
        try:
            seconds[name] = probe(name)
        except RuntimeError:  # a precision the backend cannot run at all
            seconds[name] = math.inf
    faster = seconds["bfloat16"] < MEASURED_MARGIN * seconds["float32"]
    chosen = "bfloat16" if faster else "float32"
    today = datetime.now(timezone.utc)
    reason = (f"measured on {today.date()}: a tile took {seconds['bfloat16']:.3g} s in bfloat16, "
              f"{seconds['float32']:.3g} s in float32")
    entries[key] = {"precision": chosen, "reason": reason, "seconds": seconds,
                    "measured": today.isoformat(timespec="seconds")}
    write_cache(entries)
    return Precision(chosen, reason)


def forward_probe(calls: list[tuple[torch.nn.Module, tuple]], device: torch.device,
                  repeats: int = 3) -> PrecisionProbe:
    """A probe timing one forward pass of each network on its inputs (the median of
    `repeats` after a warm-up), under the precision's autocast."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @torch.no_grad()
    def seconds(name: str) -> float:
        precision = Precision(name, "probe")

        def once():
            with precision.autocast(device):
                for network, inputs in calls:
                    network(*inputs)
            sync()

        # in eval mode (no dropout), and drawing no random numbers a run would have drawn
        modes = [network.training for network, _ in calls]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for network, _ in calls:
                network.eval()
            try:
                once()
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    once()
                    times.append(time.perf_counter() - started)
            finally:
                for (network, _), mode in zip(calls, modes):
                    network.train(mode)
        return statistics.median(times)

    return seconds


def architecture_key(networks: list[torch.nn.Module]) -> str:
    """Names the networks a probe timed: their layers and sizes, hashed."""
    return "networks " + hashlib.sha256("\n".join(map(repr, networks)).encode()).hexdigest()[:12]


# ---- threads --------------------------------------------------------------------------
@dataclass(frozen=True)
class Threads:
    count: int
    reason: str

    def __str__(self) -> str:
        return f"{self.count} ({self.reason})"


def usable_cores() -> int:
    """The cores this process may run on: its affinity, within a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    return cores


def busy_cores(interval: float = 0.3) -> float:
    """How many of this process's cores other processes keep busy, measured over `interval`
    s: the machine's load on those cores less this process's own (helper threads of numpy or
    torch may still be finishing earlier work). 0 where it cannot be measured."""
    try:
        import psutil

        this = psutil.Process()
        this.cpu_percent(None)
        percents = psutil.cpu_percent(interval=interval, percpu=True)
        own = this.cpu_percent(None)
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(len(percents))
    except Exception:  # no psutil, a restricted /proc (psutil.Error), ...: nothing measured
        return 0.0
    return max(0.0, (sum(percents[i] for i in allowed if i < len(percents)) - own) / 100)


def choose_threads(requested: int | None = None, busy: Callable[[], float] = busy_cores, share: int = 1) -> Threads:
    """`requested`, else the free cores (at most torch's default), divided among `share`
    processes of one job (torchrun's ranks on this machine)."""
    if requested:
        return Threads(requested, "as asked")
    if share > 1:
        count = max(1, min(usable_cores(), TORCH_DEFAULT_THREADS) // share)
        return Threads(count, f"the cores shared by {share} processes")
    cores = min(usable_cores(), TORCH_DEFAULT_THREADS)
    load = busy()
    count = max(1, min(cores, round(cores - load)))
    if count == cores:
        return Threads(count, f"all {cores} cores free")
    return Threads(count, f"{load:.1f} of {cores} cores busy with other work")


def use_threads(requested: int | None = None, share: int = 1) -> Threads:
    """Choose the CPU threads (`requested` overrides) and have torch use them."""
    threads = choose_threads(requested, share=share)
    torch.set_num_threads(threads.count)
    return threads


def describe(device: torch.device, precision: Precision, threads: Threads | None = None) -> dict:
    """The facts a speed figure needs beside it."""
    facts = {"device": str(device), "processor": device_name(device), "precision": precision.name,
             "precision_reason": precision.reason, "torch": torch.__version__}
    if device.type == "cpu":
        features = CpuFeatures.detect()
        facts |= {"cpu_capability": features.capability, "bfloat16": features.bfloat16}
    facts["threads"] = threads.count if threads else torch.get_num_threads()
    if threads:
        facts["threads_reason"] = threads.reason
    return facts


def summary(device: torch.device, precision: Precision, threads: Threads | None) -> str:
    """One line for a log: "cpu (AMD EPYC ...), float32 (why), 2 threads (why)"."""
    line = f"{device} ({device_name(device)}), {precision}"
    return line + (f", {threads.count} threads ({threads.reason})" if threads is not None else "")


def machine_report(facts: dict) -> str:
    """`describe`'s facts as the lines every benchmark prints before its figures."""
    return "\n".join(f"{key:>18}: {value}" for key, value in facts.items())
