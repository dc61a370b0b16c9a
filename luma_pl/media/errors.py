"""The one error media decoding raises: it always names the file (or the label of a byte payload)."""

from __future__ import annotations


class MediaError(ValueError):
    """A media file could not be decoded, or decoded to nothing usable.

    ``path`` is the file path, or the caller's ``name`` for an in-memory payload (e.g. a shard's
    ``<key>.flac``). The args are ``(path, reason)`` so the exception pickles across DataLoader
    workers intact.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot use media file {self.path!r}: {self.reason}"


def describe_source(source: object, name: str | None) -> str:
    """The label a ``MediaError`` uses: ``name`` if given, the path, or ``<N bytes>``."""
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def read_source(source, label: str) -> bytes:
    """All bytes of a path or an in-memory payload; ``MediaError(label, ...)`` when missing or empty.

    Reading the whole file first lets one code path serve paths and shard payloads, and makes an
    empty file a clear error instead of a backend-specific one."""
    from pathlib import Path

    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError(label, "no such file")
        raw = path.read_bytes()
    if not raw:
        raise MediaError(label, "the file is empty (0 bytes)")
    return raw
