import json
import os
import shutil
import socket

import numpy as np
import pytest
import tifffile
import torch
from conftest import sem_like, tiny_train_config, write_frames

from napari_etdms.config import DiffusionConfig
from napari_etdms.models import build_denoiser
from napari_etdms.simulation.ground_truth import load_normalised, validation_frames
from napari_etdms.training.data import FrameInfo, augment, list_frames, scene_key, split_frames
from napari_etdms.training.trainer import StageTrainer, TrainConfig, export, read_settings_history
from napari_etdms.weights import resolve


def test_scene_grouping_keeps_detectors_and_repeats_together():
    assert scene_key(__import__("pathlib").Path("P33_scale1_detectorA.tif")) == "P33_scale1_detector*"
    assert scene_key(__import__("pathlib").Path("Indent_multiBSE_C_05.tif")) == scene_key(
        __import__("pathlib").Path("Indent_multiBSE_A_05.tif"))
    frames = [FrameInfo(__import__("pathlib").Path(f"s{i % 5}_detector{'AB'[i % 2]}.tif"), f"s{i % 5}", 0.0)
              for i in range(20)]
    train, val = split_frames(frames, 0.3, seed=1)
    assert {f.scene for f in train}.isdisjoint({f.scene for f in val})
    assert train and val


def test_augmentation_is_joint():
    a = np.arange(16.0).reshape(4, 4)
    b = a * 10
    out_a, out_b = augment([a, b], np.random.default_rng(3))
    assert np.array_equal(out_b, out_a * 10)


def test_stage_training_resumes_logs_and_exports(pool, tmp_path):
    config = tiny_train_config(pool)
    run = tmp_path / "run"
    trainer = StageTrainer(config, "stage1", run)
    assert trainer.train(show_progress=False) == 3
    split = json.loads((run / "split.json").read_text())
    assert [r["path"].endswith("pure_noise.tif") for r in split["excluded_noisy"]] == [True]
    val_scenes = {r["scene"] for r in split["validation"]}
    assert val_scenes.isdisjoint({r["scene"] for r in split["train"]})
    log = [json.loads(line) for line in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    assert any("validation" in rec for rec in log)
    assert log[0]["runtime"]["precision"] == trainer.precision.name  # provenance of the steps' speed

    more = tiny_train_config(pool, iterations=5)
    resumed = StageTrainer(more, "stage1", run)
    assert resumed.iteration == 3  # picked up the checkpoint
    assert resumed.train(show_progress=False) == 5
    assert StageTrainer(more, "stage2", run).train(show_progress=False) == 5
    assert StageTrainer(more, "finetune", run).train(show_progress=False) == 5
    entry = export(run, more, tmp_path / "weights")
    assert resolve(entry.folder).recommended == {"sampler": "dpmpp", "steps": 20, "data_consistency": True}


def test_a_finished_stage_run_again_leaves_its_checkpoint_alone(pool, tmp_path):
    """Another run's finished stage 1 may be linked into a run folder as its conditioner."""
    config = tiny_train_config(pool, iterations=2)
    run = tmp_path / "run"
    StageTrainer(config, "stage1", run).train(show_progress=False)
    checkpoint = run / "stage1" / "checkpoint.pt"
    before = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns)
    assert StageTrainer(config, "stage1", run).train(show_progress=False) == 2
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns) == before


def test_an_odd_non_finite_batch_is_skipped_and_a_diverged_loss_stops_training(pool, tmp_path):
    trainer = StageTrainer(tiny_train_config(pool, iterations=5), "stage1", tmp_path / "run")
    assert trainer.train(max_minutes=None, show_progress=False) == 5
    saved = trainer.checkpoint_path.read_bytes()
    diverging = StageTrainer(tiny_train_config(pool, iterations=8), "stage1", tmp_path / "run")
    diverging.loss = lambda batch: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError, match="20 batches in a row at iteration 6"):
        diverging.train(show_progress=False)
    assert diverging.checkpoint_path.read_bytes() == saved

    odd = StageTrainer(tiny_train_config(pool, iterations=8), "stage1", tmp_path / "run")
    finite_loss, calls = odd.loss, []

    def nan_gradient_on_the_third_batch(batch):
        calls.append(1)
        loss = finite_loss(batch)
        if len(calls) != 3:
            return loss
        weight = next(odd.net.parameters())
        return loss + torch.sqrt(0.0 * weight.sum())  # the same finite value; d sqrt/dx at 0 is infinite

    odd.loss = nan_gradient_on_the_third_batch
    before = [p.detach().clone() for p in odd.net.parameters()]
    assert odd.train(show_progress=False) == 8
    assert all(torch.isfinite(p).all() for p in odd.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, odd.net.parameters()))
    log = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert sum(record.get("skipped_non_finite", 0) for record in log) == 1  # batch 3 of iterations 6-8


