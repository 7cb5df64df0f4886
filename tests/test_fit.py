"""fit: the loop's mechanics on real and generated signals (not speed, not regime quality)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from intstream.errors import InputError
from intstream.fit import FitConfig, fit
from intstream.ingest import ingest
from intstream.models import ModelConfig, build_model, predict
from intstream.store import open_store
from intstream.teach import InCoreTeacher, resolve_teacher
from intstream.testing import make_image_store

SMALL = dict(width=48, depth=4, log_every=20)


@pytest.fixture(scope="module")
def kodak_crop(tmp_path_factory, data_dir):
    """A 48x64 crop of Kodak image 05 as a store."""
    d = tmp_path_factory.mktemp("crop")
    im = np.asarray(Image.open(data_dir / "kodak" / "kodim05.png"))[200:248, 300:364]
    Image.fromarray(im).save(d / "crop.png")
    return ingest(d / "crop.png", d / "crop.zarr")["store"]


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.parametrize("strategy", ["full", "int", "random", "intstream"])
def test_every_strategy_learns_a_kodak_crop(kodak_crop, tmp_path, strategy):
    m = fit(kodak_crop, tmp_path / "run", FitConfig(steps=200, strategy=strategy, **SMALL))
    assert m["steps"] == 200 and not m["out_of_core"]
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(20, 201, 20))
    # A 4x48 SIREN reaches well above the ~11 dB of predicting zeros and keeps improving.
    assert m["train_psnr"] > 22, m
    assert log[-1]["psnr"] > log[0]["psnr"] + 3


def test_int_selects_the_topk_of_the_current_error(kodak_crop):
    store = open_store(kodak_crop)
    coords, targets = (torch.from_numpy(a) for a in store.load_all())
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3, width=32, depth=3))
    cfg = resolve_teacher("int")
    teacher = InCoreTeacher(cfg, coords, targets, 5000, torch.Generator().manual_seed(0))
    x, y, info = teacher.batch(0, model)
    err = (predict(model, coords) - targets).abs().sum(1).numpy()
    k = int(0.2 * len(err))
    oracle = np.argsort(-err, kind="stable")[:k]
    assert info["selected"] and x.shape[0] == k
    np.testing.assert_array_equal(np.sort(teacher.index.numpy()), np.sort(oracle))
    np.testing.assert_array_equal(y.numpy(), targets.numpy()[teacher.index.numpy()])
    # Reused until the next selection (interval 1 during the first 25%: step 1 selects again).
    assert teacher.batch(1, model)[2]["selected"]
    teacher.total_steps = 100
    teacher._select_at = {0, 25, 35}
    assert not teacher.batch(26, model)[2]["selected"]


def test_paper_defaults_are_resolved():
    cfg = resolve_teacher("int")
    assert (cfg.ratio, cfg.ratio_schedule, cfg.interval_schedule, cfg.random_share) == (0.2, "step", "incremental", 0.0)
    full = resolve_teacher("full", ratio=0.3)
    assert full.ratio == 1.0 and full.random_share == 0.0
    with pytest.raises(ValueError):
        resolve_teacher("int", bogus=1)


def test_same_seed_same_weights(kodak_crop, tmp_path):
    a = fit(kodak_crop, tmp_path / "a", FitConfig(steps=30, strategy="intstream", **SMALL))
    b = fit(kodak_crop, tmp_path / "b", FitConfig(steps=30, strategy="intstream", **SMALL))
    assert a["train_psnr"] == b["train_psnr"]
    for k, v in _weights(tmp_path / "a").items():
        assert torch.equal(v, _weights(tmp_path / "b")[k])


def _sigterm_after_first_log(run_dir):
    """SIGTERM this process once the run has logged a line (like an HPC preemption)."""

    def fire():
        log = run_dir / "log.jsonl"
        for _ in range(2000):
            if log.exists() and log.read_text().strip():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("strategy", ["int", "intstream", "random"])
def test_interrupted_and_resumed_equals_uninterrupted(kodak_crop, tmp_path, strategy):
    cfg = FitConfig(steps=120, strategy=strategy, **SMALL)
    ref = fit(kodak_crop, tmp_path / "ref", cfg)
    t = _sigterm_after_first_log(tmp_path / "cut")
    cut = fit(kodak_crop, tmp_path / "cut", cfg)
    t.join()
    assert cut["interrupted"] == "SIGTERM" and 20 <= cut["steps"] < 120
    resumed = fit(kodak_crop, tmp_path / "cut", cfg, resume=True)
    assert resumed["steps"] == 120
    ref_w, res_w = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    ref_log = (tmp_path / "ref" / "log.jsonl").read_text().splitlines()
    res_log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(a)["loss"] for a in ref_log] == [json.loads(b)["loss"] for b in res_log]


def test_existing_run_needs_resume_or_overwrite(kodak_crop, tmp_path):
    fit(kodak_crop, tmp_path / "run", FitConfig(steps=5, **SMALL))
    with pytest.raises(InputError, match="--resume"):
        fit(kodak_crop, tmp_path / "run", FitConfig(steps=5, **SMALL))
    assert fit(kodak_crop, tmp_path / "run", FitConfig(steps=5, **SMALL), overwrite=True)["steps"] == 5
    # Resuming a finished run does nothing more.
    assert fit(kodak_crop, tmp_path / "run", FitConfig(steps=5, **SMALL), resume=True)["steps"] == 5


def test_target_psnr_and_time_budget_stop_early(kodak_crop, tmp_path):
    m = fit(kodak_crop, tmp_path / "t", FitConfig(steps=2000, target_psnr=15.0, **SMALL))
    assert m["stopped"] == "target_psnr" and m["steps"] < 2000 and m["train_psnr"] >= 15.0
    m = fit(kodak_crop, tmp_path / "b", FitConfig(steps=100000, time_budget=0.5, **SMALL))
    assert m["stopped"] == "time_budget" and m["steps"] < 100000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A generated 192x256 image in 48x64 chunks (16 chunks), trained out of core."""
    return make_image_store(tmp_path_factory.mktemp("ooc") / "g.zarr", (192, 256), chunks=(48, 64))


