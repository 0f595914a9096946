"""The precision and thread rules (`napari_etdms.runtime`), with torch's capability queries
mocked both ways, and the per-machine cache of measured verdicts."""

import json
import os

import pytest
import torch
from conftest import TINY, sem_like

from napari_etdms import runtime
from napari_etdms.engine.pipeline import Pipeline
from napari_etdms.runtime import CpuFeatures, choose_precision, choose_threads

CPU = torch.device("cpu")
AVX2 = CpuFeatures("AVX2", avx512_bf16=False, amx=False, onednn_bf16=False)  # e.g. AMD Zen 3, Intel Alder Lake
AVX512 = CpuFeatures("AVX512", avx512_bf16=False, amx=False, onednn_bf16=True)  # e.g. Skylake-SP: converts
ZEN5 = CpuFeatures("AVX512", avx512_bf16=True, amx=False, onednn_bf16=True)
SAPPHIRE_RAPIDS = CpuFeatures("AVX512", avx512_bf16=False, amx=True, onednn_bf16=True)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test here counts measurements: a cache of its own."""
    monkeypatch.setenv(runtime.CACHE_ENV_VAR, str(tmp_path / "cache"))


def on_cpu(monkeypatch, features: CpuFeatures):
    monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls: features))


class Probe:
    """A probe with given seconds per precision that counts its calls."""

    def __init__(self, float32: float, bfloat16: float):
        self.seconds = {"float32": float32, "bfloat16": bfloat16}
        self.calls = []

    def __call__(self, name):
        self.calls.append(name)
        value = self.seconds[name]
        if isinstance(value, Exception):
            raise value
        return value


@pytest.mark.parametrize("features", [ZEN5, SAPPHIRE_RAPIDS])
def test_native_bfloat16_cpus_take_bfloat16_without_measuring(monkeypatch, features):
    on_cpu(monkeypatch, features)
    probe = Probe(1.0, 2.0)
    chosen = choose_precision(CPU, "auto", probe)
    assert chosen.name == "bfloat16" and "native" in chosen.reason
    assert chosen.dtype is torch.bfloat16
    assert probe.calls == []


def test_avx2_cpus_take_float32_without_measuring(monkeypatch):
    on_cpu(monkeypatch, AVX2)
    probe = Probe(2.0, 1.0)  # even a probe that would favour bfloat16 is not asked
    chosen = choose_precision(CPU, "auto", probe)
    assert chosen.name == "float32" and "emulated" in chosen.reason and "AVX2" in chosen.reason
    assert chosen.dtype is None
    assert probe.calls == []


@pytest.mark.parametrize(("float32", "bfloat16", "expected"),
                         [(1.0, 0.5, "bfloat16"), (1.0, 3.0, "float32"), (1.0, 0.95, "float32")])
def test_undecided_cpus_measure_once_and_cache_the_verdict(monkeypatch, float32, bfloat16, expected):
    on_cpu(monkeypatch, AVX512)
    probe = Probe(float32, bfloat16)
    chosen = choose_precision(CPU, "auto", probe, "networks A")
    assert chosen.name == expected and "measured" in chosen.reason
    assert sorted(probe.calls) == ["bfloat16", "float32"]
    entries = json.loads(runtime.cache_path().read_text())
    (key,) = entries
    assert torch.__version__ in key and runtime.processor_name() in key and "AVX512" in key and "networks A" in key
    assert entries[key]["precision"] == expected and entries[key]["seconds"]["bfloat16"] == bfloat16

    again = Probe(float32, bfloat16)
    assert choose_precision(CPU, "auto", again, "networks A") == chosen
    assert again.calls == []  # from the cache
    other = Probe(1.0, 0.1)
    assert choose_precision(CPU, "auto", other, "networks B").name == "bfloat16"  # other networks: measured anew
    assert len(other.calls) == 2
    assert len(json.loads(runtime.cache_path().read_text())) == 2


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "float32"}', '{"k": {"precision": "int4"}}', ""])
def test_a_corrupt_or_stale_cache_is_ignored_and_rewritten(monkeypatch, content):
    on_cpu(monkeypatch, AVX512)
    path = runtime.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    probe = Probe(1.0, 0.4)
    assert choose_precision(CPU, "auto", probe, "networks A").name == "bfloat16"
    assert len(probe.calls) == 2
    entries = json.loads(path.read_text())
    assert [value["precision"] for value in entries.values() if isinstance(value, dict)
            and "reason" in value] == ["bfloat16"]


def test_an_entry_of_another_torch_or_processor_is_not_used(monkeypatch):
    on_cpu(monkeypatch, AVX512)
    key = runtime.cache_key(AVX512, "networks A").replace(torch.__version__, "1.0.0")
    runtime.write_cache({key: {"precision": "bfloat16", "reason": "measured long ago"}})
    probe = Probe(1.0, 5.0)
    assert choose_precision(CPU, "auto", probe, "networks A").name == "float32"
    assert len(probe.calls) == 2


def test_an_unwritable_cache_folder_costs_a_measurement_not_an_error(monkeypatch, tmp_path):
    on_cpu(monkeypatch, AVX512)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(runtime.CACHE_ENV_VAR, str(blocker / "cache"))  # a folder under a file: cannot exist
    assert choose_precision(CPU, "auto", Probe(1.0, 0.5), "networks A").name == "bfloat16"


def test_a_precision_the_backend_cannot_run_is_never_chosen(monkeypatch):
    on_cpu(monkeypatch, AVX512)
    chosen = choose_precision(CPU, "auto", Probe(1.0, RuntimeError("no bf16 kernel")), "networks A")
    assert chosen.name == "float32"


def test_undecided_without_a_probe_stays_float32(monkeypatch):
    on_cpu(monkeypatch, AVX512)
    assert choose_precision(CPU).name == "float32"


def fake_cuda(monkeypatch, capabilities: dict):
    """GPUs by index: their compute capabilities, asked for by device."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capabilities[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU {torch.device(device).index}")


