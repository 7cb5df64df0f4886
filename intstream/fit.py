"""fit: train an implicit neural representation of a signal store with a teacher.

One loop, top to bottom: select -> batch -> step -> log -> checkpoint. The teacher
decides what to train on (`intstream.teach.incore` in core, `intstream.teach.rounds` when the
signal exceeds the memory budget); everything else is the same for both.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .config import check_keys
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, load_checkpoint, save_checkpoint
from .errors import InputError
from .store import SignalStore, open_store

__all__ = ["FitConfig", "fit", "resolve_config", "KIND_DEFAULTS", "psnr_from_mse"]

# The paper's per-modality defaults (DESIGN §4).
KIND_DEFAULTS = {
    "image": {"lr": 1e-3, "steps": 5000},
    "audio": {"lr": 1e-4, "steps": 5000},
    "sdf": {"lr": 1e-4, "steps": 10000},
    "array": {"lr": 1e-3, "steps": 5000},
}


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides a training run (``None`` = the kind's default).

    Attributes
    ----------
    steps, lr
        T and the initial Adam learning rate (cosine decay to ``lr_min`` over T). The
        default T is the kind's (the paper's) times the strategy's ``STEPS_FACTOR``.
    arch, width, depth, omega0, first_omega0
        The coordinate network (SIREN 6 x 256, omega0 30 by default; ``first_omega0``
        overrides the first layer's factor).
    strategy, ratio, ratio_schedule, interval_schedule, random_share, score_dtype
        The teacher (see `intstream.teach`); ``None`` takes the strategy's preset.
    seed
        Seeds torch, numpy and Python RNGs.
    device
        ``auto``, ``cpu`` or ``cuda``.
    time_budget
        Stop after this many seconds of training (checkpoint and report), or None.
    target_psnr
        Stop once the training PSNR reaches this (dB), or None.
    memory_budget
        Bytes the training data may take; above it, fit runs out of core in rounds.
    scheduler
        Dask scheduler for out-of-core rounds: None (local threads) or a
        dask.distributed address.
    log_every
        Steps between log lines with the PSNR of the current weights.
    checkpoint_every
        Seconds between checkpoints (one is always written at the end and on SIGTERM/SIGINT).
    round_steps, round_chunks
        Out of core: training steps per round and chunks per round (None = from the budget).
    """

    steps: int | None = None
    lr: float | None = None
    lr_min: float = 1e-6
    arch: str = "siren"
    width: int = 256
    depth: int = 6
    omega0: float = 30.0
    first_omega0: float | None = None
    strategy: str = "intstream"
    ratio: float | None = None
    ratio_schedule: str | None = None
    interval_schedule: str | None = None
    random_share: float | None = None
    score_dtype: str | None = None
    pool: float | None = None
    weighting: str | None = None
    seed: int = 0
    device: str = "auto"
    time_budget: float | None = None
    target_psnr: float | None = None
    memory_budget: int = 2 << 30
    scheduler: str | None = None
    log_every: int = 100
    checkpoint_every: float = 300.0
    round_steps: int | None = None
    round_chunks: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        check_keys(cls, d, "fit option(s)")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_config(cfg: FitConfig, kind: str) -> FitConfig:
    """Fill the kind's defaults (steps, lr) into ``cfg``."""
    from .teach.config import STEPS_FACTOR

    d = KIND_DEFAULTS[kind]
    steps = cfg.steps or round(d["steps"] * STEPS_FACTOR.get(cfg.strategy, 1.0))
    return replace(cfg, steps=steps, lr=cfg.lr or d["lr"])


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error for a signal of the given range."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    return torch.device(name)


def _setup_torch(device) -> None:
    import torch

    if device.type == "cpu":
        # All cores this process may use (batch schedulers pin jobs), unless the user said.
        if not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
             "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(state["python"])), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _data_range(store: SignalStore) -> float:
    """Range of the targets: 1 for normalised kinds, the distance range for SDFs."""
    if store.kind == "sdf" and store.meta.get("value_range"):
        lo, hi = store.meta["value_range"]
        return float(hi - lo) or 1.0
    return 1.0


