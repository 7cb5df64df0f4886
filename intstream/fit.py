"""fit: train an implicit neural representation of a signal store with a teacher.

One loop, top to bottom: select -> batch -> step -> log -> checkpoint. The teacher
decides what to train on (`intstream.teach.incore` in core, `intstream.teach.rounds` when the
signal exceeds the memory budget); everything else is the same for both.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .config import ConfigError, check_keys, check_number
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, TEACHER_MAP_NAME, load_checkpoint, save_checkpoint
from .device import resolve_device
from .errors import InputError
from .plan import peak_rss_bytes
from .rundir import RunDir, guarded, resume_config
from .metrics import psnr_from_mse
from .store import SignalStore, open_store

__all__ = ["FitConfig", "fit", "resolve_config", "KIND_DEFAULTS"]

# The paper's per-modality defaults (DESIGN §4), except audio: with the paper's omega0 30 a
# SIREN predicts the mean of speech (SNR ~0 dB). Measured on LibriSpeech 00 (8.5 s) by eval:
# 1-D tiles with a first-layer omega0 of 300 over their local coordinates reach 20.9 dB SNR
# in 240 s on 2 cores, where one 6x256 SIREN (omega0 3000 over the global ones) has 0.8 dB
# after 60 s; 3000 stays the single model's first omega0 (35 dB on 0.5 s, bench_targets).
KIND_DEFAULTS = {
    "image": {"lr": 1e-3, "steps": 5000},
    "audio": {"lr": 1e-4, "steps": 5000, "first_omega0": 3000.0, "model": "tiled", "tiled_first_omega0": 300.0},
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
        overrides the first layer's factor). With the tiled model, width and depth are
        each tile's; ``None`` = from ``capacity`` and the kind's default.
    model, capacity, tile, overlap
        ``auto`` (tiled when one default SIREN has < 1 parameter per value), ``single``
        or ``tiled`` (DESIGN §9); parameters per signal value (sizes the width); the
        tiled model's tile edge per axis (``"64x64"`` or one int) and blending margin
        in samples. See `intstream.models.sizing`.
    strategy, ratio, ratio_schedule, interval_schedule, random_share, score_dtype
        The teacher (see `intstream.teach`); ``None`` takes the strategy's preset.
    seed
        Seeds torch, numpy and Python RNGs.
    device
        ``auto``, ``cpu`` or ``cuda``.
    time_budget
        Stop after this many seconds of training by this process (checkpoint and report),
        or None. A resumed run gets the full budget again. A fresh run given a budget and
        no ``steps`` fits T to it: after 5%, 25% and 50% of the budget (and 20 steps
        since the last fit) the LR's cosine is moved onto the steps the budget holds at
        the rate measured since the last fit, the first past the first steps' warm-up
        (`_fit_steps_to_budget`), so the run anneals instead of stopping
        at a high LR; the checkpoint keeps that T for a resume. Teachers whose schedules
        depend on T (a ``step`` ratio, ``incremental`` intervals) keep the kind's default T.
    target_psnr
        Stop once the training PSNR reaches this (dB), or None.
    memory_budget
        Bytes the whole process may take at its peak (RSS): `intstream.plan` chooses in core or
        rounds, the training and scoring batches and the round size to fit it (DESIGN §10);
        no plan fits -> `InputError` before the run directory exists.
    scheduler
        Dask scheduler for out-of-core rounds: None (local threads) or a
        dask.distributed address.
    log_every
        Steps between log lines with the PSNR of the current weights.
    checkpoint_every
        Seconds between checkpoints (one is always written at the end and on SIGTERM/SIGINT).
    out_of_core
        Train in rounds over the store's chunks even when the signal would fit the budget
        (for tests, benchmarks and comparisons); the manifest's ``out_of_core`` says which ran.
    measure_psnr
        Out of core: measure every logged PSNR over all samples (one streamed pass over the
        store per log line, not counted as training time) instead of estimating it from
        the teacher's per-chunk statistics.
    round_chunks
        Out of core: chunks per round (None = from the budget).
    """

    steps: int | None = None
    lr: float | None = None
    lr_min: float = 1e-6
    arch: str = "siren"
    width: int | None = None
    depth: int | None = None
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
    out_of_core: bool = False
    measure_psnr: bool = False
    round_chunks: int | None = None
    model: str = "auto"
    capacity: float | None = None
    tile: tuple[int, ...] | None = None
    overlap: float | None = None

    def __post_init__(self):
        if self.tile is not None:  # "64x64", 64 or a list (JSON, TOML) -> a tuple
            from .models.sizing import parse_tile

            try:
                object.__setattr__(self, "tile", parse_tile(self.tile))
            except (ValueError, TypeError) as exc:
                raise ConfigError(None, f"FitConfig.tile = {self.tile!r}: {exc}") from None
        # Numbers the CLI checks too, so the Python API refuses NaN/Inf/out-of-range alike
        # (a ConfigError is a ValueError; the CLI turns it into exit 2).
        for name, rule in _NUMBER_RULES.items():
            check_number(self, name, **rule)

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        check_keys(cls, d, "fit option(s)")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


