"""The one seam between the training loop and its teachers (DESIGN §11, STYLE 13).

A teacher decides what the learner trains on. The loop in `intstream.fit` calls only
what `Teacher` declares; every teacher implements all of it, so the loop never asks
whether a part exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np
import torch

__all__ = ["Batch", "Teacher"]


@dataclass
class Batch:
    """What one optimiser step trains on.

    Attributes
    ----------
    parts
        ``(x, y, weight)`` pieces of the step's samples (``weight`` per sample, or None for
        a plain mean). The loss is the mean over all pieces' samples together, so the step's
        gradient is the same however the samples are cut into pieces: in core there is one
        piece; out of core `full` streams the signal chunk group by chunk group.
    n
        Samples in all parts together.
    ratio
        The selected fraction of the signal at this step (1 for every sample).
    interval
        Steps between selections at this point of the schedule.
    selected
        Whether a new selection was made for this step.
    """

    parts: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    n: int
    ratio: float
    interval: int
    selected: bool


class Teacher(Protocol):
    """What the training loop needs of a teacher.

    Attributes
    ----------
    grad_clip
        Max gradient norm for each optimiser step, or None (the paper's mini-batch INT
        clips at 0.1).
    out_of_core
        Whether the teacher reads the signal round by round from its store.
    """

    grad_clip: float | None
    out_of_core: bool

    def batch(self, step: int, model: torch.nn.Module) -> Batch:
        """The samples to train on at ``step`` (selecting anew when the schedule says so)."""

    def observe(self, pred: torch.Tensor) -> None:
        """The training forward's predictions for the last part handed out (free error estimates)."""

    def train_mse(self, model: torch.nn.Module, exact: bool = False) -> tuple[float | None, bool]:
        """MSE of the current weights over the signal, and whether it was measured over
        every sample (True) or estimated from the teacher's statistics (False). ``exact``
        asks for the measurement even where it costs a pass over the store."""

    def sample_map(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """Where the teacher sampled, on the coarse grid of `intstream.teach.maps`:
        ``"error"``, its per-sample error estimate (mean over each cell of the summed
        absolute error over channels, NaN where never estimated) and ``"selected"``, how
        many samples of each cell it handed out over the run (selections, with repeats).
        Read after training; it never changes what the teacher selects."""

    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically after `load_state_dict`."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`'s output."""

    def close(self) -> None:
        """Release threads, clients and files."""
