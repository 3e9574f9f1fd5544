"""Server fan-out: 100 events/s to 1,000 subscribers for ~20 s; every event to every client.

Same setup as server_latency.py (a real ``jupyter server`` subprocess; the engine in its
own process writes ``ctx.progress`` at ``--rate``; sockets spread over ``--procs``
client processes parse every frame), at 1,000 sockets. Figures:

- ``delivered_fraction``: deliveries (socket, event) that arrived, over sockets x
  events, counted ``--grace`` seconds after the last commit; each socket also checks that
  seqs arrive contiguous (no gap, no duplicate, no reset).
- ``commit_to_receipt`` p50/p99 (ms): receive time - the wall time the event's commit
  returned in the writing process; and ``record_to_receipt`` p99 (from the event's
  timestamp, set before the commit).

Baseline: ``_baseline_ws.py paced``, a plain Tornado server broadcasting the same rate to
the same number of sockets, one frame per event, from memory. It is expected to fall
behind (~11k frames/s at 1,000 clients on these machines vs 100k needed): its delivered
fraction is counted at the same grace, and its percentiles are over what it delivered.

    python benchmarks/server_fanout.py [--clients 1000] [--rate 100] [--seconds 20] [--procs 4] [--profile]
"""

from __future__ import annotations

import os
import time

import _common
from _common import bench_dir, emit, note
from _paced import paced_comparison

P99_MS = 250.0


def main() -> int:
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100.0, help="events per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds after the last commit (baseline: after the last event was due) "
                        "before deliveries are counted")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baseline (A/B runs of the server alone); baseline_value is then 0")
    args = p.parse_args()
    t_start = time.perf_counter()

    with bench_dir(args.dir) as d:
        db = os.path.join(d, "served.sqlite")
        eng, base = paced_comparison(args, db, d)

    tag = f"{args.clients}subs_{args.rate:g}eps_{args.seconds:g}s"
    label = (f"plain Tornado WebSocket server, one frame per event, events from memory, {args.clients} sockets "
             f"in {args.procs} client processes")
    if args.no_baseline:
        label = "skipped (--no-baseline)"
    c, b = eng["commit"], base["due"]
    frac, bfrac = c["delivered"] / c["expected"], b["delivered"] / b["expected"]
    clean = not (eng["summary"]["gaps"] or eng["summary"]["dups"] or eng["summary"]["resets"])
    emit(f"server_fanout.delivered_fraction_{tag}", frac, "deliveries/expected",
         label + f"; counted {args.grace:g} s after the last event was due", bfrac,
         "1.0 (every event to every client, in order, no reset)", frac == 1.0 and clean)
    ok_all = frac == 1.0
    emit(f"server_fanout.commit_to_receipt_p50_ms_{tag}", c["p50"], "ms",
         label + "; latency from each event's due time, over what it delivered", b["p50"],
         "(info; p99 is the target)", ok_all)
    emit(f"server_fanout.commit_to_receipt_p99_ms_{tag}", c["p99"], "ms",
         label + "; latency from each event's due time, over what it delivered", b["p99"],
         f"<= {P99_MS:g} ms, every event delivered", c["p99"] <= P99_MS and ok_all)
    r = eng["record"]
    emit(f"server_fanout.record_to_receipt_p99_ms_{tag}", r["p99"], "ms",
         label + "; latency from each event's due time, over what it delivered", b["p99"],
         f"<= {P99_MS:g} ms, every event delivered", r["p99"] <= P99_MS and ok_all)
    note(f"[server_fanout.py] {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