def test_gradient_clip_bounds_every_step(pool, tmp_path):
    config = tiny_train_config(pool, iterations=3)
    config = config.model_copy(update={"stage1": config.stage1.model_copy(update={"gradient_clip": 1e-3})})
    trainer = StageTrainer(config, "stage1", tmp_path / "run")
    huge = trainer.loss
    trainer.loss = lambda batch: 1e6 * huge(batch)  # an outlier batch's gradient
    norms = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in trainer.net.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    assert trainer.train(show_progress=False) == 3
    assert len(norms) == 3 and max(norms) <= 1e-3 * 1.001


def test_time_budget_stops_cleanly_with_a_checkpoint(pool, tmp_path):
    trainer = StageTrainer(tiny_train_config(pool, iterations=1000), "stage2", tmp_path / "run")
    reached = trainer.train(max_minutes=0.02, show_progress=False)
    assert 0 < reached < 1000
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    assert state["iteration"] == reached
    assert not list((tmp_path / "run" / "stage2").glob("*.part"))  # atomic writes leave no temp file


def test_training_survives_kill_9_and_resumes(pool, tmp_path):
    """SIGKILL at arbitrary moments (often mid-write: a checkpoint is written every iteration)
    leaves a loadable checkpoint, and the same command goes on from it."""
    import signal
    import subprocess
    import sys
    import time

    config_path = _write_config(tmp_path, tiny_train_config(pool, iterations=100000))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "napari_etdms.cli", "train", "-c", str(config_path), "-s", "1",
               "--run-dir", str(run), "--device", "cpu"]
    checkpoint = run / "stage1" / "checkpoint.pt"
    reached = []
    for pause in (0.7, 1.3, 0.4):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        start = torch.load(checkpoint, weights_only=True)["iteration"] if checkpoint.is_file() else 0
        while time.monotonic() < deadline and (not checkpoint.is_file() or
                                               torch.load(checkpoint, weights_only=True)["iteration"] <= start):
            time.sleep(0.05)
        time.sleep(pause)
        process.send_signal(signal.SIGKILL)
        process.wait()
        reached.append(torch.load(checkpoint, weights_only=True)["iteration"])  # never a torn file
    assert reached == sorted(reached) and reached[0] > 0 and reached[-1] > reached[0]  # each run went on
    config_path.write_text(tiny_train_config(pool, iterations=reached[-1] + 2).model_dump_json())
    assert subprocess.run(command, capture_output=True, timeout=120).returncode == 0
    assert torch.load(checkpoint, weights_only=True)["iteration"] == reached[-1] + 2


def test_optimizer_and_learning_rate_schedule_come_from_the_config(pool, tmp_path):
    config = tiny_train_config(pool, iterations=5)
    scheduled = config.stage1.model_copy(update={"optimizer": "adamw", "weight_decay": 0.01,
                                                 "lr_milestones": (2, 4), "lr_gamma": 0.1})
    trainer = StageTrainer(config.model_copy(update={"stage1": scheduled}), "stage1", tmp_path / "run")
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["weight_decay"] == 0.01
    rate = config.stage1.learning_rate
    assert [trainer.learning_rate_at(i) for i in range(6)] == pytest.approx([rate, rate, rate / 10, rate / 10,
                                                                           rate / 100, rate / 100])
    trainer.train(show_progress=False)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(rate / 100)  # the last step's rate


def test_finetune_needs_stage1(pool, tmp_path):
    with pytest.raises(FileNotFoundError, match="stage 1 must be trained"):
        StageTrainer(tiny_train_config(pool), "finetune", tmp_path / "empty")


