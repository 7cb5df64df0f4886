"""Teaching (DESIGN §7, §11): which samples the learner trains on.

``config``     strategy names, presets, step factors (torch-free: the CLI imports these);
``schedules``  the paper's ratio and interval schedules;
``topk``       pure top-k kernels over arrays;
``graph``      the Dask graph that scores chunks and merges their candidates;
``incore``     the teacher for a signal held in memory;
``rounds``     the teacher that works through a store in rounds of chunks.
"""

from .config import STEPS_FACTOR, STRATEGIES, STRATEGY_PRESETS, TeacherConfig, resolve_teacher

__all__ = ["STEPS_FACTOR", "STRATEGIES", "STRATEGY_PRESETS", "TeacherConfig", "resolve_teacher", "InCoreTeacher"]


def __getattr__(name):
    # The teachers import torch; keep `import intstream.teach` torch-free for the CLI.
    if name == "InCoreTeacher":
        from .incore import InCoreTeacher

        return InCoreTeacher
    raise AttributeError(name)
