"""Reading a spool's ``-wal`` the way SQLite's recovery does, to see what it dropped.

SQLite's recovery stops at the first WAL frame whose salts or checksum do not
match and silently drops every later frame, committed or not. This module reads
the WAL itself (before SQLite opens it) so :mod:`spooler.spoolfile` can compare
with what SQLite kept and count what was lost.

Layout (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic,
version, page size, checkpoint sequence, salt-1, salt-2, checksum-1,
checksum-2), then frames of a 24-byte header (page number, database size after
commit (non-zero: a commit frame), salt-1, salt-2, checksum-1, checksum-2) and
one page. Checksums run over 32-bit words, little-endian when the magic is
0x377f0682 and big-endian when it is 0x377f0683, each frame's seeded with the
previous frame's.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["WalLoss", "WalSnapshot", "header_salts", "read_wal", "scan_lost"]

logger = logging.getLogger("spooler.spool")

_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_MAX_READ = 256 << 20  # a WAL past this is not read (spools keep theirs far smaller)
_TABLE_LEAF = 0x0D


@dataclass(frozen=True)
class WalSnapshot:
    """A ``-wal`` file's bytes as read at one moment."""

    data: bytes
    page_size: int
    salts: tuple[int, int]
    word_order: str  # struct byte order of the checksum's 32-bit words

    @property
    def frames(self) -> int:
        """Whole frames in the file (valid or not)."""
        return (len(self.data) - 32) // (self.page_size + 24)


@dataclass(frozen=True)
class WalLoss:
    """Committed transactions beyond SQLite's valid frames, and the entries they held."""

    transactions: int = 0
    rows: int = 0
    highest_id: int = 0


def _parse_header(data: bytes) -> tuple[int, tuple[int, int], str] | None:
    if len(data) < 32:
        return None
    magic, _version, page_size, _seq, salt1, salt2 = struct.unpack_from(">6I", data)
    if magic not in (_MAGIC_LE, _MAGIC_BE):
        return None
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return None
    return page_size, (salt1, salt2), "<" if magic == _MAGIC_LE else ">"


def read_wal(path: str) -> WalSnapshot | None:
    """The whole WAL at ``path`` as it is now; None when there is none worth reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > _MAX_READ:
            logger.warning("WAL %s is too large (%d bytes) to check for lost frames", path, size)
            return None
        chunks = []
        while size > 0 and (chunk := os.read(fd, min(size, 1 << 20))):
            chunks.append(chunk)
            size -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    parsed = _parse_header(data)
    if parsed is None:
        return None
    page_size, salts, order = parsed
    wal = WalSnapshot(data, page_size, salts, order)
    return wal if wal.frames else None


def header_salts(path: str) -> tuple[int, int] | None:
    """The salts in the WAL header at ``path`` now (they change when the WAL restarts)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        parsed = _parse_header(os.pread(fd, 32, 0))
    finally:
        os.close(fd)
    return parsed[1] if parsed else None


def scan_lost(wal: WalSnapshot, valid: int, seq: int) -> WalLoss:
    """Commit frames with the current salts after the first ``valid`` frames, and the
    ``entries`` rows above ``seq`` (the recovered AUTOINCREMENT sequence) they hold.

    Only frames whose checksum verifies are trusted, each seeded with the previous
    frame's stored checksum so one damaged frame does not hide later ones: a commit
    frame torn by a kill between its two writes is no committed transaction, and
    garbage must never become a row id.
    """
    step = wal.page_size + 24
    data = wal.data
    trusted: list[int] = []
    commits = 0
    last_commit = 0
    for i in range(valid + 1, wal.frames + 1):
        at = 32 + (i - 1) * step
        _pgno, commit, salt1, salt2, sum1, sum2 = struct.unpack_from(">6I", data, at)
        if (salt1, salt2) != wal.salts:
            continue  # a frame from before the WAL last restarted, or a damaged header
        seed = struct.unpack_from(">2I", data, at - step + 16 if i > 1 else 24)
        body = data[at : at + 8] + data[at + 24 : at + step]
        if _checksum(body, seed, wal.word_order) != (sum1, sum2):
            continue
        trusted.append(i)
        if commit:
            commits += 1
            last_commit = i
    if not commits:
        return WalLoss()
    highest = seq
    for i in trusted:
        if i > last_commit:
            break  # an uncommitted tail
        at = 32 + (i - 1) * step
        pgno = struct.unpack_from(">I", data, at)[0]
        for rowid in _entry_rowids(data[at + 24 : at + step], 100 if pgno == 1 else 0):
            highest = max(highest, rowid)
    # Ids are handed out without gaps: every id above seq up to the highest seen
    # was committed in the lost frames, even one whose only page was damaged.
    return WalLoss(commits, highest - seq, highest)


def _checksum(body: bytes, seed: tuple[int, ...], order: str) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(body) // 4}I", body)
    s0, s1 = seed
    for a, b in zip(words[0::2], words[1::2], strict=True):
        s0 = (s0 + a + s1) & 0xFFFFFFFF
        s1 = (s1 + b + s0) & 0xFFFFFFFF
    return s0, s1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for k in range(8):
        byte = buf[pos + k]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + k + 1
    return (value << 8) | buf[pos + 8], pos + 9


def _entry_rowids(page: bytes, offset: int) -> Iterator[int]:
    """Row ids of ``entries`` rows on a table-leaf page; other tables' rows differ in shape.

    ``offset`` is where the b-tree header starts (100 on page 1). A cell is a
    varint payload length, a varint rowid, then the record: a varint header size
    and one varint serial type per column.
    """
    if len(page) < offset + 8 or page[offset] != _TABLE_LEAF:
        return
    cells = int.from_bytes(page[offset + 3 : offset + 5], "big")
    for k in range(cells):
        ptr = offset + 8 + 2 * k
        cell = int.from_bytes(page[ptr : ptr + 2], "big")
        types: list[int] = []
        try:
            _size, pos = _varint(page, cell)
            rowid, pos = _varint(page, pos)
            header_size, at = _varint(page, pos)
            while at < pos + header_size and len(types) < 5:
                kind, at = _varint(page, at)
                types.append(kind)
        except IndexError:
            continue
        # entries(id INTEGER PRIMARY KEY, kind, created_at, entry): the id is the
        # rowid (its column stored as NULL), then three TEXT columns (odd types >= 13).
        shaped = len(types) == 4 and types[0] == 0 and all(t >= 13 and t % 2 for t in types[1:])
        if shaped and 0 < rowid < 1 << 63:
            yield rowid