def _ddp_worker(rank, world, port, config_json, run_dir, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = StageTrainer(TrainConfig.model_validate_json(config_json), "stage1", run_dir)
        trainer.train(show_progress=False)
        results[rank] = [p.detach().clone() for p in trainer.net.parameters()][0]
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_data_parallel_on_cpu_with_gloo(pool, tmp_path):
    port = _free_port()
    manager = torch.multiprocessing.Manager()
    results = manager.dict()
    config = tiny_train_config(pool, iterations=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, config.model_dump_json(), tmp_path / "ddp", results),
                                nprocs=2, join=True)
    assert set(results.keys()) == {0, 1}
    assert torch.equal(results[0], results[1])  # gradients were averaged across ranks
    assert (tmp_path / "ddp" / "stage1" / "checkpoint.pt").is_file()


def _write_config(folder, config):
    path = folder / "config.json"
    path.write_text(config.model_dump_json())
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_command_under_torchrun_joins_one_process_group(pool, tmp_path):
    """`torchrun -m napari_etdms.cli train`: two CPU processes over gloo train one model;
    only rank 0 writes, and a time budget stops both ranks at the same iteration."""
    import subprocess
    import sys

    config_path = _write_config(tmp_path, tiny_train_config(pool, iterations=2))
    run = tmp_path / "run"

    def torchrun(*extra):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   "-m", "napari_etdms.cli", "train", "-c", str(config_path), "-s", "1", "--run-dir", str(run),
                   "--device", "cpu", *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=240)

    done = torchrun()
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("stage1: iteration 2/2") == 1  # rank 0 alone reports
    records = [json.loads(line) for line in (run / "stage1" / "log.jsonl").read_text().splitlines()]
    logged = [record["iteration"] for record in records if "runtime" not in record]
    assert logged == [1, 2, 2]  # losses at 1 and 2, validation at 2: one writer, no duplicates
    (runtime,) = [record["runtime"] for record in records if "runtime" in record]  # what the steps ran with
    assert runtime["precision"] in ("float32", "bfloat16") and runtime["precision_reason"]
    assert "shared by 2 processes" in runtime["threads_reason"]  # the two ranks split the cores

    config_path.write_text(tiny_train_config(pool, iterations=100000).model_dump_json())
    budget = torchrun("--max-minutes", "0.05")
    assert budget.returncode == 0, budget.stderr[-2000:]
    reached = torch.load(run / "stage1" / "checkpoint.pt", weights_only=True)["iteration"]
    assert 2 < reached < 100000
    assert f"stage1: iteration {reached}/100000" in budget.stdout


def test_a_split_finds_its_frames_in_a_moved_folder(pool, tmp_path, capsys):
    from napari_etdms.cli import main

    run = tmp_path / "run"
    assert main(["train", "-c", str(_write_config(tmp_path, tiny_train_config(pool, iterations=1))), "-s", "1",
                 "--run-dir", str(run)]) == 0
    recorded = validation_frames(run / "split.json")
    moved = pool.rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="give the folder that holds them"):
        validation_frames(run / "split.json")
    assert validation_frames(run / "split.json", moved) == [moved / p.name for p in recorded]
    assert main(["eval", "--split", str(run / "split.json"), "-o", str(tmp_path / "report")]) == 1
    assert "--frames-dir" in capsys.readouterr().err
    assert main(["eval", "--frames-dir", str(moved), "-o", str(tmp_path / "report")]) == 2
    assert "give --split too" in capsys.readouterr().err

    # the folder named wins over a recorded path that still exists
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    assert validation_frames(run / "split.json", copy) == [copy / p.name for p in recorded]


