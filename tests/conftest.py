import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("INTSTREAM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only real test data (../shared/data)."""
    assert DATA.is_dir(), f"test data not found at {DATA} (set INTSTREAM_DATA)"
    return DATA


@pytest.fixture
def bf16_scoring(monkeypatch):
    """Run bf16 autocast scoring as a native-bf16 device would, whatever this CPU has
    (`intstream.models.mlp.bf16_native`; without it an AVX2 CPU scores in float32)."""
    from intstream.models import mlp

    monkeypatch.setattr(mlp, "bf16_native", lambda device_type: True)
