import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("INTSTREAM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The read-only real test data (../shared/data)."""
    assert DATA.is_dir(), f"test data not found at {DATA} (set INTSTREAM_DATA)"
    return DATA
