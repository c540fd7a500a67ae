"""Call records: every call leaves a row in SQLite: transcript, barge-ins, latencies, faults and usage.

Three layers:

* :class:`CallRecords` owns the database file. Writes go through a queue to **one writer thread** with its own
  connection (WAL mode), so nothing on the event loop ever waits for the disk: every write method is a
  synchronous ``put_nowait``. The writer commits as soon as the queue is momentarily empty, so an event is on
  disk (in the WAL, which survives the process being killed) within milliseconds; a burst is committed as one
  transaction. Reads (CLI, tests) use short-lived connections of their own; ``await records.flush()`` waits
  until everything queued so far is committed.
* :class:`CallRecorder` is the call's observer: the call (``rtvoice.call``) tells it what happens
  (``call_started``, ``turn``, ``barge_in``, ``latency``, ``usage``, ``fault``, ``call_ended``) and it turns
  that into rows. It also keeps the running usage of the call for :class:`UsageLimits`.
* :class:`LegRecorder` optionally writes both legs of a call (caller and bot, μ-law 8 kHz) to WAV files as the
  call goes, rewriting the header sizes every second so a killed process leaves playable files.

The schema is versioned: :data:`MIGRATIONS` is an ordered list, ``schema_version`` records what was applied,
and opening a database applies what is missing inside one transaction. Several worker processes may share one
database file (SQLite's locking plus a busy timeout serialise their writers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("rtvoice.records")

#: Ordered migrations; index + 1 is the schema version each one produces. Never edit a released entry: append.
MIGRATIONS: tuple[str, ...] = (
    # 1: the call and its events.
    """
    CREATE TABLE calls (
        call_sid     TEXT PRIMARY KEY,
        account_sid  TEXT NOT NULL DEFAULT '',
        stream_sid   TEXT NOT NULL DEFAULT '',
        from_number  TEXT NOT NULL DEFAULT '',
        to_number    TEXT NOT NULL DEFAULT '',
        direction    TEXT NOT NULL DEFAULT 'inbound',
        agent        TEXT NOT NULL DEFAULT '',
        profile      TEXT NOT NULL DEFAULT '',
        started_at   REAL NOT NULL,
        ended_at     REAL,
        outcome      TEXT,
        updated_at   REAL NOT NULL
    );
    CREATE TABLE turns (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_sid     TEXT NOT NULL REFERENCES calls(call_sid),
        role         TEXT NOT NULL CHECK (role IN ('caller', 'bot')),
        text         TEXT NOT NULL,
        full_text    TEXT,
        interrupted  INTEGER NOT NULL DEFAULT 0,
        start_ms     INTEGER,
        end_ms       INTEGER,
        at           REAL NOT NULL
    );
    CREATE TABLE barge_ins (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_sid     TEXT NOT NULL REFERENCES calls(call_sid),
        at_ms        INTEGER,
        item_id      TEXT NOT NULL DEFAULT '',
        heard_ms     INTEGER,
        reaction_ms  REAL,
        at           REAL NOT NULL
    );
    CREATE TABLE latencies (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_sid     TEXT NOT NULL REFERENCES calls(call_sid),
        name         TEXT NOT NULL,
        value_ms     REAL NOT NULL,
        at_ms        INTEGER,
        at           REAL NOT NULL
    );
    CREATE TABLE faults (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_sid     TEXT NOT NULL REFERENCES calls(call_sid),
        vendor       TEXT NOT NULL DEFAULT '',
        kind         TEXT NOT NULL,
        message      TEXT NOT NULL DEFAULT '',
        fatal        INTEGER NOT NULL DEFAULT 0,
        at           REAL NOT NULL
    );
    CREATE TABLE usage (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        call_sid     TEXT NOT NULL REFERENCES calls(call_sid),
        vendor       TEXT NOT NULL,
        metric       TEXT NOT NULL,
        amount       REAL NOT NULL,
        at           REAL NOT NULL
    );
    CREATE INDEX turns_call ON turns(call_sid, id);
    CREATE INDEX barge_ins_call ON barge_ins(call_sid);
    CREATE INDEX latencies_call ON latencies(call_sid);
    CREATE INDEX faults_call ON faults(call_sid);
    CREATE INDEX usage_call ON usage(call_sid);
    """,
    # 2: list and usage queries go by start time; recordings are attached to calls.
    """
    CREATE INDEX calls_started ON calls(started_at);
    ALTER TABLE calls ADD COLUMN recording_in TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN recording_out TEXT NOT NULL DEFAULT '';
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

