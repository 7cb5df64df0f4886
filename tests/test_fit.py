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
    n = open_store(kodak_crop).n_samples
    if strategy == "full":
        assert m["samples_trained"] == 200 * n
    elif strategy == "intstream":  # a constant 20% selection
        assert m["samples_trained"] == 200 * int(0.2 * n)
        # It asks for bf16 scores; what ran depends on whether this CPU has native bf16.
        from intstream.models.mlp import bf16_native

        ran = json.loads((tmp_path / "run" / "config.json").read_text())["score_dtype_runs"]
        assert ran == ("bfloat16" if bf16_native("cpu") else "float32")
    else:  # the step schedule's ratios between 0.2 and 1
        assert 200 * int(0.2 * n) < m["samples_trained"] < 200 * n
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
    b = teacher.batch(0, model)
    (x, y, _), = b.parts
    err = (predict(model, coords) - targets).abs().sum(1).numpy()
    k = int(0.2 * len(err))
    oracle = np.argsort(-err, kind="stable")[:k]
    assert b.selected and x.shape[0] == k == b.n
    np.testing.assert_array_equal(np.sort(teacher.index.numpy()), np.sort(oracle))
    np.testing.assert_array_equal(y.numpy(), targets.numpy()[teacher.index.numpy()])
    # Reused until the next selection (interval 1 during the first 25%: step 1 selects again).
    assert teacher.batch(1, model).selected
    teacher.total_steps = 100
    teacher._select_at = {0, 25, 35}
    assert not teacher.batch(26, model).selected


def test_decaying_ratio_starts_full_batch_and_its_steps_refresh_every_estimate(kodak_crop):
    """decay:F: every sample at first (no scoring, no weights), its forwards filling the
    pool's error cache, then importance draws of r0 N from those estimates by F T."""
    store = open_store(kodak_crop)
    coords, targets = (torch.from_numpy(a) for a in store.load_all())
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3, width=16, depth=2))
    cfg = resolve_teacher("intstream", ratio_schedule="decay:0.1", pool=0.125, interval_schedule="fixed:1")
    teacher = InCoreTeacher(cfg, coords, targets, 100, torch.Generator().manual_seed(0))
    b = teacher.batch(0, model)
    (x, y, w), = b.parts
    assert b.n == coords.shape[0] and w is None and teacher.index is None
    assert torch.isinf(teacher.cache).all()  # no scoring forward on a full-batch step
    with torch.no_grad():
        pred = model(x)
    teacher.observe(pred)
    np.testing.assert_allclose(teacher.cache.numpy(), (pred - targets).abs().sum(1).numpy(), rtol=1e-6)
    assert 0.2 < b.ratio == 1.0
    half = teacher.batch(5, model)  # halfway down: r = 0.2 + 0.8 / 2
    assert half.n == int(0.6 * coords.shape[0]) and half.parts[0][2] is not None
    late = teacher.batch(10, model)
    assert late.n == int(0.2 * coords.shape[0]) and late.ratio == pytest.approx(0.2, abs=1e-3)


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
    # The run's sample count spans both processes; the rate counts this process's only.
    assert 0 < cut["samples_trained"] < resumed["samples_trained"] == ref["samples_trained"]
    assert resumed["samples_per_second"] > 0
    ref_w, res_w = _weights(tmp_path / "ref"), _weights(tmp_path / "cut")
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    ref_log = (tmp_path / "ref" / "log.jsonl").read_text().splitlines()
    res_log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(a)["loss"] for a in ref_log] == [json.loads(b)["loss"] for b in res_log]
    # The teacher's map (eval --plot's teacher.png) counts the steps before the cut too.
    with np.load(tmp_path / "ref" / "teacher_map.npz") as a, np.load(tmp_path / "cut" / "teacher_map.npz") as b:
        assert a["selected"].sum() > 0
        for k in ("error", "selected"):
            np.testing.assert_array_equal(a[k], b[k])


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