@pytest.mark.parametrize(("capability", "expected", "training"),
                         [((9, 0), "bfloat16", "bfloat16"), ((8, 6), "bfloat16", "bfloat16"),
                          ((7, 5), "float16", "float32"), ((6, 1), "float32", "float32")])
def test_cuda_takes_native_bfloat16_else_tensor_core_float16(monkeypatch, capability, expected, training):
    fake_cuda(monkeypatch, {0: capability})
    chosen = choose_precision(torch.device("cuda:0"), "auto", Probe(RuntimeError("not asked"), 0.0))
    assert chosen.name == expected
    assert "GPU 0" in chosen.reason and f"{capability[0]}.{capability[1]}" in chosen.reason
    # training has no loss scaling: never float16
    assert choose_precision(torch.device("cuda:0"), "auto", training=True).name == training


def test_each_gpu_is_asked_about_itself(monkeypatch):
    fake_cuda(monkeypatch, {0: (7, 5), 1: (9, 0)})
    assert choose_precision(torch.device("cuda:1")).name == "bfloat16"
    assert choose_precision(torch.device("cuda:0")).name == "float16"


def test_device_selection():
    assert runtime.select_device("auto").type in ("cpu", "cuda", "mps")
    assert runtime.select_device("cpu").type == "cpu"


def test_mps_keeps_float32():
    assert choose_precision(torch.device("mps")).name == "float32"


def test_a_precision_asked_for_is_used_and_a_wrong_one_named(monkeypatch):
    on_cpu(monkeypatch, AVX2)
    assert choose_precision(CPU, "bfloat16").name == "bfloat16"
    assert choose_precision(CPU, "float32").reason == "as asked"
    with pytest.raises(ValueError, match="int8"):
        choose_precision(CPU, "int8")