def test_training_reads_png_16_bit_and_listed_frames_and_refuses_what_is_not_one_frame(tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    frames = {"a.png": sem_like((96, 96), np.uint8, seed=1), "b.tif": sem_like((96, 96), np.uint16, seed=2)}
    Image.fromarray(frames["a.png"]).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", frames["b.tif"])
    (tmp_path / "frames.csv").write_text("file,licence\nmixed/a.png,MIT\nmixed/b.tif,MIT\n")
    (tmp_path / "frames.txt").write_text("mixed/a.png\n\nmixed/b.tif\n")
    expected = [folder / "a.png", folder / "b.tif"]
    assert list_frames([tmp_path / "frames.csv"]) == list_frames([tmp_path / "frames.txt"]) == expected
    assert sorted(list_frames([folder])) == expected
    for name, original in frames.items():
        normalised = load_normalised(folder / name)
        assert normalised.shape == original.shape and normalised.dtype.kind == "f"
        assert -0.05 <= normalised.min() < 0.05 and 0.95 < normalised.max() <= 1.05
        assert np.corrcoef(normalised.ravel(), original.astype(float).ravel())[0, 1] > 0.99

    tifffile.imwrite(folder / "stack.tif", np.stack([frames["a.png"]] * 3), photometric="minisblack")
    with pytest.raises(ValueError, match="stack.tif: expected one 2D frame"):
        load_normalised(folder / "stack.tif")
    colour = np.stack([frames["a.png"], frames["a.png"][::-1], frames["a.png"]], axis=-1)
    Image.fromarray(colour).save(folder / "colour.png")
    with pytest.raises(ValueError, match="true-colour"):
        load_normalised(folder / "colour.png")


def test_a_stage_can_demand_cleaner_targets(pool, tmp_path):
    config = tiny_train_config(pool)
    strict = config.model_copy(update={"stage2": config.stage2.model_copy(update={"max_target_noise": 1e-6})})
    with pytest.raises(ValueError, match="no training frame is below max_target_noise"):
        StageTrainer(strict, "stage2", tmp_path / "run")
    loose = config.model_copy(update={"stage2": config.stage2.model_copy(update={"max_target_noise": 0.2})})
    assert StageTrainer(loose, "stage2", tmp_path / "run").train_frames >= 3


def test_train_command_runs_all_stages_and_exports(pool, tmp_path, capsys):
    from napari_etdms.cli import main

    config_path = tmp_path / "tiny.json"
    config_path.write_text(tiny_train_config(pool, iterations=2).model_dump_json())
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "-c", str(config_path), "-s", "0", "--run-dir", str(run), "--export", str(out)]) == 0
    assert "1 frames noisier than max_target_noise=0.2 are not used: pure_noise.tif" in capsys.readouterr().out
    assert {p.name for p in run.iterdir()} >= {"stage1", "stage2", "finetune", "split.json"}
    entry = resolve(out)
    assert entry.name == "tiny-run" and set(entry.files) == {"denoiser", "clsr"}
    # a second call resumes: every stage is complete, nothing is retrained
    assert main(["train", "-c", str(config_path), "-s", "1", "--run-dir", str(run)]) == 0
    assert torch.load(run / "stage1" / "checkpoint.pt", weights_only=True)["iteration"] == 2


def test_a_run_stopped_by_its_budget_is_not_exported_and_says_so(pool, tmp_path, capsys):
    from napari_etdms.cli import main

    config_path = _write_config(tmp_path, tiny_train_config(pool, iterations=100000))
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "-c", str(config_path), "-s", "1", "--run-dir", str(run), "--max-minutes", "0.01",
                 "--export", str(out)]) == 0
    assert (run / "stage1" / "checkpoint.pt").is_file() and not out.exists()
    assert "not exported: stage1 stopped before its last iteration" in capsys.readouterr().err


def test_runs_record_every_config_they_were_trained_under(pool, tmp_path):
    from napari_etdms.cli import main

    config = tiny_train_config(pool, iterations=2)
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "-c", str(_write_config(tmp_path, config)), "-s", "0", "--run-dir", str(run)]) == 0
    # continued with a lower learning rate, as one does by hand
    slower = config.stage1.model_copy(update={"iterations": 4, "learning_rate": 1e-5})
    longer = config.model_copy(update={"stage1": slower})
    path = _write_config(tmp_path, longer)
    assert main(["train", "-c", str(path), "-s", "1", "--run-dir", str(run)]) == 0
    assert main(["train", "-c", str(path), "-s", "1", "--run-dir", str(run)]) == 0  # same settings: no new entry
    assert main(["train", "-c", str(path), "-s", "0", "--run-dir", str(run), "--export", str(out)]) == 0

    record = json.loads((out / "training.json").read_text())
    assert set(record) == {"stage1", "stage2", "finetune"}
    assert record["stage1"]["iterations"] == 4
    history = record["stage1"]["settings"]
    assert [h["from_iteration"] for h in history] == [0, 2]
    assert [h["config"]["stage1"]["learning_rate"] for h in history] == [config.stage1.learning_rate, 1e-5]
    assert history[0]["config"]["data"]["inputs"] == [str(pool)]  # resolved paths
    assert len(record["finetune"]["settings"]) == 1
    # settings under which no step ran (the stage already complete) are not on record
    untrained = longer.model_copy(update={"stage1": slower.model_copy(update={"learning_rate": 3e-5})})
    assert main(["train", "-c", str(_write_config(tmp_path, untrained)), "-s", "1", "--run-dir", str(run)]) == 0
    assert len(read_settings_history(run / "stage1" / "settings.jsonl")) == 2


