"""What every frozen config dataclass shares: refusing keys it does not know."""

from __future__ import annotations

from dataclasses import fields

__all__ = ["check_keys"]


def check_keys(cls, keys, what: str) -> None:
    """Raise ValueError naming any of ``keys`` that is not a field of dataclass ``cls``.

    A typo in a config or an override must fail loudly, never silently become a default.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