#: Queued writes beyond this are dropped (and logged) rather than growing memory without bound if the disk
#: stalls. At a few hundred bytes per event this is a few MB.
MAX_QUEUED_WRITES = 20_000
#: How long the writer lets writes gather after the first one before committing them together, s.
COALESCE_S = 0.05

#: Usage metric names that count as "tokens" for limits and the usage report.
TOKEN_METRICS = (
    "input_text_tokens",
    "input_audio_tokens",
    "output_text_tokens",
    "output_audio_tokens",
)


def _metrics() -> Any:
    """The operations metrics, registered once in rtvoice's Prometheus registry (``GET /metrics``)."""
    global _METRICS
    if _METRICS is None:
        from types import SimpleNamespace

        from prometheus_client import Counter, Histogram

        from rtvoice.metrics import REGISTRY

        # Latency buckets span a snappy 150 ms to a sluggish 5 s first response.
        buckets = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
        _METRICS = SimpleNamespace(
            turn_latency=Histogram(
                "rtvoice_turn_latency_seconds",
                "Caller end of speech -> first bot audio sent (stage=sent) / heard by mark (stage=heard)",
                ["stage"],
                registry=REGISTRY,
                buckets=buckets,
            ),
            barge_ins=Counter(
                "rtvoice_barge_ins", "Caller barge-ins (cut_off: whether bot audio was cut)", ["cut_off"],
                registry=REGISTRY,
            ),
            vendor_errors=Counter(
                "rtvoice_vendor_errors",
                "Vendor faults by vendor and kind",
                ["vendor", "kind"],
                registry=REGISTRY,
            ),
            vendor_usage=Counter(
                "rtvoice_vendor_usage",
                "Vendor usage: OpenAI tokens by kind, ElevenLabs characters",
                ["vendor", "metric"],
                registry=REGISTRY,
            ),
            call_seconds=Counter(
                "rtvoice_call_seconds", "Seconds of finished calls by profile", ["profile"], registry=REGISTRY
            ),
        )
    return _METRICS


_METRICS: Any = None