def test_bad_training_config_is_a_clear_error(tmp_path, capsys):
    from napari_etdms.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "data": {"inputs": []}, "stage1": {"iterashuns": 5}}))
    assert main(["train", "-c", str(bad)]) == 1
    assert "unknown key 'stage1.iterashuns'" in capsys.readouterr().err


def test_stage2_learns_the_scaled_detail_over_the_clean_low_res_frame(pool, tmp_path):
    from napari_etdms.diffusion.target import from_target, upsample_condition

    config = tiny_train_config(pool)
    residual = DiffusionConfig(target="residual", target_scale=4.0)
    config = config.model_copy(update={"model": config.model.model_copy(update={"diffusion": residual})})
    trainer = StageTrainer(config, "stage2", tmp_path / "run")
    seen = []
    trainer.schedule.training_loss = lambda predict, x0, loss: seen.append(x0) or x0.abs().mean()
    degraded, clean_lr, clean_hr = (torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 64, 64))
    for _ in range(2):  # the condition gets fresh noise each time; the target must not follow it
        trainer.loss({"degraded": degraded, "clean_lr": clean_lr, "clean_hr": clean_hr})
    assert torch.equal(seen[0], seen[1])
    assert torch.allclose(seen[0], 4.0 * (clean_hr - upsample_condition(clean_lr)), atol=1e-5)
    assert torch.allclose(from_target(seen[0], upsample_condition(clean_lr), residual), clean_hr, atol=1e-5)


def test_resuming_takes_the_learning_rate_from_the_config(pool, tmp_path):
    config = tiny_train_config(pool, iterations=2)
    StageTrainer(config, "stage1", tmp_path / "run").train(show_progress=False)
    gentler = config.model_copy(update={"stage1": config.stage1.model_copy(update={"learning_rate": 1e-5})})
    resumed = StageTrainer(gentler, "stage1", tmp_path / "run")
    assert resumed.iteration == 2
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [1e-5]


def test_stage1_can_grow_from_a_shallower_trained_denoiser(pool, tmp_path):
    config = tiny_train_config(pool, iterations=2)
    StageTrainer(config, "stage1", tmp_path / "shallow", "cpu").train(show_progress=False)
    source = tmp_path / "shallow" / "stage1" / "checkpoint.pt"
    swinir = config.model.swinir.model_copy(update={"depths": (1, 1), "num_heads": (2, 2)})
    deeper = config.model_copy(update={
        "model": config.model.model_copy(update={"swinir": swinir}),
        "stage1": config.stage1.model_copy(update={"grow_from": str(source)}),
    })
    grown = StageTrainer(deeper, "stage1", tmp_path / "deep", "cpu")
    shallow = build_denoiser(config.model)
    shallow.load_state_dict(torch.load(source, weights_only=True)["ema"]["module"])
    x = torch.randn(1, 1, 16, 16)
    assert len(grown.net.groups) == 2
    assert torch.allclose(grown.net(x), shallow(x), atol=1e-6)
    assert grown.train(show_progress=False) == 2
    with pytest.raises(ValueError, match="only stage 1"):
        TrainConfig.model_validate({**deeper.model_dump(mode="json"), "stage2": deeper.stage1.model_dump(mode="json")})
    # an exported denoiser (a bare state dict) serves as well as a training checkpoint
    exported = tmp_path / "denoiser.pt"
    torch.save(shallow.state_dict(), exported)
    from_export = deeper.model_copy(update={"stage1": deeper.stage1.model_copy(update={"grow_from": str(exported)})})
    assert torch.allclose(StageTrainer(from_export, "stage1", tmp_path / "e", "cpu").net(x), shallow(x), atol=1e-6)


