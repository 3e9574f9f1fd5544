"""From what the writer and the clients recorded to figures: per-seq times, latency
percentiles, delivery totals. All times compared across processes are ``time.time()``
on one machine."""

from __future__ import annotations

import sqlite3
from datetime import datetime

import numpy as np

from _servers import is_postgres


def commit_times(commits: list[tuple[int, int, float]], size: int) -> np.ndarray:
    """Per seq (index = seq), the time its commit returned (NaN if not committed by the writer)."""
    out = np.full(size, np.nan)
    for first, last, t in commits:
        out[first:last + 1] = t
    return out


def event_table(db_path: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(record_ts, types)`` indexed by seq: each event's timestamp (epoch s) and type."""
    if is_postgres(db_path):
        import psycopg

        with psycopg.connect(db_path) as conn:
            rows = conn.execute("SELECT seq, ts, type FROM events WHERE run_id=%s ORDER BY seq",
                                (run_id,)).fetchall()
    else:
        conn = sqlite3.connect(db_path)
        rows = conn.execute("SELECT seq, ts, type FROM events WHERE run_id=? ORDER BY seq", (run_id,)).fetchall()
        conn.close()
    size = rows[-1][0] + 1
    ts = np.full(size, np.nan)
    types = np.empty(size, dtype=object)
    for seq, t, typ in rows:
        ts[seq] = datetime.fromisoformat(t).timestamp()
        types[seq] = typ
    return ts, types


def tsmap_array(tsmap: dict, size: int) -> np.ndarray:
    out = np.full(size, np.nan)
    for seq, ts in tsmap.items():
        if 0 <= seq < size:
            out[seq] = datetime.fromisoformat(ts).timestamp()
    return out


def delivery_summary(socks: list[dict], last_seq: int) -> dict:
    """Totals over sockets: events received, sockets complete (reached ``last_seq``), anomalies."""
    return {
        "events": sum(s["events"] for s in socks),
        "complete": sum(1 for s in socks if s["cur"] is not None and s["cur"] >= last_seq),
        "gaps": sum(s["gaps"] for s in socks), "dups": sum(s["dups"] for s in socks),
        "bad": sum(s["bad"] for s in socks), "resets": sum(s["resets"] for s in socks),
        "frames": sum(s["frames"] for s in socks), "bytes": sum(s["bytes"] for s in socks),
    }


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def latency_stats(recv: np.ndarray, origin: np.ndarray, seqs: np.ndarray) -> dict:
    """Over every (socket, seq in ``seqs``): deliveries, and latency percentiles in ms."""
    sub = recv[:, seqs]
    got = ~np.isnan(sub)
    lat = (sub - origin[seqs])[got] * 1000.0
    return {"expected": sub.size, "delivered": int(got.sum()),
            "p50": pct(lat, 50), "p90": pct(lat, 90), "p95": pct(lat, 95), "p99": pct(lat, 99), "max": float(lat.max()) if lat.size else float("nan")}