@pytest.mark.parametrize("out_of_core", [False, True])
def test_time_budget_without_steps_fits_T_and_anneals(kodak_crop, tmp_path, out_of_core, monkeypatch):
    """--time-budget alone: T is refitted from the measured rate and the LR's cosine
    follows it to lr_min, in core and in rounds; a resume keeps the fitted T. Checked on the
    logged LR against the cosine of the fitted T, whatever the machine's speed."""
    monkeypatch.setattr(sys.modules["intstream.fit"], "RETIME_MIN_STEPS", 3)  # a loaded CI machine: few steps
    cfg = FitConfig(time_budget=3.0, log_every=5, out_of_core=out_of_core, **{k: v for k, v in SMALL.items()
                                                                              if k != "log_every"})
    m = fit(kodak_crop, tmp_path / "run", cfg)
    T, lr0 = m["total_steps"], 1e-3
    default_T = 10000  # image's 5000 x intstream's step factor 2
    assert T != default_T and T > 3
    assert m["stopped"] in (None, "time_budget") and (m["stopped"] or m["steps"] == T)
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    late = [r for r in log if r["step"] > 0.75 * T]  # past the last refit (at half the budget)
    assert late, "no log lines after the refit"
    for r in late:  # the LR used at the step after r["step"]: the cosine of a T-step run
        want = 1e-6 + (lr0 - 1e-6) * (1 + np.cos(np.pi * r["step"] / T)) / 2
        assert r["lr"] == pytest.approx(want, rel=1e-4, abs=1e-9)
    if m["stopped"] is None:
        assert log[-1]["lr"] == pytest.approx(1e-6, rel=1e-3)
    again = fit(kodak_crop, tmp_path / "run", cfg, resume=True)
    assert again["total_steps"] == T and again["steps"] == T


def test_budget_refit_measures_the_rate_past_the_warm_up():
    """The first steps' warm-up does not count in the rate T is fitted with: 20 steps in
    10 s of which the first 5 took 6 s is 3.75 steps/s from there, so 90 s more hold
    0.97 x 337.5 steps; the LR's cosine moves onto that T."""
    from intstream.fit import RETIME_MARGIN, _fit_steps_to_budget

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([w], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10000, eta_min=1e-6)
    T = _fit_steps_to_budget(opt, sched, 20, 10.0, 100.0, warm_mark=(5, 6.0))
    assert T == 20 + int(RETIME_MARGIN * 15 / 4 * 90)
    assert sched.T_max == T
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6 + (1e-3 - 1e-6) * (1 + np.cos(np.pi * 20 / T)) / 2)
    # no usable mark (the whole run so far): the plain average rate
    assert _fit_steps_to_budget(opt, sched, 20, 10.0, 100.0) == 20 + int(RETIME_MARGIN * 2 * 90)