OOC = dict(width=32, depth=3, log_every=10, memory_budget=200_000, round_steps=5)


def test_out_of_core_rounds_learn_and_visit_every_chunk(big_store, tmp_path):
    from intstream.teach.rounds import OutOfCoreTeacher

    m = fit(big_store, tmp_path / "run", FitConfig(steps=150, strategy="int", **OOC))
    assert m["out_of_core"] and m["steps"] == 150
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    last = ck["teacher"]["last_round"].numpy()
    rounds = ck["teacher"]["round"]
    assert (last >= 0).all(), "every chunk was scored at least once"
    # Staleness bound: no chunk waits more than ceil(n_chunks / n_oldest) rounds.
    store = open_store(big_store)
    t = OutOfCoreTeacher(resolve_teacher("int"), store, 150, torch.Generator(), model_cfg=ModelConfig(2, 3, width=32, depth=3),
                         device=torch.device("cpu"), memory_budget=200_000, round_steps=5, prefetch=False)
    bound = -(-t.n_chunks // t.n_oldest)
    assert (rounds - 1 - last).max() < bound
    assert m["train_psnr"] is not None and m["train_psnr"] > 14


def test_out_of_core_matches_in_core_selection_when_one_round_holds_everything(big_store):
    """One round over every chunk is the paper's global top-k."""
    from intstream.teach.rounds import OutOfCoreTeacher

    store = open_store(big_store)
    torch.manual_seed(1)
    mcfg = ModelConfig(2, 3, width=32, depth=3)
    model = build_model(mcfg)
    cfg = resolve_teacher("int")
    ooc = OutOfCoreTeacher(cfg, store, 1000, torch.Generator().manual_seed(0), model_cfg=mcfg, device=torch.device("cpu"),
                           memory_budget=1 << 30, round_chunks=16, prefetch=False)
    x, y, _ = ooc.batch(0, model)
    coords, targets = (torch.from_numpy(a) for a in store.load_all())
    inc = InCoreTeacher(cfg, coords, targets, 1000, torch.Generator().manual_seed(0))
    xi, yi, _ = inc.batch(0, model)
    order = lambda a: np.lexsort(a.numpy().T)
    np.testing.assert_allclose(x.numpy()[order(x)], xi.numpy()[order(xi)], atol=1e-6)


def test_out_of_core_resume_is_bit_identical(big_store, tmp_path):
    cfg = FitConfig(steps=60, strategy="intstream", **OOC)
    fit(big_store, tmp_path / "ref", cfg)
    t = _sigterm_after_first_log(tmp_path / "cut")
    cut = fit(big_store, tmp_path / "cut", cfg)
    t.join()
    assert cut["interrupted"] == "SIGTERM"
    fit(big_store, tmp_path / "cut", cfg, resume=True)
    ref_w, res_w = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k


def test_cli_sigterm_checkpoints_and_resume_finishes(kodak_crop, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "intstream.cli", "fit", kodak_crop, "-o", str(run), "--steps", "100000",
           "--width", "32", "--depth", "3", "--log-every", "5"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = run / "log.jsonl"
    for _ in range(600):
        if log.exists() and log.read_text().strip():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    manifest = json.loads(out.strip().splitlines()[-1])
    assert manifest["interrupted"] == "SIGTERM" and (run / "checkpoint.pt").exists()
    assert "--resume" in err
    done = subprocess.run(cmd[:-6] + ["--steps", "100000", "--resume", "--time-budget", "0.3"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    again = json.loads(done.stdout.strip())
    assert again["steps"] > manifest["steps"]


def test_fit_refuses_an_incomplete_store(tmp_path):
    from click.testing import CliRunner

    from intstream.cli import main

    store = make_image_store(tmp_path / "s.zarr", (16, 16))
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["intstream"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["fit", str(store), "-o", str(tmp_path / "run"), "--steps", "2"])
    assert r.exit_code == 2
    assert "incomplete" in r.output and not (tmp_path / "run").exists()
