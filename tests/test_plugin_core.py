"""Qt-free parts of the plugin: output geometry, pyramids, the background job."""

import threading

import numpy as np
import pytest
from conftest import sem_like

from napari_etdms.engine import cached_pipeline
from napari_etdms.engine.settings import RunSettings
from napari_etdms.plugin import worker as worker_module
from napari_etdms.plugin.geometry import pyramid_levels, region_geometry, upscaled_geometry
from napari_etdms.plugin.output_layers import pyramid
from napari_etdms.plugin.worker import Job, run_job


def test_x4_geometry_puts_subpixels_inside_their_input_pixel():
    scale, translate = upscaled_geometry((2.0, 3.0), (10.0, -4.0))
    assert scale == [0.5, 0.75]
    for i in range(5):  # centre of x4 pixel 4i+1.5 == centre of input pixel i
        assert translate[0] + (4 * i + 1.5) * scale[0] == pytest.approx(10.0 + 2.0 * i)
        assert translate[1] + (4 * i + 1.5) * scale[1] == pytest.approx(-4.0 + 3.0 * i)


def test_region_geometry_offsets_the_last_two_axes():
    scale, translate = region_geometry((1.0, 2.0, 2.0), (5.0, 0.0, 1.0), (3, 4))
    assert scale == [1.0, 2.0, 2.0] and translate == [5.0, 6.0, 9.0]


def test_large_outputs_become_pyramids_that_fit_a_texture():
    assert pyramid_levels((16384, 100)) == 1
    assert pyramid_levels((16385, 100)) == 2
    assert pyramid_levels((70000, 10)) == 4
    levels = pyramid(np.ones((40, 36), np.float32), 3)
    assert [lv.shape for lv in levels] == [(40, 36), (20, 18), (10, 9)]
    assert all(lv.dtype == np.float32 for lv in levels)


def _drain(generator):
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def test_job_yields_progress_and_returns_results(tiny_weights):
    cached_pipeline.cache_clear()
    job = Job([sem_like((32, 32)), sem_like((32, 32), seed=1)], str(tiny_weights.folder), "cpu", "float32",
              RunSettings(sampler="ddim", steps=2, tile=32, overlap=8))
    events, results = _drain(run_job(job, threading.Event()))
    assert len(results) == 2 and results[1].super_resolved.shape == (128, 128)
    assert [e.frame for e in events][0] == 0 and events[-1].frame == 1
    assert events[-1].done == events[-1].total and events[-1].eta_s == pytest.approx(0, abs=1e-6)


def test_all_slices_of_a_stack_take_their_noise_across_neighbouring_slices(tiny_weights):
    """As `etdms infer` does a volume: each slice's noise with its neighbours along z."""
    from napari_etdms.engine import volume_slice_noise

    cached_pipeline.cache_clear()
    rng = np.random.default_rng(0)
    clean = sem_like((96, 96)).astype(np.float64)
    stack = [np.clip(clean + rng.normal(0, 900, clean.shape), 0, 65535).astype(np.uint16) for _ in range(4)]
    job = Job(stack, str(tiny_weights.folder), "cpu", "float32", RunSettings(sampler="ddim", steps=1, tile=32))
    _, results = _drain(run_job(job, threading.Event()))
    for index in (0, 2, 3):
        assert results[index].noise == volume_slice_noise(stack.__getitem__, index, len(stack))[0]
    single = Job(stack[:1], str(tiny_weights.folder), "cpu", "float32", RunSettings(sampler="ddim", steps=1, tile=32))
    assert worker_module.slice_noise_of(single, 0) is None  # one whole frame: the pipeline estimates it


def test_a_bad_slice_stops_the_job_and_is_named(tiny_weights):
    from napari_etdms.engine.pipeline import InputError

    stack = [sem_like((32, 32)), np.full((32, 32), 7, np.uint16), sem_like((32, 32), seed=1)]
    job = Job(stack, str(tiny_weights.folder), "cpu", "float32", RunSettings(sampler="ddim", steps=1, tile=32))
    with pytest.raises(InputError, match="slice 1: the frame is constant"):
        _drain(run_job(job, threading.Event()))


def test_cancelled_job_returns_nothing(tiny_weights):
    cancel = threading.Event()
    job = Job([sem_like((32, 32))], str(tiny_weights.folder), "cpu", "float32",
              RunSettings(sampler="ddim", steps=50, tile=32, overlap=8))
    generator = run_job(job, cancel)
    next(generator)
    cancel.set()
    events, results = _drain(generator)
    assert results is None and len(events) <= 2  # stopped within a step


def test_out_of_memory_retries_with_smaller_batches(monkeypatch):
    calls = []

    class FakePipeline:
        auto_batch_size = 8

        def run_with(self, frame, settings, **kwargs):
            calls.append(settings.batch_size)
            if settings.batch_size > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
            return "ok"

    assert worker_module._run_with_backoff(FakePipeline(), None, RunSettings(batch_size=8)) == "ok"
    assert calls == [8, 4, 2]
    calls.clear()
    assert worker_module._run_with_backoff(FakePipeline(), None, RunSettings()) == "ok"  # None: auto
    assert calls == [8, 4, 2]

    class AlwaysOOM(FakePipeline):
        def run_with(self, frame, settings, **kwargs):
            raise RuntimeError("out of memory")

    with pytest.raises(MemoryError, match="smaller region or tile"):
        worker_module._run_with_backoff(AlwaysOOM(), None, RunSettings(batch_size=2))
    class OtherFailure(FakePipeline):
        def run_with(self, frame, settings, **kwargs):
            raise RuntimeError("other failure")

    with pytest.raises(RuntimeError, match="other failure"):
        worker_module._run_with_backoff(OtherFailure(), None, RunSettings())