def test_time_budget_refits_T_again_from_the_rate_since_the_first_fit(kodak_crop, tmp_path, monkeypatch):
    """T is refitted at each of RETIME_SHARES of the budget; a later fit measures the rate
    from the previous fit's step and seconds (a rate that settles later is caught)."""
    fit_mod = sys.modules["intstream.fit"]

    monkeypatch.setattr(fit_mod, "RETIME_MIN_STEPS", 3)  # a loaded CI machine: few steps
    calls = []
    real = fit_mod._fit_steps_to_budget

    def spy(opt, sched, step, seconds, budget, warm_mark=(0, 0.0)):
        calls.append((step, seconds, warm_mark))
        return real(opt, sched, step, seconds, budget, warm_mark)

    monkeypatch.setattr(fit_mod, "_fit_steps_to_budget", spy)
    m = fit(kodak_crop, tmp_path / "run", FitConfig(time_budget=2.0, **SMALL))
    shares = fit_mod.RETIME_SHARES
    assert len(calls) == len(shares) >= 2
    assert 0 < calls[0][2][0] < calls[0][0] and calls[0][1] >= shares[0] * 2.0
    for (s0, t0, _), (s1, t1, w1), share in zip(calls, calls[1:], shares[1:]):
        assert w1 == (s0, t0) and s1 - s0 >= 3 and t1 >= share * 2.0
    assert m["total_steps"] > calls[-1][0]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A generated 192x256 image in 48x64 chunks (16 chunks), trained out of core."""
    return make_image_store(tmp_path_factory.mktemp("ooc") / "g.zarr", (192, 256), chunks=(48, 64))


# Forced into rounds of one chunk (a budget below the fixed overhead is refused: intstream.plan).
OOC = dict(width=32, depth=3, log_every=10, out_of_core=True, round_chunks=1)


def _rounds(strategy, store, T, **kw):
    from intstream.teach.rounds import rounds_teacher

    return rounds_teacher(resolve_teacher(strategy), store, T, torch.Generator().manual_seed(0),
                          model_cfg=ModelConfig(2, 3, width=32, depth=3), device=torch.device("cpu"),
                          prefetch=False, **{"round_chunks": 4, "max_samples": 1 << 20, **kw})


def test_out_of_core_rounds_learn_and_visit_every_chunk(big_store, tmp_path):
    m = fit(big_store, tmp_path / "run", FitConfig(steps=150, strategy="intstream", **OOC))
    assert m["out_of_core"] and m["steps"] == 150
    assert m["train_psnr_measured"] is False
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (ck["teacher"]["last_round"].numpy() >= 0).all(), "every chunk was scored at least once"
    assert m["train_psnr"] is not None and m["train_psnr"] > 14


@pytest.mark.parametrize("round_chunks", [4, 16])  # chunks drawn with replacement; every chunk (stratified)
def test_out_of_core_importance_weights_are_unbiased(big_store, round_chunks):
    """E[weight * loss] over the two-level draws equals the full-signal mean: check with a
    per-sample loss of 1 (mean weight 1) and with the true errors against the full MSE."""
    store = open_store(big_store)
    torch.manual_seed(3)
    model = build_model(ModelConfig(2, 3, width=32, depth=3))
    coords, targets = (torch.from_numpy(a) for a in store.load_all())
    full = float((predict(model, coords) - targets).square().sum(1).mean())
    t = _rounds("intstream", store, 1000, round_chunks=round_chunks)
    t.err_mass[:] = np.linspace(1.0, 50.0, t.n_chunks)  # deliberately wrong chunk estimates
    est, ones = [], []
    for step in range(0, 400, 2):
        b = t.batch(step, model)
        (x, y, w), = b.parts
        ones.append(float(w.mean()))
        est.append(float((w * (predict(model, x) - y).square().sum(1)).mean()))
    assert abs(np.mean(ones) - 1.0) < 0.05
    assert abs(np.mean(est) - full) / full < 0.05


def test_out_of_core_round_draws_from_every_chunk_and_scores_the_pool(big_store):
    """A round the plan holds whole: every chunk draws its share k q_c of the samples; the
    pool's share of the chunks (those drawing most) is scored and draws by error, the
    others are read only and draw uniformly; ``random`` scores nothing."""
    store = open_store(big_store)
    model = build_model(ModelConfig(2, 3, width=32, depth=3))
    t = _rounds("intstream", store, 1000, round_chunks=16)
    mass = t.err_mass[:] = np.arange(1.0, 17.0) * 1000.0  # chunk 15 has the largest error
    q = 0.5 * mass / mass.sum() + 0.5 * t.chunk_sizes / t.n
    b = t.batch(0, model)
    plan = t.current[-1]
    k = b.n
    assert plan.chunks.tolist() == list(range(16)) and int(plan.draws.sum()) == k and (plan.draws >= 1).all()
    assert np.abs(plan.draws - k * q).max() <= 1
    scored = np.flatnonzero(plan.shares < 1)
    assert len(scored) == 4 and set(scored) == set(np.argsort(-plan.draws, kind="stable")[:4])
    assert sorted(np.flatnonzero(t.last_round >= 0)) == sorted(scored), "only the pool's chunks were scored"
    pos, p_local = (v.cpu().numpy() for v in t.current[3:5])
    unscored = ~np.isin(pos, scored)
    np.testing.assert_allclose(p_local[unscored], 1.0 / t.chunk_sizes[pos[unscored]])
    assert not np.allclose(p_local[~unscored], 1.0 / t.chunk_sizes[pos[~unscored]])
    got = np.bincount(pos, minlength=16)
    np.testing.assert_array_equal(got, plan.draws)
    r = _rounds("random", store, 1000, round_chunks=16)
    r.batch(0, model)
    assert (r.last_round < 0).all() and (r.current[-1].shares == 1).all()


def test_out_of_core_int_is_mini_batch_int(big_store):
    """Fixed strided mini-batches cover the signal, one cached top-k subset per mini-batch,
    the paper's schedules over epochs, gradient clipping 0.1."""
    store = open_store(big_store)
    model = build_model(ModelConfig(2, 3, width=32, depth=3))
    t = _rounds("int", store, 400)
    assert t.grad_clip == 0.1 and t.n_batches == 4
    assert sorted(np.concatenate(t.groups).tolist()) == list(range(16))
    seen = []
    for step in range(8):
        b = t.batch(step, model)
        (x, y, w), = b.parts
        assert w is None and b.selected == (step < 4 or step // 4 in t._select_at)
        seen.append(set(t.cache[step % 4][0].tolist()))
    # Each mini-batch's subset is its own (disjoint chunks => disjoint subsets) ...
    assert all(not (seen[i] & seen[j]) for i in range(4) for j in range(i + 1, 4))
    # ... the top-k of that mini-batch's samples by the paper's score.
    m = 1
    idx = np.concatenate([store.block_flat_index(store.chunk_slices()[c]) for c in t.groups[m]])
    err = (predict(model, torch.from_numpy(store.coords_at(idx))) - torch.from_numpy(store.targets_at(idx))).abs().sum(1)
    k = len(t.cache[m][0])
    assert k == int(0.2 * len(idx)) or k == -(-int(0.2 * len(idx)) // 1)
    np.testing.assert_array_equal(np.sort(t.cache[m][0]), np.sort(idx[np.argsort(-err.numpy(), kind="stable")[:k]]))


def test_out_of_core_full_streams_every_sample(big_store):
    """One full out-of-core step accumulates exactly the in-core full-batch gradient."""
    from intstream.fit import train_step

    store = open_store(big_store)
    torch.manual_seed(0)
    a = build_model(ModelConfig(2, 3, width=32, depth=3))
    b = build_model(ModelConfig(2, 3, width=32, depth=3))
    b.load_state_dict(a.state_dict())
    t = _rounds("full", store, 10)
    loss = train_step(a, t.batch(0, a), t.observe, 1000)
    coords, targets = (torch.from_numpy(v) for v in store.load_all())
    ref = torch.nn.functional.mse_loss(b(coords), targets)
    ref.backward()
    ref = float(ref.detach())
    assert abs(loss - ref) < 1e-6
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-7)
    mse, measured = t.train_mse(a)
    assert measured is False and abs(mse - ref) < 1e-6


@pytest.mark.parametrize("strategy", ["intstream", "int"])
def test_out_of_core_resume_is_bit_identical(big_store, tmp_path, strategy):
    cfg = FitConfig(steps=60, strategy=strategy, **OOC)
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


def test_out_of_core_resume_from_an_older_round_format_redraws(big_store):
    """A checkpoint written before rounds had per-chunk shares (its plan has ``q``, no
    ``expect``/``shares``) resumes without error: its round is drawn anew at the next step."""
    store = open_store(big_store)
    model = build_model(ModelConfig(2, 3, width=32, depth=3))
    t = _rounds("intstream", store, 100)
    t.batch(0, model)
    state = t.state_dict()
    plan = state["current"]["plan"]
    plan["q"] = plan.pop("expect")
    del plan["shares"]
    fresh = _rounds("intstream", store, 100)
    fresh.load_state_dict(state)
    assert fresh.current is None and fresh.batch(1, model).selected