def test_a_pipeline_measures_its_own_networks_once(monkeypatch):
    on_cpu(monkeypatch, AVX512)
    first = Pipeline.from_config(TINY, precision="auto")
    (entry,) = json.loads(runtime.cache_path().read_text()).values()
    assert entry["precision"] == first.precision
    assert all(0 < seconds < 60 for seconds in entry["seconds"].values())
    # measured again, this probe would choose bfloat16 with another reason
    monkeypatch.setattr("napari_etdms.engine.pipeline.forward_probe", lambda *a, **k: Probe(RuntimeError(), 0.0))
    assert Pipeline.from_config(TINY, precision="auto").precision_choice == first.precision_choice


def test_provenance_names_precision_reason_and_threads(monkeypatch):
    on_cpu(monkeypatch, AVX2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Pipeline.from_config(TINY, precision="auto").run(sem_like((32, 32)), sampler="ddim", steps=2)
    finally:
        torch.set_num_threads(before)
    meta = result.metadata
    assert meta["precision"] == "float32" and "emulated" in meta["precision_reason"]
    assert meta["threads"] == 1


@pytest.mark.parametrize(("cores", "busy", "expected"), [(2, 0.05, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 7.5, 1),
                                                         (8, 2.2, 6), (16, 0.0, 16)])
def test_threads_take_the_free_cores(monkeypatch, cores, busy, expected):
    monkeypatch.setattr(runtime, "usable_cores", lambda: cores)
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", 64)
    chosen = choose_threads(busy=lambda: busy)
    assert chosen.count == expected
    assert ("free" in chosen.reason) == (expected == cores)


def test_threads_stay_within_torchs_default_and_obey_a_request(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 16)
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", 8)  # physical cores: hyper-threads do not help
    assert choose_threads(busy=lambda: 0.0).count == 8
    assert choose_threads(3, busy=lambda: pytest.fail("not measured")) == runtime.Threads(3, "as asked")


def test_use_threads_sets_torchs_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.use_threads(1).count == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class FakeProcess:
    def __init__(self, percent):
        self.percent = percent

    def cpu_percent(self, interval=None):
        return self.percent


def test_busy_cores_leaves_out_this_processs_own_work(monkeypatch):
    """A helper thread of this process still busy (numpy's, torch's) is not other work: a
    run must not give up a core for it."""
    import psutil

    cores = sorted(os.sched_getaffinity(0))
    system = [0.0] * (max(cores) + 1)
    system[cores[0]] = 100.0  # one core busy...
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: system)
    monkeypatch.setattr(psutil, "Process", lambda: FakeProcess(100.0))  # ...by this process
    assert runtime.busy_cores() == 0.0
    monkeypatch.setattr(psutil, "Process", lambda: FakeProcess(0.0))  # ...by another one
    assert runtime.busy_cores() == 1.0


def test_busy_cores_is_zero_when_it_cannot_measure(monkeypatch):
    import psutil

    def denied(*args, **kwargs):
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "cpu_percent", denied)
    assert runtime.busy_cores() == 0.0


@pytest.mark.parametrize(("avx512_bf16", "amx", "onednn", "expected"),
                         [(True, False, True, "native"), (False, True, True, "native"), (False, False, True, "unknown"),
                          (False, False, False, "emulated")])
def test_cpu_features_come_from_torchs_queries(monkeypatch, avx512_bf16, amx, onednn, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    features = CpuFeatures.detect()
    assert features.bfloat16 == expected
    assert features.capability == torch.backends.cpu.get_cpu_capability()


def test_the_probe_times_networks_in_eval_mode_without_drawing_random_numbers():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()
    seen = []
    net.register_forward_hook(lambda module, args, out: seen.append(module.training))
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    seconds = runtime.forward_probe([(net, (torch.ones(1, 4),))], CPU)("float32")
    assert seconds > 0 and seen and not any(seen)
    assert net.training  # as it was
    assert torch.equal(torch.rand(1), expected)