class RecordsError(RuntimeError):
    """The records database cannot be used (newer schema, unwritable path, ...)."""


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection configured the way every rtvoice connection is (WAL, busy timeout, row factory)."""
    if readonly:
        conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit is in the WAL file (the OS page cache) when it returns, which survives
        # the process being killed; only a power cut can lose the last transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database lacks, in order, each in its own transaction; return the version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL)"
    )
    while True:
        conn.execute("BEGIN IMMEDIATE")  # serialise with other processes migrating at the same moment
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0] or 0)
            if current > SCHEMA_VERSION:
                raise RecordsError(
                    f"records database schema version {current} is newer than this rtvoice ({SCHEMA_VERSION})"
                )
            if current == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return current
            for statement in _split_sql(MIGRATIONS[current]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (current + 1, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _split_sql(script: str) -> list[str]:
    # executescript() would COMMIT implicitly; run statements one by one inside our transaction instead.
    return [s.strip() for s in script.split(";") if s.strip()]


_STOP = object()
_Write = tuple[str, tuple[Any, ...]]


class CallRecords:
    """The call records database at ``path``, with its single writer thread.

    Use as a context manager or call :meth:`close`. All write methods are non-blocking.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise RecordsError(f"cannot open call records database {str(self.path)!r}: {exc}") from exc
        try:
            self.schema_version = migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise RecordsError(f"cannot migrate call records database {str(self.path)!r}: {exc}") from exc
        self._queue: queue.Queue[Any] = queue.Queue(MAX_QUEUED_WRITES)
        self.dropped = 0
        self.write_errors = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="rtvoice-records", daemon=True
        )
        self._thread.start()

    # --- the writer thread ----------------------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                batch = [item]
                if type(item) is tuple and COALESCE_S > 0:
                    # Let the writes of the next moments gather before taking the GIL for a transaction:
                    # under load (hundreds of calls: turns, latencies, usage) one commit every COALESCE_S
                    # instead of one wake-up and commit per event, and the event loop's puts find no
                    # waiter to notify. A kill loses nothing more: queued writes were not on disk either.
                    time.sleep(COALESCE_S)
                # Drain what is already queued into the same transaction: one fsync-free commit per burst.
                while len(batch) < 500:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = self._apply(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[Any]) -> bool:
        stop = False
        waiters: list[Future[None]] = []
        writes: list[_Write] = []
        for item in batch:
            if item is _STOP:
                stop = True
            elif isinstance(item, Future):
                waiters.append(item)
            else:
                writes.append(item)
        if writes:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, params in writes:
                    try:
                        conn.execute(sql, params)
                    except sqlite3.IntegrityError as exc:
                        # One bad event (e.g. a turn for an unknown call) must not lose the others.
                        self.write_errors += 1
                        log.warning("call record write rejected: %s", exc, extra={"sql": sql.split("(")[0]})
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.write_errors += len(writes)
                log.error("call records write failed: %s", exc)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        for w in waiters:
            if not w.done():
                w.set_result(None)
        return stop

    def _put(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((sql, params))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("call records queue full: %d writes dropped", self.dropped)

    # --- writes (non-blocking) ------------------------------------------------------------------------------

    def start_call(
        self,
        call_sid: str,
        *,
        from_number: str = "",
        to_number: str = "",
        direction: str = "inbound",
        agent: str = "",
        profile: str = "",
        account_sid: str = "",
        stream_sid: str = "",
        started_at: float | None = None,
    ) -> None:
        """Create (or refresh: a reconnected stream keeps its first start time) the record of ``call_sid``."""
        now = time.time()
        self._put(
            "INSERT INTO calls (call_sid, account_sid, stream_sid, from_number, to_number, direction, agent,"
            " profile, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(call_sid) DO UPDATE SET stream_sid=excluded.stream_sid, agent=excluded.agent,"
            " profile=excluded.profile, updated_at=excluded.updated_at,"
            " from_number=CASE WHEN excluded.from_number != '' THEN excluded.from_number"
            " ELSE from_number END,"
            " to_number=CASE WHEN excluded.to_number != '' THEN excluded.to_number ELSE to_number END",
            (
                call_sid,
                account_sid,
                stream_sid,
                from_number,
                to_number,
                direction,
                agent,
                profile,
                started_at if started_at is not None else now,
                now,
            ),
        )

    def add_turn(
        self,
        call_sid: str,
        role: str,
        text: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        *,
        full_text: str | None = None,
        interrupted: bool = False,
    ) -> None:
        """A transcript turn. For the bot, ``text`` is what was heard, ``full_text`` what was generated."""
        self._put(
            "INSERT INTO turns (call_sid, role, text, full_text, interrupted, start_ms, end_ms, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call_sid, role, text, full_text, int(interrupted), start_ms, end_ms, time.time()),
        )

    def add_barge_in(
        self,
        call_sid: str,
        at_ms: int | None,
        heard_ms: int | None,
        reaction_ms: float | None,
        item_id: str = "",
    ) -> None:
        self._put(
            "INSERT INTO barge_ins (call_sid, at_ms, item_id, heard_ms, reaction_ms, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (call_sid, at_ms, item_id, heard_ms, reaction_ms, time.time()),
        )

    def add_latency(self, call_sid: str, name: str, value_ms: float, at_ms: int | None = None) -> None:
        self._put(
            "INSERT INTO latencies (call_sid, name, value_ms, at_ms, at) VALUES (?, ?, ?, ?, ?)",
            (call_sid, name, float(value_ms), at_ms, time.time()),
        )

    def add_fault(
        self, call_sid: str, kind: str, message: str, *, vendor: str = "", fatal: bool = False
    ) -> None:
        self._put(
            "INSERT INTO faults (call_sid, vendor, kind, message, fatal, at) VALUES (?, ?, ?, ?, ?, ?)",
            (call_sid, vendor, kind, message, int(fatal), time.time()),
        )

    def add_usage(self, call_sid: str, vendor: str, counts: Mapping[str, float]) -> None:
        now = time.time()
        for metric, amount in counts.items():
            if amount:
                self._put(
                    "INSERT INTO usage (call_sid, vendor, metric, amount, at) VALUES (?, ?, ?, ?, ?)",
                    (call_sid, vendor, metric, float(amount), now),
                )

    def set_recordings(self, call_sid: str, inbound: str, outbound: str) -> None:
        self._put(
            "UPDATE calls SET recording_in=?, recording_out=?, updated_at=? WHERE call_sid=?",
            (inbound, outbound, time.time(), call_sid),
        )

    def end_call(self, call_sid: str, outcome: str, ended_at: float | None = None) -> None:
        """Mark the call finished with ``outcome`` (the first end wins: a late duplicate changes nothing)."""
        now = time.time()
        self._put(
            "UPDATE calls SET ended_at=?, outcome=?, updated_at=? WHERE call_sid=? AND ended_at IS NULL",
            (ended_at if ended_at is not None else now, outcome, now, call_sid),
        )

    # --- flushing and closing -------------------------------------------------------------------------------

    def flush_future(self) -> Future[None]:
        """A future resolved once every write queued before this call is committed."""
        fut: Future[None] = Future()
        if self._closed or not self._thread.is_alive():
            fut.set_result(None)
        else:
            self._queue.put(fut)
        return fut

    async def flush(self) -> None:
        """Wait (without blocking the loop) until everything queued so far is committed."""
        await asyncio.wrap_future(self.flush_future())

    def flush_sync(self, timeout: float = 30.0) -> None:
        self.flush_future().result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued and stop the writer thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> CallRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reads ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = connect(self.path)
        try:
            yield conn
        finally:
            conn.close()

    def list_calls(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._reader() as conn:
            return list_calls(conn, limit)

    def get(self, call_sid: str) -> dict[str, Any] | None:
        with self._reader() as conn:
            return get_call(conn, call_sid)

    def usage_report(self) -> list[dict[str, Any]]:
        with self._reader() as conn:
            return usage_report(conn)

    def day_usage(self, day: str | None = None) -> dict[str, float]:
        with self._reader() as conn:
            return day_usage(conn, day)


# --- queries (plain functions over a connection, shared with the CLI) ---------------------------------------


def _minutes(row: Mapping[str, Any]) -> float | None:
    if row["ended_at"] is None:
        return None
    return max(0.0, (float(row["ended_at"]) - float(row["started_at"])) / 60.0)


def list_calls(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` calls, newest first, with turn counts and minutes."""
    rows = conn.execute(
        "SELECT c.*, (SELECT COUNT(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turns,"
        " (SELECT COUNT(*) FROM barge_ins b WHERE b.call_sid = c.call_sid) AS barge_ins,"
        " (SELECT COUNT(*) FROM faults f WHERE f.call_sid = c.call_sid) AS faults"
        " FROM calls c ORDER BY c.started_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["minutes"] = _minutes(r)
        out.append(d)
    return out


def get_call(conn: sqlite3.Connection, call_sid: str) -> dict[str, Any] | None:
    """The whole record of one call, or None."""
    row = conn.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
    if row is None:
        return None
    rec = dict(row)
    rec["minutes"] = _minutes(row)

    def many(sql: str) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(sql, (call_sid,)).fetchall()]

    rec["turns"] = many(
        "SELECT role, text, full_text, interrupted, start_ms, end_ms, at FROM turns"
        " WHERE call_sid=? ORDER BY id"
    )
    for t in rec["turns"]:
        t["interrupted"] = bool(t["interrupted"])
    rec["barge_ins"] = many(
        "SELECT at_ms, item_id, heard_ms, reaction_ms, at FROM barge_ins WHERE call_sid=? ORDER BY id"
    )
    rec["latencies"] = many("SELECT name, value_ms, at_ms, at FROM latencies WHERE call_sid=? ORDER BY id")
    rec["faults"] = many("SELECT vendor, kind, message, fatal, at FROM faults WHERE call_sid=? ORDER BY id")
    for f in rec["faults"]:
        f["fatal"] = bool(f["fatal"])
    usage: dict[str, dict[str, float]] = {}
    for r in conn.execute(
        "SELECT vendor, metric, SUM(amount) AS amount FROM usage WHERE call_sid=? GROUP BY vendor, metric",
        (call_sid,),
    ):
        usage.setdefault(r["vendor"], {})[r["metric"]] = r["amount"]
    rec["usage"] = usage
    return rec


def iter_calls(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Every call's full record, oldest first (for export)."""
    sids = [r[0] for r in conn.execute("SELECT call_sid FROM calls ORDER BY started_at, call_sid")]
    for sid in sids:
        rec = get_call(conn, sid)
        if rec is not None:
            yield rec


def usage_report(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Totals per (UTC day, profile): calls, minutes, tokens by kind, ElevenLabs characters."""
    report: dict[tuple[str, str], dict[str, Any]] = {}
    for r in conn.execute(
        "SELECT date(started_at, 'unixepoch') AS day, profile, COUNT(*) AS calls,"
        " SUM(CASE WHEN ended_at IS NOT NULL THEN (ended_at - started_at) / 60.0 ELSE 0 END) AS minutes"
        " FROM calls GROUP BY day, profile"
    ):
        report[(r["day"], r["profile"])] = {
            "day": r["day"],
            "profile": r["profile"],
            "calls": r["calls"],
            "minutes": round(float(r["minutes"] or 0.0), 3),
        }
    for r in conn.execute(
        "SELECT date(c.started_at, 'unixepoch') AS day, c.profile, u.vendor, u.metric,"
        " SUM(u.amount) AS amount"
        " FROM usage u JOIN calls c ON c.call_sid = u.call_sid GROUP BY day, c.profile, u.vendor, u.metric"
    ):
        entry = report[(r["day"], r["profile"])]
        entry[f"{r['vendor']}.{r['metric']}"] = r["amount"]
    return [report[k] for k in sorted(report)]


def day_usage(conn: sqlite3.Connection, day: str | None = None) -> dict[str, float]:
    """Minutes (ended calls) and tokens used on UTC ``day`` (YYYY-MM-DD, default today) across all calls."""
    day = day or time.strftime("%Y-%m-%d", time.gmtime())
    row = conn.execute(
        "SELECT COALESCE(SUM((COALESCE(ended_at, updated_at) - started_at) / 60.0), 0) FROM calls"
        " WHERE date(started_at, 'unixepoch') = ?",
        (day,),
    ).fetchone()
    placeholders = ",".join("?" * len(TOKEN_METRICS))
    tok = conn.execute(
        "SELECT COALESCE(SUM(u.amount), 0) FROM usage u JOIN calls c ON c.call_sid = u.call_sid"
        f" WHERE date(c.started_at, 'unixepoch') = ? AND u.metric IN ({placeholders})",
        (day, *TOKEN_METRICS),
    ).fetchone()
    return {"minutes": float(row[0]), "tokens": float(tok[0])}


# --- vendor usage helpers -----------------------------------------------------------------------------------


def openai_usage_counts(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """Flatten OpenAI Realtime ``response.done``'s ``response.usage`` into metric counts.

    ``input_cached_tokens`` is a subset of the input tokens (billed at a lower rate), not an addition.
    """
    if not usage:
        return {}
    inp = usage.get("input_token_details") or {}
    out = usage.get("output_token_details") or {}

    def n(d: Mapping[str, Any], key: str) -> int:
        v = d.get(key)
        return int(v) if isinstance(v, int | float) else 0

    return {
        "input_text_tokens": n(inp, "text_tokens"),
        "input_audio_tokens": n(inp, "audio_tokens"),
        "input_cached_tokens": n(inp, "cached_tokens"),
        "output_text_tokens": n(out, "text_tokens"),
        "output_audio_tokens": n(out, "audio_tokens"),
    }


# --- limits -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """Optional caps; 0 means unlimited. The call consults :meth:`CallRecorder.limit_reason` (e.g. once per
    second) and, when it returns a reason, says goodbye and hangs up."""

    call_minutes: float = 0.0
    call_tokens: int = 0
    day_minutes: float = 0.0
    day_tokens: int = 0

    def check(
        self, call_minutes: float, call_tokens: float, day_minutes: float, day_tokens: float
    ) -> str | None:
        """The first limit reached, as a short reason (``call_minutes`` ...), or None."""
        if self.call_minutes and call_minutes >= self.call_minutes:
            return "call_minutes"
        if self.call_tokens and call_tokens >= self.call_tokens:
            return "call_tokens"
        if self.day_minutes and day_minutes + call_minutes >= self.day_minutes:
            return "day_minutes"
        if self.day_tokens and day_tokens + call_tokens >= self.day_tokens:
            return "day_tokens"
        return None

    @property
    def enabled(self) -> bool:
        return bool(self.call_minutes or self.call_tokens or self.day_minutes or self.day_tokens)


# --- the call observer --------------------------------------------------------------------------------------


class _CallInfoLike(Protocol):
    call_sid: str
    stream_sid: str
    account_sid: str
    from_number: str
    to_number: str
    direction: str


class _HeardLike(Protocol):
    item_id: str
    audio_end_ms: int


class _TurnLatencyLike(Protocol):
    caller_end_ms: int

    @property
    def to_first_audio_ms(self) -> int | None: ...

    @property
    def to_heard_ms(self) -> int | None: ...


@dataclass(slots=True)
class CallRecorder:
    """Records one call: implements ``rtvoice.call.call.CallObserver`` (``call_started``, ``turn``,
    ``barge_in``, ``latency``, ``call_ended``) plus ``usage`` and ``fault`` for the agents.

    Every method is synchronous and cheap (a queue put): safe to call on the event loop. ``agent`` and
    ``profile`` are known when the call is set up (before ``call_started``); ``clock`` gives wall time in
    seconds (injectable for tests of the limits).
    """

    records: CallRecords
    call_sid: str = ""
    agent: str = ""
    profile: str = ""
    limits: UsageLimits = field(default_factory=UsageLimits)
    clock: Callable[[], float] = time.time
    #: Minutes and tokens used today before this call started (see :meth:`load_day_usage`).
    day_before: dict[str, float] = field(default_factory=lambda: {"minutes": 0.0, "tokens": 0.0})
    started_at: float | None = None
    ended: bool = False
    tokens: float = 0.0
    usage_totals: dict[str, dict[str, float]] = field(default_factory=dict)
    legs: LegRecorder | None = None
    #: Called once, with the reason, when a usage limit is first reached (checked on every usage, turn and
    #: latency event: no timer per call). The call wires it to a polite goodbye and hang-up.
    on_limit: Callable[[str], None] | None = None
    limit_hit: str | None = None

    def call_started(self, info: _CallInfoLike) -> None:
        """The Media Stream started (``info`` is the call's :class:`rtvoice.agents.base.CallInfo`)."""
        self.call_sid = info.call_sid
        self.started_at = self.clock()
        if not self.profile:
            # An outbound call's profile rides in the stream's custom parameters (when passed on).
            params = getattr(info, "custom_parameters", None) or {}
            self.profile = str(params.get("profile", ""))
        self.records.start_call(
            info.call_sid,
            from_number=info.from_number,
            to_number=info.to_number,
            direction=info.direction,
            agent=self.agent,
            profile=self.profile,
            account_sid=info.account_sid,
            stream_sid=info.stream_sid,
            started_at=self.started_at,
        )

    def record_audio(self, directory: str | Path) -> LegRecorder:
        """Start recording both legs to WAV files in ``directory`` (after :meth:`call_started`)."""
        self.legs = LegRecorder(directory, self.call_sid)
        self.records.set_recordings(self.call_sid, str(self.legs.inbound_path), str(self.legs.outbound_path))
        return self.legs

    async def load_day_usage(self) -> None:
        """Read today's totals off the loop (only needed when day limits are set)."""
        self.day_before = await asyncio.to_thread(self.records.day_usage)

    def turn(
        self,
        role: str,
        text: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        *,
        full_text: str | None = None,
        interrupted: bool = False,
    ) -> None:
        """A transcript turn (bot text already cut to what the caller heard)."""
        self.records.add_turn(
            self.call_sid, role, text, start_ms, end_ms, full_text=full_text, interrupted=interrupted
        )
        self._check_limits()

    def barge_in(self, heard: _HeardLike | None, reaction_ms: float, at_ms: int | None = None) -> None:
        """The caller interrupted; ``heard`` is how much of which item they heard (None: nothing was cut)."""
        _metrics().barge_ins.labels(cut_off="yes" if heard is not None else "no").inc()
        self.records.add_barge_in(
            self.call_sid,
            at_ms,
            heard.audio_end_ms if heard is not None else None,
            reaction_ms,
            heard.item_id if heard is not None else "",
        )

    def latency(self, turn: _TurnLatencyLike) -> None:
        """One caller -> bot turn's latencies (``eos_to_first_audio_sent``, ``eos_to_first_audio_heard``)."""
        m = _metrics().turn_latency
        if (sent := turn.to_first_audio_ms) is not None:
            self.records.add_latency(self.call_sid, "eos_to_first_audio_sent", sent, turn.caller_end_ms)
            m.labels(stage="sent").observe(sent / 1000.0)
        if (heard := turn.to_heard_ms) is not None:
            self.records.add_latency(self.call_sid, "eos_to_first_audio_heard", heard, turn.caller_end_ms)
            m.labels(stage="heard").observe(heard / 1000.0)
        self._check_limits()

    def usage(self, vendor: str, **counts: float) -> None:
        """Vendor usage increments, e.g. ``usage("openai", **openai_usage_counts(u))`` or
        ``usage("elevenlabs", characters=42)``."""
        per_vendor = self.usage_totals.setdefault(vendor, {})
        counter = _metrics().vendor_usage
        for metric, amount in counts.items():
            if amount:
                counter.labels(vendor=vendor, metric=metric).inc(amount)
            per_vendor[metric] = per_vendor.get(metric, 0.0) + amount
            if metric in TOKEN_METRICS:
                self.tokens += amount
        self.records.add_usage(self.call_sid, vendor, counts)
        self._check_limits()

    def fault(self, kind: str, message: str, *, vendor: str = "", fatal: bool = False) -> None:
        _metrics().vendor_errors.labels(vendor=vendor or self.agent or "unknown", kind=kind).inc()
        self.records.add_fault(self.call_sid, kind, message, vendor=vendor, fatal=fatal)

    def call_ended(self, outcome: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self.legs is not None:
            self.legs.close()
        now = self.clock()
        self.records.end_call(self.call_sid, outcome, now)
        if self.started_at is not None:
            _metrics().call_seconds.labels(profile=self.profile or "-").inc(max(0.0, now - self.started_at))

    def agent_usage(self, usage: Any) -> None:
        """Record an agent's whole-call usage object (``rtvoice.agents.vendor_common.Usage``: anything with
        ``as_dict()`` using its field names), mapping it to the record's metric names."""
        d = usage.as_dict() if hasattr(usage, "as_dict") else dict(usage)
        tokens = {
            "input_text_tokens": d.get("input_text_tokens", 0),
            "input_audio_tokens": d.get("input_audio_tokens", 0),
            "input_cached_tokens": d.get("cached_tokens", 0),
            "output_text_tokens": d.get("output_text_tokens", 0),
            "output_audio_tokens": d.get("output_audio_tokens", 0),
        }
        if any(tokens.values()):
            self.usage("openai", **tokens)  # only OpenAI bills tokens among rtvoice's vendors
        if d.get("tts_characters"):
            self.usage("elevenlabs", characters=d["tts_characters"])

    @property
    def minutes(self) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, (self.clock() - self.started_at) / 60.0)

    def _check_limits(self) -> None:
        if self.limit_hit is not None or self.ended or not self.limits.enabled:
            return
        reason = self.limit_reason()
        if reason is not None:
            self.limit_hit = reason
            self.records.add_fault(self.call_sid, "usage_limit", reason, vendor="rtvoice")
            if self.on_limit is not None:
                self.on_limit(reason)

    def limit_reason(self) -> str | None:
        """Which usage limit this call has reached (``call_minutes``, ``day_tokens`` ...), or None."""
        if not self.limits.enabled:
            return None
        day = self.day_before
        return self.limits.check(self.minutes, self.tokens, day["minutes"], day["tokens"])


# --- WAV recording of both legs -----------------------------------------------------------------------------

WAVE_FORMAT_MULAW = 7
#: Header sizes are rewritten at least this often, so a killed process leaves a file whose header covers all
#: but the last second of audio (players then read exactly what the header says).
HEADER_REFRESH_BYTES = 8000


def _mulaw_wav_header(data_len: int) -> bytes:
    # RIFF/WAVE with a 18-byte fmt chunk (cbSize=0) and a 'fact' chunk, as non-PCM formats require.
    fmt = struct.pack("<HHIIHHH", WAVE_FORMAT_MULAW, 1, 8000, 8000, 1, 8, 0)
    fact = struct.pack("<I", data_len)
    riff_len = 4 + (8 + len(fmt)) + (8 + len(fact)) + (8 + data_len)
    return (
        b"RIFF"
        + struct.pack("<I", riff_len)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<I", len(fact))
        + fact
        + b"data"
        + struct.pack("<I", data_len)
    )


HEADER_LEN = len(_mulaw_wav_header(0))


class MulawWavWriter:
    """Appends μ-law 8 kHz mono to a WAV file, keeping the header valid as it grows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")  # noqa: SIM115 - kept open for the call
        self._f.write(_mulaw_wav_header(0))
        self.data_len = 0
        self._since_header = 0

    def write(self, ulaw: bytes | memoryview) -> None:
        if self._f.closed:
            return
        self._f.write(ulaw)
        self.data_len += len(ulaw)
        self._since_header += len(ulaw)
        if self._since_header >= HEADER_REFRESH_BYTES:
            self._refresh_header()

    def _refresh_header(self) -> None:
        self._f.flush()
        end = self._f.tell()
        self._f.seek(0)
        self._f.write(_mulaw_wav_header(self.data_len))
        self._f.seek(end)
        self._f.flush()  # into the OS page cache: survives the process dying
        self._since_header = 0

    def close(self) -> None:
        if not self._f.closed:
            self._refresh_header()
            self._f.close()


def repair_wav(path: str | Path) -> int:
    """Fix the header sizes of a μ-law WAV written by :class:`MulawWavWriter` whose writer was killed.

    Returns the number of audio bytes the repaired header declares.
    """
    p = Path(path)
    with open(p, "r+b") as f:
        f.seek(0, 2)
        data_len = max(0, f.tell() - HEADER_LEN)
        f.seek(0)
        f.write(_mulaw_wav_header(data_len))
    return data_len


class LegRecorder:
    """Both legs of one call as two WAV files in ``directory``: ``<CallSid>-in.wav`` (caller) and
    ``<CallSid>-out.wav`` (bot audio as sent to Twilio). Writes are small buffered file appends (no fsync);
    call them from the call's frame path only when recording is enabled."""

    def __init__(self, directory: str | Path, call_sid: str) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.inbound_path = d / f"{call_sid}-in.wav"
        self.outbound_path = d / f"{call_sid}-out.wav"
        self.inbound = MulawWavWriter(self.inbound_path)
        self.outbound = MulawWavWriter(self.outbound_path)

    def caller_audio(self, ulaw: bytes | memoryview) -> None:
        self.inbound.write(ulaw)

    def bot_audio(self, ulaw: bytes | memoryview) -> None:
        self.outbound.write(ulaw)

    def close(self) -> None:
        self.inbound.close()
        self.outbound.close()


def record_to_json(rec: Mapping[str, Any]) -> str:
    """One call record as a JSON document (used by ``calls show --json`` and export)."""
    return json.dumps(rec, ensure_ascii=False, sort_keys=False, default=str)


def observer_factory(
    records: CallRecords, settings: Any, limits: UsageLimits | None = None
) -> Callable[[], CallRecorder]:
    """A factory making one :class:`CallRecorder` per Media Stream, for ``CallRegistry.observer_factory``
    (``rtvoice.call.session`` calls it for each stream). Usage limits come from ``settings.max_*``.

    Audio recording (``settings.record_audio_dir``) is not switched on here: it needs the call to feed
    ``recorder.legs`` with every inbound and outbound frame (see :meth:`CallRecorder.record_audio`)."""
    lim = limits if limits is not None else UsageLimits(
        call_minutes=settings.max_call_minutes,
        call_tokens=settings.max_call_tokens,
        day_minutes=settings.max_day_minutes,
        day_tokens=settings.max_day_tokens,
    )

    def make() -> CallRecorder:
        return CallRecorder(records, agent=settings.agent, limits=lim)

    return make


def attach(registry: Any, settings: Any) -> CallRecords:
    """Open ``settings.db_path`` and make every call served through ``registry`` leave a record.

    Returns the :class:`CallRecords` (close it at shutdown to commit what is queued).
    """
    records = CallRecords(settings.db_path)
    registry.observer_factory = observer_factory(records, settings)
    return records



def attach_lazily(registry: Any, settings: Any) -> None:
    """Like :func:`attach`, but the database is opened when the first call starts (once per process, e.g.
    per worker), so building an app that never serves a call touches no file. If the database cannot be
    opened, calls go on unrecorded and the error is logged once."""
    import atexit

    state: dict[str, Any] = {"make": None, "failed": False}

    def make() -> CallRecorder | None:
        if state["make"] is None and not state["failed"]:
            try:
                records = CallRecords(settings.db_path)
            except RecordsError as exc:
                state["failed"] = True
                log.error("calls will not be recorded: %s", exc)
                return None
            atexit.register(records.close)  # commit what is queued when the process exits
            state["make"] = observer_factory(records, settings)
        return state["make"]() if state["make"] is not None else None

    registry.observer_factory = make