def in_core_bytes(store: SignalStore) -> int:
    """Memory the in-core path needs for the signal: coords, targets, predictions, errors."""
    return store.n_samples * (store.ndim + 2 * store.channels + 2) * 4


class _Stop:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (HPC preemption)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def fit(
    store_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: FitConfig = FitConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Train on the store at ``store_path``, writing checkpoints and a log to ``run_dir``.

    Returns the manifest: run dir, checkpoint, steps done, wall and training seconds,
    the training PSNR of the final weights, and ``interrupted`` (signal name) when a
    SIGTERM/SIGINT stopped it early (a checkpoint was written; rerun with resume).
    """
    import torch

    from .models import ModelConfig, build_model, count_params, predict
    from .progress import Progress
    from .teach.config import resolve_teacher

    t_wall = time.perf_counter()
    run_dir = Path(run_dir).absolute()
    ck_path = run_dir / CHECKPOINT_NAME
    ck = None
    if ck_path.exists():
        if resume:
            ck = load_checkpoint(ck_path)
        elif not overwrite:
            raise InputError(run_dir, "run directory already holds a checkpoint (pass --resume to continue or --overwrite)")
    if ck is not None:
        cfg = FitConfig.from_dict(ck["fit_config"])
        # A resumed job may get a new wall-clock budget (the preempted one's was spent).
        cfg = replace(cfg, time_budget=config.time_budget, checkpoint_every=config.checkpoint_every)
        store = open_store(ck["store"]["path"] if store_path is None else store_path)
        if store.meta["source"] != ck["store"]["meta"]["source"] or store.shape != tuple(ck["store"]["meta"]["shape"]):
            raise InputError(store.path, "store does not match the checkpoint being resumed (source or shape differ)")
    else:
        store = open_store(store_path)
        cfg = resolve_config(config, store.kind)
    run_dir.mkdir(parents=True, exist_ok=True)

    device = _device(cfg.device)
    _setup_torch(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    teacher_cfg = resolve_teacher(
        cfg.strategy, ratio=cfg.ratio, ratio_schedule=cfg.ratio_schedule, interval_schedule=cfg.interval_schedule,
        random_share=cfg.random_share, score_dtype=cfg.score_dtype, pool=cfg.pool,
        weighting=cfg.weighting,
    )
    model_cfg = ModelConfig(in_dim=store.ndim, out_dim=store.channels, arch=cfg.arch, width=cfg.width,
                            depth=cfg.depth, omega0=cfg.omega0, first_omega0=cfg.first_omega0)
    model = build_model(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr_min)
    gen = torch.Generator().manual_seed(cfg.seed)
    data_range = _data_range(store)
    T = cfg.steps

    out_of_core = in_core_bytes(store) > cfg.memory_budget
    if out_of_core:
        from .teach.rounds import OutOfCoreTeacher

        teacher = OutOfCoreTeacher(teacher_cfg, store, T, gen, model_cfg=model_cfg, device=device,
                                   memory_budget=cfg.memory_budget, scheduler=cfg.scheduler,
                                   round_steps=cfg.round_steps, round_chunks=cfg.round_chunks)
        eval_coords = eval_targets = None
    else:
        from .teach.incore import InCoreTeacher

        coords, targets = store.load_all()
        pin = device.type == "cuda"
        coords_t = torch.from_numpy(coords)
        targets_t = torch.from_numpy(targets)
        if pin:
            coords_t, targets_t = coords_t.pin_memory(), targets_t.pin_memory()
        coords_t = coords_t.to(device, non_blocking=True)
        targets_t = targets_t.to(device, non_blocking=True)
        teacher = InCoreTeacher(teacher_cfg, coords_t, targets_t, T, gen)
        eval_coords, eval_targets = coords_t, targets_t

    def current_psnr() -> float | None:
        """PSNR of the current weights over every sample (in core) or the teacher's estimate."""
        if eval_coords is None:
            mse = teacher.estimated_mse()
            return None if mse is None else psnr_from_mse(mse, data_range)
        pred = predict(model, eval_coords)
        return psnr_from_mse(float((pred - eval_targets).square().mean()), data_range)

    start, train_seconds, summary_psnr = 0, 0.0, None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        teacher.load_state_dict(ck["teacher"])
        gen.set_state(ck["teacher"]["generator"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        train_seconds = float(ck["summary"]["train_seconds"])
        summary_psnr = ck["summary"].get("train_psnr")
    log_path = run_dir / LOG_NAME
    _truncate_log(log_path, start)
    (run_dir / CONFIG_NAME).write_text(json.dumps({"fit": cfg.to_dict(), "teacher": teacher_cfg.to_dict(),
                                                   "model": model_cfg.to_dict(), "store": str(store.path),
                                                   "out_of_core": out_of_core}, indent=1))

    def checkpoint(step: int, psnr: float | None) -> None:
        save_checkpoint(ck_path, {
            "model_config": model_cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "step": step, "rng": _rng_state(),
            "fit_config": cfg.to_dict(), "teacher": {**teacher.state_dict(), "generator": gen.get_state()},
            "teacher_config": teacher_cfg.to_dict(),
            "store": {"path": str(store.path), "meta": store.meta},
            "summary": {"steps": step, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t_wall,
                        "train_psnr": psnr, "strategy": teacher_cfg.strategy, "out_of_core": out_of_core,
                        "params": count_params(model)},
        })

    stop_reason, step, done = None, start, start
    observe = getattr(teacher, "observe", None)
    last_ck = time.perf_counter()
    psnr = summary_psnr
    with open(log_path, "a") as log, _Stop() as stopper, Progress(T, "fit", enabled=progress) as bar:
        bar.done = start
        for step in range(start, T):
            t0 = time.perf_counter()
            x, y, info = teacher.batch(step, model)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            if info.get("weight") is None:
                loss = torch.nn.functional.mse_loss(out, y)
            else:  # importance-weighted: an unbiased estimate of the full-signal MSE
                loss = (info["weight"][:, None] * (out - y).square()).mean()
            loss.backward()
            if observe is not None:
                observe(out)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())  # syncs the device, so the timing below is honest
            train_seconds += time.perf_counter() - t0
            done = step + 1
            # PSNR of the weights *before* this update came free with a full selection;
            # otherwise measure the current weights every log_every steps (not timed).
            logged = done % cfg.log_every == 0 or done == T
            if logged:
                psnr = current_psnr()
                log.write(json.dumps({"step": done, "wall": round(time.perf_counter() - t_wall, 4),
                                      "train_seconds": round(train_seconds, 4), "loss": loss_value,
                                      "psnr": psnr, "ratio": info["ratio"], "interval": info["interval"],
                                      "lr": sched.get_last_lr()[0]}) + "\n")
                log.flush()
            bar.update(1, f"{done / max(train_seconds, 1e-9):.1f} step/s psnr {psnr if psnr is None else round(psnr, 2)} "
                          f"ratio {info['ratio']:.2f}")
            if stopper.signum is not None:
                stop_reason = signal.Signals(stopper.signum).name
            elif cfg.time_budget is not None and train_seconds >= cfg.time_budget:
                stop_reason = "time_budget"
            elif cfg.target_psnr is not None and logged and psnr is not None and psnr >= cfg.target_psnr:
                stop_reason = "target_psnr"
            if stop_reason or time.perf_counter() - last_ck >= cfg.checkpoint_every:
                if not logged:
                    psnr = current_psnr()
                checkpoint(done, psnr)
                last_ck = time.perf_counter()
            if stop_reason:
                break
        else:
            # A finished loop logged the final weights at its last step; a resumed
            # finished run (no steps left) measures them here.
            done = T
            if start >= T:
                psnr = current_psnr()
            checkpoint(done, psnr)
    close = getattr(teacher, "close", None)
    if close:
        close()
    return {
        "stage": "fit",
        "run_dir": str(run_dir),
        "checkpoint": str(ck_path),
        "store": str(store.path),
        "kind": store.kind,
        "strategy": teacher_cfg.strategy,
        "steps": done,
        "total_steps": T,
        "out_of_core": out_of_core,
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - t_wall, 3),
        "steps_per_second": round((done - start) / max(train_seconds, 1e-9), 2) if start < T else None,
        "train_psnr": psnr,
        "params": count_params(model),
        "stopped": stop_reason,
        "interrupted": stop_reason if stop_reason in ("SIGTERM", "SIGINT") else None,
    }


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint being resumed (they will be redone)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))