_NUMBER_RULES = {
    "steps": dict(lo=1, integer=True, optional=True),
    "lr": dict(lo=0, lo_open=True, optional=True),
    "lr_min": dict(lo=0),
    "width": dict(lo=1, hi=1 << 16, integer=True, optional=True),
    "depth": dict(lo=2, hi=1024, integer=True, optional=True),
    "capacity": dict(lo=0, lo_open=True, hi=1e4, optional=True),
    "overlap": dict(lo=0, optional=True),
    "omega0": dict(lo=0, lo_open=True),
    "first_omega0": dict(lo=0, lo_open=True, optional=True),
    "ratio": dict(lo=0, lo_open=True, hi=1, optional=True),
    "random_share": dict(lo=0, hi=1, optional=True),
    "pool": dict(lo=0, lo_open=True, hi=1, optional=True),
    "seed": dict(lo=0, hi=2**64 - 1, integer=True),
    "time_budget": dict(lo=0, lo_open=True, optional=True),
    "target_psnr": dict(optional=True),
    "memory_budget": dict(lo=1, integer=True),
    "log_every": dict(lo=1, integer=True),
    "checkpoint_every": dict(lo=0),
    "round_chunks": dict(lo=1, integer=True, optional=True),
}


def resolve_config(cfg: FitConfig, kind: str) -> FitConfig:
    """Fill the kind's defaults (steps, lr, audio's first-layer omega0) into ``cfg``."""
    from .teach.config import STEPS_FACTOR

    d = KIND_DEFAULTS[kind]
    steps = cfg.steps or round(d["steps"] * STEPS_FACTOR.get(cfg.strategy, 1.0))
    # A kind's preferred model stands in for "auto" unless the user sized an MLP (--width):
    # then auto means one SIREN of that width, as models.sizing resolves it for every kind.
    model = d.get("model", cfg.model) if cfg.model == "auto" and cfg.width is None else cfg.model
    first = cfg.first_omega0
    if first is None:
        first = d.get("tiled_first_omega0") if model == "tiled" else d.get("first_omega0")
    return replace(cfg, steps=steps, lr=cfg.lr or d["lr"], first_omega0=first, model=model)


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
    """Range of the targets: the nominal range's span (PSNR on the signal's [0, 1] scale
    whether targets are unit or signed), the distance range for SDFs."""
    if store.kind == "sdf" and store.meta.get("value_range"):
        lo, hi = store.meta["value_range"]
        return float(hi - lo) or 1.0
    return store.norm.span


def _model_config(cfg: FitConfig, given: FitConfig, store: SignalStore):
    """``(ModelConfig, cfg)`` for a fresh run: `intstream.models.sizing` picks single or tiled
    and the width; a tiled model takes the kind's tiled lr unless ``--lr`` was given."""
    from .models import ModelConfig
    from .models.sizing import TILED_DEFAULTS, model_kwargs

    try:
        kw = model_kwargs(store.kind, store.shape, store.channels, store.norm.extent, model=cfg.model,
                          capacity=cfg.capacity, tile=cfg.tile, overlap=cfg.overlap, arch=cfg.arch,
                          width=cfg.width, depth=cfg.depth, omega0=cfg.omega0, first_omega0=cfg.first_omega0)
        model_cfg = ModelConfig(**kw)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    if model_cfg.model == "tiled" and given.lr is None:
        cfg = replace(cfg, lr=TILED_DEFAULTS[store.kind]["lr"])
    return model_cfg, cfg


