"""The shipper's side of the spool: reading batches, acknowledging, dead letters, upkeep."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spooler._spool_core import DEAD_LETTER_KEEP, SpoolCore
from spooler.spoolfile import (
    is_full,
)
from spooler.timestamps import now_iso


@dataclass(frozen=True)
class SpoolRow:
    """One waiting entry as read back from the spool: its JSON text, parsed on demand."""

    id: int
    kind: str
    created_at: str
    text: str

    @property
    def entry(self) -> dict[str, Any]:
        """The entry as a dict (parsed from ``text`` on each access)."""
        value = json.loads(self.text)
        if not isinstance(value, dict):
            raise ValueError("entry is not a JSON object")
        return value


@dataclass(frozen=True)
class SpoolBatch:
    """A batch read as one request body: rows ``first_id..last_id``, ``count`` of them."""

    first_id: int
    last_id: int
    count: int
    body: str


_VACUUM_STEP = 1024  # pages incremental_vacuum frees per maintain() (4 MiB, ~50 ms)
_VACUUM_LIVE_PAGES = 2048  # up to this many live pages (8 MiB), VACUUM rebuilds instead


class SpoolShipping(SpoolCore):
    """What the one shipper does with the spool: read, acknowledge, dead-letter, maintain."""

    def read_batch(self, limit: int, *, after_id: int = 0) -> list[SpoolRow]:
        """Up to ``limit`` waiting rows in append order (ids above ``after_id``)."""
        with self._locked(5.0) as conn:
            # fetchall ends the read transaction at once: never hold a
            # snapshot open across network I/O (checkpoint starvation).
            # SQLite checks the JSON in C; the shipper splices the text into the
            # request body without parsing it in Python.
            raw = conn.execute(
                "SELECT id, kind, created_at, entry, CASE WHEN json_valid(entry) "
                "THEN json_type(entry) = 'object' ELSE 0 END "
                "FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        rows: list[SpoolRow] = []
        unreadable: list[int] = []
        for id_, kind, created_at, text, valid in raw:
            if valid:
                rows.append(SpoolRow(id_, kind, created_at, text))
            else:
                unreadable.append(id_)
        if unreadable:
            self.dead_letter(unreadable, status=None, reason="unreadable JSON in spool")
        return rows

    def fills_batch(self, size: int, *, after_id: int = 0) -> bool:
        """Whether at least ``size`` rows wait above ``after_id``: one step over their ids,
        about a tenth of what reading them costs (no entry text is loaded)."""
        with self._locked(5.0) as conn:
            row = conn.execute(
                "SELECT 1 FROM entries WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                (after_id, max(0, size - 1)),
            ).fetchone()
        return row is not None

    def read_body(
        self, limit: int, *, after_id: int = 0, last_id: int | None = None
    ) -> SpoolBatch | None:
        """The next batch as a ready request body.

        Up to ``limit`` rows above ``after_id`` (and up to ``last_id`` if given), each
        with its ``entry_id`` (``<spool id>-<row id>``) spliced in before the closing
        brace of the stored JSON object (spooler's own encoding: never parsed again),
        joined in id order. None when nothing waits there. Raises
        :class:`ValueError` when a row does not look like a JSON object: read those
        rows with :meth:`read_batch`, which checks each and moves bad ones aside.
        """
        upper = (1 << 62) if last_id is None else last_id
        with self._locked(5.0) as conn:
            # fetchall ends the read transaction at once: never hold a snapshot open
            # across network I/O (checkpoint starvation).
            rows = conn.execute(
                "SELECT id, entry FROM entries WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, upper, limit),
            ).fetchall()
        if not rows:
            return None
        prefix = ',"entry_id":"' + (self.spool_id or "spool") + "-"
        # One pass, in C as far as Python allows: spooler writes every object as
        # '{"' ... '}' (compact, at least one key), so a row that does not start and
        # end that way is not one of its own and is never sent as it is.
        try:
            parts = [
                f'{text[:-1]}{prefix}{id_}"}}'
                for id_, text in rows
                if text[-1] == "}" and text[:2] == '{"'
            ]
        except (TypeError, IndexError):
            parts = []
        if len(parts) != len(rows):
            raise ValueError("a row does not hold a JSON object as spooler writes it")
        body = '{"entries":[' + ",".join(parts) + "]}"
        return SpoolBatch(int(rows[0][0]), int(rows[-1][0]), len(rows), body)

    def ack_range(
        self, first_id: int, last_id: int, count: int, *, timeout: float | None = None
    ) -> int:
        """Delete the batch ``first_id..last_id`` of ``count`` rows the Cloud took.

        Ids only grow, so the rows in that range are exactly the batch read: one
        range delete. Rows gone meanwhile were evicted in flight and count as shipped.
        ``timeout`` (seconds to wait for the write lock) defaults to the spool's
        ``busy_timeout``, which costs no statement to put in force.
        """

        def work(conn: sqlite3.Connection) -> int:
            n = int(
                conn.execute(
                    "DELETE FROM entries WHERE id BETWEEN ? AND ?", (first_id, last_id)
                ).rowcount
            )
            self._count_shipped(conn, count, n)
            return n

        return int(self._transaction(work, timeout))

    def _count_shipped(self, conn: sqlite3.Connection, sent: int, deleted: int) -> None:
        """``sent`` rows reached the Cloud, ``deleted`` were still here: the rest were
        evicted while in flight and move from ``evicted`` to ``shipped``."""
        if sent:
            self._bump(conn, "shipped", sent)
        if sent > deleted:
            self._bump(conn, "evicted", deleted - sent)
        # At most once a second: a drain acknowledges hundreds of batches a second,
        # and status needs the time to the second, not one more write per batch.
        now = time.monotonic()
        if now - self._delivery_noted >= 1.0:
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_delivery_at', ?)",
                (now_iso(),),
            )
            self._delivery_noted = now

    def ack(self, ids: Iterable[int], *, timeout: float | None = 5.0) -> int:
        """Delete rows the Cloud took and count them as shipped; returns rows deleted.

        A row already gone was evicted at the cap while its request was in flight
        (only the one shipper deletes otherwise): the Cloud has it, so it moves
        from ``evicted`` to ``shipped`` and is counted once.
        """
        unique = sorted(set(ids))
        id_list = json.dumps(unique)

        def work(conn: sqlite3.Connection) -> int:
            n = conn.execute(
                "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            ).rowcount
            # Ids above the sequence were never appended: nothing to count.
            known = conn.execute(
                "SELECT count(*) FROM json_each(?) WHERE value <= "
                "(SELECT seq FROM sqlite_sequence WHERE name = 'entries')",
                (id_list,),
            ).fetchone()[0]
            self._count_shipped(conn, int(known), int(n))
            return int(n)

        return int(self._transaction(work, timeout))

    def dead_letter(
        self,
        ids: Iterable[int],
        *,
        status: int | None,
        reason: str,
        timeout: float | None = 5.0,
    ) -> int:
        """Move rows the Cloud rejected to ``dead_letters`` (kept, never resent).

        Rows move a few at a time, so a spool at its cap never holds a row twice over;
        when even that does not fit, the oldest kept dead letters make room (counted
        as ``dead_letters_evicted``), and failing that the row is not kept at all.
        """
        unique = sorted(set(ids))
        rejected_at = now_iso()

        def move(conn: sqlite3.Connection, chunk: list[int]) -> int:
            id_list = json.dumps(chunk)
            kept = False
            for _ in range(3):
                try:
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters"
                        "(id, kind, created_at, entry, rejected_at, status, reason) "
                        "SELECT id, kind, created_at, entry, ?, ?, ? FROM entries "
                        "WHERE id IN (SELECT value FROM json_each(?))",
                        (rejected_at, status, reason[:500], id_list),
                    )
                    kept = True
                    break
                except sqlite3.OperationalError as exc:
                    if not is_full(exc) or not conn.in_transaction:
                        raise
                    if not self._evict_dead_letters(conn, 2 * len(chunk)):
                        break  # nothing left to make room with
            n = int(
                conn.execute(
                    "DELETE FROM entries WHERE id IN (SELECT value FROM json_each(?))",
                    (id_list,),
                ).rowcount
            )
            if n and not kept:
                self._bump(conn, "dead_letters_evicted", n)  # counted, no copy kept
            return n

        def work(conn: sqlite3.Connection) -> int:
            n = sum(move(conn, unique[i : i + 8]) for i in range(0, len(unique), 8))
            if n:
                self._bump(conn, "dead_lettered", n)
            # Keep the newest DEAD_LETTER_KEEP: the oldest beyond that are evicted (counted).
            kept = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            if kept > DEAD_LETTER_KEEP:
                self._evict_dead_letters(conn, kept - DEAD_LETTER_KEEP)
            return n

        return int(self._transaction(work, timeout))

    def still_waiting(self, rows: Sequence[SpoolRow]) -> list[SpoolRow]:
        """The rows of ``rows`` that are still in the spool (not evicted meanwhile)."""
        if not rows:
            return []
        id_list = json.dumps([r.id for r in rows])
        with self._locked(5.0) as conn:
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM entries WHERE id IN (SELECT value FROM json_each(?))",
                    (id_list,),
                )
            }
        return [r for r in rows if r.id in present]

    def changes(self) -> tuple[int, int]:
        """A token that changes whenever rows may have been added: another connection
        committed (``PRAGMA data_version``) or entries were appended through this object.

        The shipper compares it to tell news from the echo of its own writes.
        """
        with self._locked(5.0) as conn:
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        return version, self._appends

    def set_meta(self, values: Mapping[str, str | None], *, timeout: float | None = 5.0) -> None:
        """Record shipper state (last delivery, last error) for ``status``."""

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items())
            )

        self._transaction(work, timeout)

    def _give_back(self, conn: sqlite3.Connection, used: int) -> None:
        """Return free pages to the file system, holding the write lock briefly.

        incremental_vacuum costs about 45 us per page it frees (it rewrites the
        freelist through the WAL): a drained 40 MiB spool took 0.4 s, while an
        immediate-mode host waits at most 0.5 s for the lock. So it frees at most
        ``_VACUUM_STEP`` pages per call, and a spool left with few live pages (the
        usual case after a backlog drained) is rebuilt with VACUUM instead, whose
        cost follows the live pages (about 2 ms for a drained 40 MiB spool).
        """
        if used <= _VACUUM_LIVE_PAGES:
            try:
                conn.execute("VACUUM")
                conn.execute(f"PRAGMA max_page_count = {self._max_pages}")
                return
            except sqlite3.OperationalError as exc:  # busy, or a reader in the way
                self._log_once("vacuum", "spool could not VACUUM (%s); freeing pages in steps", exc)
        conn.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP});")

    def maintain(self) -> dict[str, int]:
        """Checkpoint the WAL and give free pages back; the shipper's routine chore.

        Returns the checkpoint's result and the pages freed. Never raises.
        """
        out = {"busy": 0, "vacuumed_pages": 0}
        try:
            with self._locked(1.0) as conn:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                if free > 64 and free * 4 > pages:
                    self._give_back(conn, pages - free)
                    out["vacuumed_pages"] = pages - conn.execute("PRAGMA page_count").fetchone()[0]
                complete = self._checkpoint(conn)  # the next commit trims the WAL
                out.update(busy=int(not complete))
        except Exception as exc:
            self._log_once("maintain", "spool maintenance failed: %s", exc)
        return out