def test_finetune_grows_the_measured_input_from_another_run_s_clsr(pool, tmp_path):
    from napari_etdms.cli import main
    from napari_etdms.models import build_clsr

    config = tiny_train_config(pool, iterations=2)
    for stage in ("stage1", "stage2"):
        StageTrainer(config, stage, tmp_path / "base").train(show_progress=False)
    source = tmp_path / "base" / "stage2" / "checkpoint.pt"
    measured = config.model.model_copy(update={"clsr": config.model.clsr.model_copy(update={"measured_input": True})})
    grown = config.model_copy(update={
        "model": measured, "finetune": config.finetune.model_copy(update={"grow_from": str(source)}),
    })
    trainer = StageTrainer(grown, "finetune", tmp_path / "base")  # stage 1 of base conditions it
    plain = build_clsr(config.model)
    plain.load_state_dict(torch.load(source, weights_only=True)["ema"]["module"])
    x, cond, t = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 8, 8), torch.tensor([7])
    assert torch.allclose(trainer.net(x, trainer.net.condition(cond, cond), t), plain(x, cond, t), atol=1e-6)

    path = tmp_path / "grown.json"
    path.write_text(grown.model_dump_json())
    run = tmp_path / "grown"
    assert main(["train", "-c", str(path), "-s", "0", "--run-dir", str(run)]) == 0
    assert not (run / "stage2").exists()  # the fine-tune started from the other run, not this run's stage 2
    state = torch.load(run / "finetune" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2 and "measured_in.weight" in state["ema"]["module"]
    log = [json.loads(line) for line in (run / "finetune" / "log.jsonl").read_text().splitlines()]
    assert any(np.isfinite(rec["validation"]["psnr"]) for rec in log if "validation" in rec)


def test_stage1_loss_is_selectable(pool, tmp_path):
    config = tiny_train_config(pool)
    batch = {"degraded": torch.rand(2, 1, 16, 16), "clean_lr": torch.rand(2, 1, 16, 16)}
    for name, reference in (("l1", torch.nn.functional.l1_loss), ("mse", torch.nn.functional.mse_loss)):
        chosen = config.model_copy(update={"stage1": config.stage1.model_copy(update={"loss": name})})
        trainer = StageTrainer(chosen, "stage1", tmp_path / name)
        with torch.no_grad():
            expected = reference(trainer.net(batch["degraded"]), batch["clean_lr"])
            assert torch.allclose(trainer.loss(batch), expected)
    with pytest.raises(ValueError, match="stage1.residual_over"):
        TrainConfig.model_validate({**config.model_dump(mode="json"), "stage1": {"residual_over": "condition"}})


@pytest.mark.parametrize("residual_over", ["clean", "condition"])
def test_diffusion_stages_take_the_loss_and_the_residual_base(pool, tmp_path, residual_over):
    from napari_etdms.diffusion.target import upsample_condition

    config = tiny_train_config(pool)
    residual = DiffusionConfig(target="residual", target_scale=4.0, prediction="v")
    config = config.model_copy(update={
        "model": config.model.model_copy(update={"diffusion": residual}),
        "stage2": config.stage2.model_copy(update={"loss": "mse", "residual_over": residual_over}),
    })
    trainer = StageTrainer(config, "stage2", tmp_path / "run")
    seen = []
    trainer.schedule.training_loss = lambda predict, x0, loss: seen.append((x0, loss)) or x0.abs().mean()
    trainer.recipe.condition = lambda batch, generator=None: batch["degraded"]  # a condition unlike the clean frame
    degraded, clean_lr, clean_hr = (torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16), torch.rand(2, 1, 64, 64))
    trainer.loss({"degraded": degraded, "clean_lr": clean_lr, "clean_hr": clean_hr})
    x0, loss = seen[0]
    base = degraded if residual_over == "condition" else clean_lr
    assert loss == "mse"
    assert torch.allclose(x0, 4.0 * (clean_hr - upsample_condition(base)), atol=1e-5)


