"""Tar-level checks the standard library's streaming ``tarfile`` does not make.

Used by the manifest scan (``shard_format.scan_manifest``) and the reader
(``shard_reader.iter_raw_samples``), which is why it lives in a module of its own: both import it,
neither imports the other.
"""

from __future__ import annotations

import tarfile


def check_member_extent(member: tarfile.TarInfo, file_size: int) -> None:
    """Raise ``tarfile.ReadError`` when a member's declared data runs past the end of the file.

    Streaming tarfile skips a member's data by reading it block by block, also past the end of the
    file: a forged header declaring e.g. 2**40 bytes would spin for hours. Such a member can only
    come from a truncated or forged shard, so the shard ends there (counted)."""
    if member.offset_data + member.size > file_size:
        raise tarfile.ReadError(f"member {member.name!r} declares {member.size} bytes at offset "
                                f"{member.offset_data}, past the end of the file ({file_size} bytes)")


def unsafe_name(name: str) -> bool:
    """A path that could leave the folder it is read in: empty, absolute, a drive, or with ``..``."""
    parts = name.replace("\\", "/").split("/")
    return not name or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")