def _memory_plan(cfg: FitConfig, store: SignalStore, model_cfg, teacher_cfg):
    """The run's `~intstream.plan.MemoryPlan` within ``cfg.memory_budget`` (InputError if none fits)."""
    import torch

    from .models import build_model, count_params
    from .plan import plan_for_store

    with torch.device("meta"):  # counts parameters without allocating them
        params = count_params(build_model(model_cfg))
    return plan_for_store(cfg.memory_budget, store, model_cfg=model_cfg, params=params, teacher_cfg=teacher_cfg,
                          total_steps=cfg.steps, out_of_core=cfg.out_of_core, round_chunks=cfg.round_chunks)


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


@guarded  # releases the run directory's lock; a failed fresh run leaves nothing
def fit(
    store_path: str | os.PathLike,
    run_dir: str | os.PathLike,
    config: FitConfig = FitConfig(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    explicit: set[str] | None = None,
) -> dict:
    """Train on the store at ``store_path``, writing checkpoints and a log to ``run_dir``.

    Returns the manifest: run dir, checkpoint, steps done, wall and training seconds,
    the training PSNR of the final weights, and ``interrupted`` (signal name) when a
    SIGTERM/SIGINT stopped it early (a checkpoint was written; rerun with resume).

    ``run_dir`` must be new, empty or an intstream run directory (`intstream.rundir`);
    fit holds its lock while it runs. ``resume`` continues its checkpoint with the
    checkpoint's options: options in ``config`` that differ are refused (an `InputError`
    listing them), except `~intstream.rundir.RESUME_FROM_THIS_PROCESS` (``time_budget``,
    ``checkpoint_every``), `~intstream.rundir.RESUME_MAY_CHANGE` and a larger ``steps``
    for a finished run, which then trains the extra steps with the schedules of the longer
    run (`_extend_cosine`; the teacher's ratio and interval schedules over the new T).
    ``explicit`` names the options the user set (the CLI's); ``None`` compares the ones
    that differ from the `FitConfig` defaults.

    Times and rates are this process's: ``time_budget`` counts this process's training
    seconds (a resumed job has a fresh allocation), and ``wall_seconds``,
    ``steps_per_second``, ``samples_per_second``, ``steps_this_process`` and
    ``train_seconds_this_process`` count this process only; ``train_seconds``, ``steps``
    and ``samples_trained`` (samples the optimiser stepped on, repeats counted) are the
    run's totals, and
    ``resumed_from_step`` is the checkpoint's step (``None`` for a fresh run).
    """
    import torch

    from .models import ModelConfig, build_model, count_params
    from .progress import Progress
    from .teach.config import resolve_teacher

    t_wall = time.perf_counter()
    run_dir = Path(run_dir).absolute()
    rd = RunDir(run_dir)  # a symlink or a foreign non-empty directory is refused before anything is read
    ck_path = run_dir / CHECKPOINT_NAME
    ck = None
    if ck_path.exists():
        if resume:
            ck = load_checkpoint(ck_path)
        elif not overwrite:
            raise InputError(run_dir, "run directory already holds a checkpoint (pass --resume to continue or --overwrite)")
    if ck is not None:
        # Differing options are refused; a new time budget, or more steps for a finished run, are not.
        cfg = resume_config(FitConfig.from_dict(ck["fit_config"]), config, step=int(ck["step"]),
                            explicit=explicit, where=run_dir)
        store = open_store(ck["store"]["path"] if store_path is None else store_path)
        if store.meta["source"] != ck["store"]["meta"]["source"] or store.shape != tuple(ck["store"]["meta"]["shape"]):
            raise InputError(store.path, "store does not match the checkpoint being resumed (source or shape differ)")
    else:
        store = open_store(store_path)
        # --time-budget without --steps: T is fitted to the budget once the step rate is known.
        fit_to_budget = config.time_budget is not None and config.steps is None
        cfg = resolve_config(config, store.kind)
    _check_run_dir(run_dir, store)

    device = torch.device(resolve_device(cfg.device))
    _setup_torch(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    teacher_options = dict(ratio=cfg.ratio, ratio_schedule=cfg.ratio_schedule, interval_schedule=cfg.interval_schedule,
                           random_share=cfg.random_share, score_dtype=cfg.score_dtype, pool=cfg.pool,
                           weighting=cfg.weighting)
    with _option_errors():  # a bad teacher option: exit 2, before the run directory exists
        teacher_cfg = resolve_teacher(cfg.strategy, **teacher_options)
    if ck is not None:  # the checkpoint's network, whatever the sizing rules say today
        model_cfg = ModelConfig.from_dict(dict(ck["model_config"]))
    else:
        model_cfg, cfg = _model_config(cfg, config, store)
    # One memory plan (DESIGN §10) before the run directory exists: no plan fits -> exit 2.
    plan = _memory_plan(cfg, store, model_cfg, teacher_cfg)
    # Every option is checked above: only now does the run directory come to exist.
    rd.open(store=str(store.path))  # creates it, takes its lock (a second fit here exits 2)
    model = build_model(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr_min)
    gen = torch.Generator().manual_seed(cfg.seed)
    data_range = _data_range(store)
    T = cfg.steps
    # Only the LR's cosine is refitted: a teacher whose schedules depend on T keeps --steps.
    retimes = ([share * cfg.time_budget for share in RETIME_SHARES] if ck is None and fit_to_budget
               and _schedules_free_of_T(teacher_cfg) else [])  # training seconds at which T is refitted

    out_of_core = not plan.in_core
    if out_of_core:  # the strategy's rounds preset (its options checked above)
        teacher_cfg = resolve_teacher(cfg.strategy, out_of_core=True, **teacher_options)
    max_batch = plan.batch  # samples per forward/backward; larger selections accumulate (train_step)
    if out_of_core:
        from .teach.rounds import rounds_teacher

        teacher = rounds_teacher(teacher_cfg, store, T, gen, model_cfg=model_cfg, device=device,
                                 round_chunks=plan.round_chunks, max_samples=plan.round_samples,
                                 score_batch=plan.score_batch, scheduler=cfg.scheduler)
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
        teacher = InCoreTeacher(teacher_cfg, coords_t, targets_t, T, gen, score_batch=plan.score_batch,
                                shape=store.shape)

    def current_psnr() -> float | None:
        """PSNR of the current weights: measured over every sample in core, estimated from
        the teacher's per-chunk statistics out of core (``psnr_measured`` says which)."""
        mse, _ = teacher.train_mse(model, exact=cfg.measure_psnr)
        return None if mse is None else psnr_from_mse(mse, data_range)

    def estimated_psnr() -> float | None:
        """The teacher's own estimate (out of core: per-chunk statistics), for the record."""
        mse, _ = teacher.train_mse(model)
        return None if mse is None else psnr_from_mse(mse, data_range)

    # In core every logged PSNR is over every sample; out of core with --measure-psnr too.
    psnr_measured = cfg.measure_psnr or not teacher.out_of_core

    start, train_seconds, summary_psnr, samples_trained = 0, 0.0, None, 0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["lr_scheduler"])
        if T > ck["fit_config"]["steps"]:  # a finished run extended with a larger --steps
            _extend_cosine(opt, sched, int(ck["step"]), T)
        teacher.load_state_dict(ck["teacher"])
        gen.set_state(ck["teacher"]["generator"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        fitted = ck["summary"].get("total_steps")
        if fitted is not None and fitted != ck["fit_config"]["steps"] and T <= ck["fit_config"]["steps"]:
            T = int(fitted)  # the T this run fitted to its first time budget (sched.T_max holds it too)
        train_seconds = float(ck["summary"]["train_seconds"])
        summary_psnr = ck["summary"].get("train_psnr")
        samples_trained = ck["summary"].get("samples_trained")  # None: a checkpoint from before the count
    train_seconds_before = train_seconds  # by earlier processes of this run
    samples_this_process = 0
    rd.truncate_log(start)
    rd.write_text(CONFIG_NAME, json.dumps({"fit": cfg.to_dict(), "teacher": teacher_cfg.to_dict(),
                                                   "model": model_cfg.to_dict(), "store": str(store.path),
                                                   "out_of_core": out_of_core, "plan": plan.to_dict(terms=True),
                                                   "score_dtype_runs": _score_dtype_runs(teacher_cfg, device)}, indent=1))

    def checkpoint(step: int, psnr: float | None) -> None:
        save_checkpoint(ck_path, {
            "model_config": model_cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "step": step, "rng": _rng_state(),
            "fit_config": cfg.to_dict(), "teacher": {**teacher.state_dict(), "generator": gen.get_state()},
            "teacher_config": teacher_cfg.to_dict(),
            "store": {"path": str(store.path), "meta": store.meta},
            "summary": {"steps": step, "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - t_wall,
                        "train_psnr": psnr, "train_psnr_measured": psnr_measured,
                        "estimated_psnr": estimated_psnr(), "strategy": teacher_cfg.strategy, "total_steps": T,
                        "out_of_core": out_of_core, "params": count_params(model),
                        "samples_trained": None if samples_trained is None else samples_trained + samples_this_process},
        })

    stop_reason, step, done = None, start, start
    warm_mark, fitted_at = (start, 0.0), start
    last_ck = time.perf_counter()
    psnr = summary_psnr
    with rd.open_append(LOG_NAME) as log, _Stop() as stopper, Progress(T, "fit", enabled=progress, initial=start, unit="step") as bar:
        def remaining_steps():  # reads T at every step: a budget-fitted run changes it once
            s = start
            while s < T:
                yield s
                s += 1

        for step in remaining_steps():
            if retimes and step - start == max(1, RETIME_MIN_STEPS // 4):
                warm_mark = (step, train_seconds)  # the rate is measured from here: past the warm-up
            if retimes and train_seconds >= retimes[0] and step - fitted_at >= RETIME_MIN_STEPS:
                T = _fit_steps_to_budget(opt, sched, step, train_seconds, cfg.time_budget, warm_mark)
                warm_mark, fitted_at = (step, train_seconds), step  # a later refit measures from here
                retimes.pop(0)
                bar.set_total(T)
            t0 = time.perf_counter()
            batch = teacher.batch(step, model)
            opt.zero_grad(set_to_none=True)
            loss_value = train_step(model, batch, teacher.observe, max_batch)  # syncs: the timing is honest
            if teacher.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), teacher.grad_clip)
            opt.step()
            sched.step()
            train_seconds += time.perf_counter() - t0
            samples_this_process += batch.n
            done = step + 1
            # PSNR of the weights *before* this update came free with a full selection;
            # otherwise measure the current weights every log_every steps (not timed).
            logged = done % cfg.log_every == 0 or done == T
            if logged:
                psnr = current_psnr()
                log.write(json.dumps({"step": done, "wall": round(time.perf_counter() - t_wall, 4),
                                      "train_seconds": round(train_seconds, 4), "loss": loss_value,
                                      "psnr": psnr, "psnr_measured": psnr_measured, "ratio": batch.ratio,
                                      "interval": batch.interval,
                                      "lr": sched.get_last_lr()[0]}) + "\n")
                log.flush()
            bar.update(1, psnr=psnr, ratio=batch.ratio)
            if stopper.signum is not None:
                stop_reason = signal.Signals(stopper.signum).name
            elif cfg.time_budget is not None and train_seconds - train_seconds_before >= cfg.time_budget:
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
    _write_teacher_map(rd, teacher, model)  # after the last checkpoint: it cannot change the training
    teacher.close()
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
        "plan": plan.to_dict(),
        "peak_rss_bytes": peak_rss_bytes(),
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.perf_counter() - t_wall, 3),
        "steps_per_second": round((done - start) / max(train_seconds - train_seconds_before, 1e-9), 2) if start < T else None,
        "resumed_from_step": start if ck is not None else None,
        "steps_this_process": done - start,
        "train_seconds_this_process": round(train_seconds - train_seconds_before, 3),
        # samples the optimiser stepped on (with repeats): passes over the signal = this / its samples
        "samples_trained": None if samples_trained is None else samples_trained + samples_this_process,
        "samples_per_second": (round(samples_this_process / max(train_seconds - train_seconds_before, 1e-9))
                               if start < T else None),
        "train_psnr": psnr,
        "train_psnr_measured": psnr_measured,
        "params": count_params(model),
        "stopped": stop_reason,
        "interrupted": stop_reason if stop_reason in ("SIGTERM", "SIGINT") else None,
    }