def test_export_pairs_a_new_denoiser_with_the_clsr_of_other_weights(pool, tmp_path, tiny_weights):
    from napari_etdms.weights import load_state

    config = tiny_train_config(pool, iterations=2)
    StageTrainer(config, "stage1", tmp_path / "run").train(show_progress=False)
    entry = export(tmp_path / "run", config, tmp_path / "paired", clsr_from=str(tiny_weights.folder))
    clsr = load_state(entry, "clsr")
    assert all(torch.equal(clsr[k], v) for k, v in load_state(tiny_weights, "clsr").items())
    record = json.loads((entry.folder / "training.json").read_text())
    assert record["stage1"]["iterations"] == 2
    assert record["clsr"] == {"from_weights": "tiny-test", "hash": tiny_weights.short_hash,
                              "sha256": tiny_weights.files["clsr"]["sha256"]}
    other = config.model.model_copy(update={"clsr": config.model.clsr.model_copy(update={"inner_channels": 8})})
    with pytest.raises(ValueError, match="another configuration"):
        export(tmp_path / "run", config.model_copy(update={"model": other}), tmp_path / "x",
               clsr_from=str(tiny_weights.folder))


def _noise_aware(config):
    swinir = config.model.swinir.model_copy(update={"noise_map": True})
    return config.model_copy(update={"model": config.model.model_copy(update={"swinir": swinir})})


def test_noise_aware_stage1_learns_the_noiseless_frame_in_units_of_its_noise(pool, tmp_path):
    from napari_etdms.stage1.noise import Stabiliser
    from napari_etdms.training.recipes import fitted_noise, refit

    config = _noise_aware(tiny_train_config(pool))
    trainer = StageTrainer(config, "stage1", tmp_path / "run")
    batch = trainer.stream.fixed_batch(4, seed=1)
    assert set(batch) == {"degraded", "clean_lr", "clean_hr", "noiseless", "noise", "noise_estimate", "fit"}
    # the CLSR's stage never runs the denoiser: its crops skip the estimate
    assert "noise_estimate" not in StageTrainer(config, "stage2", tmp_path / "run").stream.fixed_batch(1, seed=1)
    loss = trainer.loss(batch)
    gain, offset = fitted_noise(batch)
    stab = Stabiliser(gain, offset)
    u = stab.forward((refit(batch, "degraded").double() + 1) / 2).float()
    with torch.no_grad(), trainer.autocast():
        out = trainer.net(u, stab.sigma.float())
    restored = (stab.inverse(out.double()) * 2 - 1).float()
    level = stab.sigma.float().clamp(min=0.01)
    expected = torch.nn.functional.l1_loss(restored / level, refit(batch, "noiseless") / level)
    assert torch.allclose(loss, expected, rtol=1e-4)
    # a noise-free crop is passed through whatever the network has learnt
    clean = {**batch, "degraded": batch["noiseless"], "noise_estimate": torch.zeros_like(batch["noise"])}
    assert trainer.recipe.validate(trainer.ema.module, clean)["psnr"] > 60
    assert trainer.train(show_progress=False) == 3


def test_noisy_frames_train_down_sampled_and_held_out_sources_only_validate(tmp_path):
    frames = {f"labA__scene{i}.tif": sem_like((256, 256), np.uint8, seed=i) for i in range(4)}
    frames["labB__other.tif"] = sem_like((256, 256), np.uint8, seed=7)
    grain = np.random.default_rng(0).normal(0, 0.08, (256, 256))
    frames["labA__grainy.tif"] = sem_like((256, 256), np.float32, seed=8) + grain
    folder = write_frames(tmp_path / "pool", frames)
    config = tiny_train_config(folder)
    data = config.data.model_copy(update={"noisy_frames": "downsample", "held_out_sources": ["labB"],
                                          "max_target_noise": 0.06})
    config = config.model_copy(update={"data": data})
    StageTrainer(config, "stage1", tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["held_out_sources"] == ["labB"]
    assert any(r["path"].endswith("labB__other.tif") for r in split["validation"])
    assert not any("labB__" in r["path"] for r in split["train"])
    grainy = [r for r in split["train"] if r["path"].endswith("grainy.tif")]
    assert len(grainy) == 1 and grainy[0]["downsample"] in (2, 4) and grainy[0]["noise_sigma"] > 0.06
