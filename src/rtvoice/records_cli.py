"""``python -m rtvoice calls list|show SID|export|usage``: read the call records database.

The database is ``RTVOICE_DB_PATH`` (default ``rtvoice.sqlite3``) or ``--db PATH``. Reading is safe while a
server is writing (SQLite WAL: readers see the last committed state and never block the writer).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="call records database (default: RTVOICE_DB_PATH or rtvoice.sqlite3)")
    sub = parser.add_subparsers(dest="calls_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="the newest calls as a table")
    p.add_argument("--limit", type=int, default=50, help="how many calls (default 50)")
    p = sub.add_parser("show", help="one call: transcript, barge-ins, latencies, faults, usage")
    p.add_argument("sid", help="the CallSid")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p = sub.add_parser("export", help="every call record as JSON")
    p.add_argument("--format", choices=("json", "jsonl"), default="json", help="a JSON array or JSON lines")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p = sub.add_parser("usage", help="usage totals per day and profile: calls, minutes, tokens, characters")
    p.add_argument("--json", action="store_true", help="print the totals as JSON")


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: IO[str]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _minutes(m: float | None) -> str:
    return "-" if m is None else f"{m:.2f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def show(rec: dict[str, Any], out: IO[str]) -> None:
    """Print one call record for a human."""
    print(f"Call {rec['call_sid']}", file=out)
    print(f"  {rec['direction']} from {rec['from_number'] or '?'} to {rec['to_number'] or '?'}", file=out)
    print(f"  agent {rec['agent'] or '-'}, profile {rec['profile'] or '-'}", file=out)
    print(
        f"  started {_ts(rec['started_at'])} UTC, ended {_ts(rec['ended_at'])}, "
        f"{_minutes(rec['minutes'])} min, outcome {rec['outcome'] or '(in progress or interrupted)'}",
        file=out,
    )
    if rec.get("recording_in"):
        print(f"  recordings: {rec['recording_in']}  {rec['recording_out']}", file=out)
    print("\nTranscript", file=out)
    if not rec["turns"]:
        print("  (none)", file=out)
    for t in rec["turns"]:
        when = f"{(t['start_ms'] or 0) / 1000:7.2f}s" if t["start_ms"] is not None else "      - "
        cut = "  [interrupted]" if t["interrupted"] else ""
        print(f"  {when} {t['role']:>6}: {t['text']}{cut}", file=out)
    if rec["barge_ins"]:
        print("\nBarge-ins", file=out)
        for b in rec["barge_ins"]:
            at = f"{b['at_ms'] / 1000:.2f}s" if b["at_ms"] is not None else "-"
            heard = _ms(b["heard_ms"]) if b["heard_ms"] is not None else "nothing cut off"
            item = b["item_id"] or "-"
            print(f"  at {at}: heard {heard} of {item}, reaction {_ms(b['reaction_ms'])}", file=out)
    if rec["latencies"]:
        print("\nLatencies", file=out)
        for lat in rec["latencies"]:
            print(f"  {lat['name']}: {_ms(lat['value_ms'])}", file=out)
    if rec["faults"]:
        print("\nVendor errors", file=out)
        for f in rec["faults"]:
            fatal = " (fatal)" if f["fatal"] else ""
            print(f"  {_ts(f['at'])} {f['vendor'] or '-'} {f['kind']}{fatal}: {f['message']}", file=out)
    if rec["usage"]:
        print("\nUsage", file=out)
        for vendor, metrics in sorted(rec["usage"].items()):
            print(f"  {vendor}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())), file=out)


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    from rtvoice.config import Settings
    from rtvoice.records import CallRecords, RecordsError, iter_calls

    out = out if out is not None else sys.stdout
    db = args.db or Settings.from_env().db_path
    if not Path(db).is_file():
        print(f"rtvoice calls: no call records at {db} (set RTVOICE_DB_PATH or pass --db)", file=sys.stderr)
        return 1
    try:
        records = CallRecords(db)
    except RecordsError as exc:
        print(f"rtvoice calls: {exc}", file=sys.stderr)
        return 1
    try:
        if args.calls_command == "list":
            rows = [
                (
                    c["call_sid"],
                    _ts(c["started_at"]),
                    c["direction"],
                    c["from_number"],
                    c["to_number"],
                    c["profile"],
                    c["agent"],
                    _minutes(c["minutes"]),
                    c["outcome"] or "(open)",
                    c["turns"],
                    c["barge_ins"],
                    c["faults"],
                )
                for c in records.list_calls(args.limit)
            ]
            headers = ("CALL SID", "STARTED (UTC)", "DIRECTION", "FROM", "TO", "PROFILE", "AGENT", "MIN",
                       "OUTCOME", "TURNS", "BARGE-INS", "ERRORS")
            _table(rows, headers, out)
        elif args.calls_command == "show":
            rec = records.get(args.sid)
            if rec is None:
                print(f"rtvoice calls: no call {args.sid}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(rec, indent=2, ensure_ascii=False), file=out)
            else:
                show(rec, out)
        elif args.calls_command == "export":
            target: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else out  # noqa: SIM115
            try:
                with records._reader() as conn:
                    if args.format == "jsonl":
                        for rec in iter_calls(conn):
                            target.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    else:
                        json.dump(list(iter_calls(conn)), target, ensure_ascii=False, indent=1)
                        target.write("\n")
            finally:
                if target is not out:
                    target.close()
        elif args.calls_command == "usage":
            report = records.usage_report()
            if args.json:
                print(json.dumps(report, indent=2), file=out)
            else:
                metrics = sorted({k for r in report for k in r} - {"day", "profile", "calls", "minutes"})
                rows = [
                    (r["day"], r["profile"] or "-", r["calls"], f"{r['minutes']:.2f}",
                     *(f"{r.get(m, 0):g}" for m in metrics))
                    for r in report
                ]
                _table(rows, ("DAY (UTC)", "PROFILE", "CALLS", "MINUTES", *metrics), out)
    finally:
        records.close()
    return 0
