"""Audio through soundfile (libsndfile): WAV/FLAC/OGG/MP3, read in blocks, rate kept."""

from __future__ import annotations

from pathlib import Path


from ..errors import InputError

__all__ = ["open_audio"]

# libsndfile subtype -> the dtype we store (lossless for PCM up to 16 bits).
_SUBTYPE_DTYPE = {"PCM_S8": "int16", "PCM_U8": "int16", "PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32"}


def _header_says_truncated(f) -> str | None:
    """What libsndfile's header log says is missing, if the data chunk is cut short.

    libsndfile silently shortens a WAV/AIFF whose data chunk runs past the end of the
    file (logging ``data : <declared> (should be <present>)``); an ingest would then
    store a shorter signal without a word. A declared size *smaller* than the data
    (headers of unfinished streaming writes say 0) is harmless and accepted.
    """
    import re

    for line in (f.extra_info or "").splitlines():
        m = re.match(r"\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", line)
        if m and int(m.group(2)) > int(m.group(3)) and int(m.group(2)) < 0xFFFFFFFF:
            return f"header declares {m.group(2)} data bytes, the file holds {m.group(3)}"
    return None


class Audio:
    kind = "audio"

    def __init__(self, path: Path):
        import soundfile as sf

        try:
            self._f = sf.SoundFile(str(path))
        except Exception as exc:
            raise InputError(path, f"corrupt or unreadable audio ({exc})") from None
        self.path = path
        frames = self._f.frames
        if frames <= 0 or frames >= 2**62:  # libsndfile reports huge frame counts for unseekable streams
            self._f.close()
            raise InputError(path, "audio has no samples" if frames <= 0 else "audio length is unknown")
        short = _header_says_truncated(self._f)
        if short:
            self._f.close()
            raise InputError(path, f"truncated audio: {short}")
        self.shape = (int(frames),)
        self.channels = int(self._f.channels)
        self.dtype = _SUBTYPE_DTYPE.get(self._f.subtype, "float32")
        self.meta = {"sample_rate": int(self._f.samplerate), "subtype": self._f.subtype, "format": self._f.format}

    def read(self, slices):
        (s,) = slices
        if self._f.tell() != s.start:
            self._f.seek(s.start)
        n = s.stop - s.start
        block = self._f.read(n, dtype=self.dtype if self.dtype != "float32" else "float32", always_2d=True)
        if len(block) < n:
            raise InputError(self.path, f"truncated audio: expected {self.shape[0]} samples, data ends at {s.start + len(block)}")
        return block

    def close(self):
        self._f.close()


def open_audio(path: Path):
    """Open an audio file for sequential block reads."""
    return Audio(path)
