"""intstream: huge signals -> implicit neural representations, trained with INT, out of core."""

from pathlib import Path as _Path

from .errors import InputError
from .normalize import Normalisation
from .store import SignalStore, create_store, open_store

__all__ = ["InputError", "Normalisation", "SignalStore", "create_store", "open_store", "ingest"]


def ingest(*args, **kwargs):
    """See `intstream.ingest.ingest` (imported lazily to keep ``import intstream`` light)."""
    from .ingest import ingest as _ingest

    return _ingest(*args, **kwargs)