def _score_dtype_runs(teacher_cfg, device) -> str:
    """What the scoring forward really runs in here: ``--score-dtype bfloat16`` is float32
    on devices without native bf16 (`intstream.models.mlp.scoring_dtype`)."""
    import torch

    from .models.mlp import scoring_dtype

    asked = torch.bfloat16 if teacher_cfg.score_dtype == "bfloat16" else None
    return "bfloat16" if scoring_dtype(asked, device.type) == torch.bfloat16 else "float32"


def _write_teacher_map(rd: RunDir, teacher, model) -> None:
    """The teacher's coarse map of where it sampled (`Teacher.sample_map`), for ``eval --plot``."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in teacher.sample_map(model).items()})
    rd.write_bytes(TEACHER_MAP_NAME, buf.getvalue())


def train_step(model, batch, observe, max_batch: int) -> float:
    """Forward and backward over ``batch``'s parts, at most ``max_batch`` samples at a time.

    The loss is ``sum(weight * (out - y)^2) / (n C)`` over all of the step's samples, so the
    accumulated gradient is exactly the one of a single pass over the whole selection (the
    plain MSE, or with importance weights its unbiased estimate), whatever the pieces.
    ``observe`` gets each part's predictions. Returns the loss (syncs the device).
    """
    import torch

    total = 0.0
    for x, y, w in batch.parts:
        scale = 1.0 / (batch.n * y.shape[1])
        # Filled in place (see models.predict: a list of small outputs between large
        # transients fragments the heap).
        preds = None if x.shape[0] <= max_batch else torch.empty_like(y, dtype=torch.float32)
        for s in range(0, x.shape[0], max_batch):
            out = model(x[s : s + max_batch])
            sq = (out - y[s : s + max_batch]).square()
            if w is not None:  # importance weights: an unbiased estimate of the full-signal MSE
                sq = w[s : s + max_batch, None] * sq
            loss = sq.sum() * scale
            loss.backward()
            total += float(loss.detach())
            if preds is None:
                preds = out.detach()
            else:
                preds[s : s + out.shape[0]] = out.detach()
        observe(preds)
    return total


@contextlib.contextmanager
def _option_errors():
    """A ValueError from resolving options is bad usage (InputError, exit 2), not a crash."""
    try:
        yield
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(None, " ".join(str(exc).split())) from None


def _check_run_dir(run_dir: Path, store: SignalStore) -> None:
    """Refuse a run directory that is the store or lies inside it (it would corrupt the store)."""
    src, out = Path(store.path).resolve(), run_dir.resolve()
    if out == src or src in out.parents:
        raise InputError(run_dir, f"run directory would be written inside the store {src}")


# --time-budget without --steps: T is refitted after each of these shares of the budget
# (and at least RETIME_MIN_STEPS steps since the last fit), from the step rate measured
# since the last fit (the first: after the first quarter of those steps, past the
# warm-up); T is aimed at RETIME_MARGIN of the remaining budget. The later fits catch
# rates that settle later: with one fit, 90 s fits of a 1024² mosaic out of core trained
# 76 s (full) and 88 s (the default) of it; with these three, 90.2 s each.
RETIME_SHARES, RETIME_MIN_STEPS, RETIME_MARGIN = (0.05, 0.25, 0.5), 20, 0.97


def _schedules_free_of_T(teacher_cfg) -> bool:
    """Whether the teacher selects the same way whatever T is (constant ratio, no
    incremental intervals): then only the LR depends on T and T may be refitted."""
    from .teach.schedules import parse_interval

    return teacher_cfg.ratio_schedule == "constant" and parse_interval(teacher_cfg.interval_schedule).kind != "incremental"


def _fit_steps_to_budget(opt, sched, step: int, seconds: float, budget: float,
                         warm_mark: tuple[int, float] = (0, 0.0)) -> int:
    """The T whose last step falls at the end of ``budget`` training seconds, with the LR's
    cosine moved onto it (`_extend_cosine`), so a run given only a time anneals instead of
    being cut at a high LR.

    The remaining seconds are filled at the rate measured since ``warm_mark`` (a step and the
    training seconds at it, a few steps into the run): the first steps carry the warm-up
    (thread pools, allocator, a round's first decode), and a rate that counted them left up
    to a quarter of a short budget unused. RETIME_MARGIN aims a little short; should the
    rate drop later, a run cut a few steps before its T has its LR within a hair of lr_min."""
    s0, t0 = warm_mark
    rate = (step - s0) / max(seconds - t0, 1e-9) if step > s0 and seconds > t0 else step / max(seconds, 1e-9)
    new_total = max(step + 1, step + int(RETIME_MARGIN * rate * max(budget - seconds, 0.0)))
    _extend_cosine(opt, sched, step, new_total)
    return new_total


def _extend_cosine(opt, sched, step: int, total: int) -> None:
    """Continue a finished run's cosine LR decay as the one of a ``total``-step run.

    The LR at ``step`` becomes that of step ``step`` of a ``total``-step schedule (half the
    initial LR when T doubles) and decays to ``lr_min`` at ``total``: the extra steps train
    as the end of a longer run would, rather than creeping along at ``lr_min``.
    """
    sched.T_max = total
    lrs = [sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * step / total)) / 2
           for base in sched.base_lrs]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
