"""`make bench`: what the portal adds to FastGPT's own speed, measured side by side in one run.

    python -m bench.run [--quick]

Starts the real stack (bench.stack), then:
  1. added time to first token: browser-like portal turns against direct streaming calls to the
     same double, alternating, one at a time;
  2. concurrency: 100, 500 and 1,000 turns streaming at once from a double pacing 20 tokens/s for
     200 tokens; completion, added first-token time, throughput, CPU and memory;
  3. per-chunk cost: from the double writing a chunk to the client reading it, and CPU per token.
Prints one table and writes bench/results.json. --quick: 200 pairs and 100 streams (< 3 min).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import analysis
from bench.stack import PY, ROOT, Monitor, Stack, StackConfig, redis_pid, token

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
TOKENS = 200
TOKEN_RATE = 20.0


def run_clients(plans: list[dict], timeout: float = 600.0) -> tuple[list[dict], float]:
    """Run each plan in its own client process; returns all results and the clients' CPU."""
    procs = []
    for _plan in plans:
        proc = subprocess.Popen(
            [PY, "-m", "bench.client"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        procs.append(proc)
    for proc, plan in zip(procs, plans, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(plan).encode())
        proc.stdin.close()
    results: list[dict] = []
    cpu = 0.0
    for proc in procs:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout)
        if proc.returncode:
            raise RuntimeError(f"a client process failed with {proc.returncode}")
        data = json.loads(out)
        results.extend(data["results"])
        cpu += data["cpu_s"]
    return results, cpu


def _web(stack: Stack) -> list:
    return ["127.0.0.1", stack.web_port]


def _turn_rows(pks: list[int]) -> dict[int, dict]:
    from fastgpt_portal.chat.models import Turn

    rows = Turn.objects.filter(pk__in=pks).values(
        "pk", "status", "answer", "data_id", "conversation__chat_id"
    )
    return {
        r["pk"]: {**r, "chat_id": r["conversation__chat_id"]}
        for r in rows  # type: ignore[misc]
    }


def warm_up(stack: Stack, users: list[dict]) -> None:
    jobs = [
        {
            "kind": "portal",
            "user": users[i % len(users)],
            "text": f"warm up {i}",
            "app": "bench-fast",
        }
        for i in range(20)
    ]
    results, _ = run_clients([{"web": _web(stack), "jobs": jobs, "sequential": True}])
    bad = [r["error"] for r in results if r["error"]]
    if bad:
        raise RuntimeError(f"warm-up turns failed: {bad[:3]}")


def phase_ttft(stack: Stack, user: dict, pairs: int) -> dict[str, Any]:
    """Portal and direct first-token times, alternating, one request at a time."""
    double = stack.doubles["fast"]
    from fastgpt_portal.upstream.double import DOUBLE_APP_KEY

    jobs = []
    tag = token()
    for i in range(pairs):
        text = f"ttft {tag} {i}"
        portal = {"kind": "portal", "user": user, "text": text, "app": "bench-fast", "tag": i}
        direct = {"kind": "direct", "text": text, "tag": i}
        # Alternate which goes first, so neither always follows the other's cache warm-up.
        jobs += [portal, direct] if i % 2 == 0 else [direct, portal]
    plan = {
        "web": _web(stack),
        "double": ["127.0.0.1", double.port],
        "key": DOUBLE_APP_KEY,
        "jobs": jobs,
        "sequential": True,
    }
    # The direct calls never reach the portal: its CPU in this phase is the portal turns'.
    with Monitor(stack_groups(stack)) as monitor:
        results, _ = run_clients([plan])
    portal = [r for r in results if r["kind"] == "portal" and not r["error"] and r["t_first"]]
    direct = [r for r in results if r["kind"] == "direct" and not r["error"] and r["t_first"]]
    p_ttft = [r["t_first"] - r["t0"] for r in portal]
    d_ttft = [r["t_first"] - r["t0"] for r in direct]
    by_tag = {r["tag"]: r["t_first"] - r["t0"] for r in direct}
    paired = [r["t_first"] - r["t0"] - by_tag[r["tag"]] for r in portal if r["tag"] in by_tag]
    added = {k: analysis.percentile(p_ttft, p) - analysis.percentile(d_ttft, p)
             for k, p in (("p50", 50), ("p95", 95), ("p99", 99))}  # fmt: skip
    # Where the portal's time goes, from the client's side.
    send = [r["t_sent"] - r["t0"] for r in portal]
    # ...and from the worker's, by the turn's own timestamps.
    breakdown = worker_breakdown([r["turn"] for r in portal])
    return {
        "pairs": pairs,
        "portal_ok": len(portal),
        "direct_ok": len(direct),
        "portal_ttft": analysis.pcts(p_ttft),
        "direct_ttft": analysis.pcts(d_ttft),
        "added": added,
        "added_paired": analysis.pcts(paired),
        "send_response": analysis.pcts(send),
        # queued (the INSERT) -> task started -> first token in the worker.
        "worker_breakdown": breakdown,
        # Each turn's whole cost (send, answer stream, a 20-token answer), one at a time.
        "cpu_ms_per_turn": {
            g: 1000 * monitor.cpu[g] / max(1, len(portal)) for g in ("web", "worker")
        },
        "errors": [r["error"] for r in results if r["error"]][:5],
    }


def worker_breakdown(pks: list[int]) -> dict[str, dict[str, float]]:
    """Percentiles, in seconds, of queued (the INSERT) -> task started ("dispatch") -> first
    token in the worker ("upstream": the claim, which also marks the question sent, and the call
    to FastGPT), from the turns' own timestamps (all taken by the portal's clock)."""
    from fastgpt_portal.chat.models import Turn

    stamps = Turn.objects.filter(pk__in=pks).values_list(
        "queued_at", "started_at", "first_token_at"
    )
    breakdown: dict[str, list[float]] = {"dispatch": [], "upstream": []}
    for queued, started, first in stamps:
        if queued and started and first:
            breakdown["dispatch"].append((started - queued).total_seconds())
            breakdown["upstream"].append((first - started).total_seconds())
    return {k: analysis.pcts(v) for k, v in breakdown.items() if v}


def phase_concurrency(
    stack: Stack, users: list[dict], n: int, *, clients: int, ramp: float
) -> dict[str, Any]:
    """n turns started over `ramp` seconds from n distinct users, all streaming at once."""
    double = stack.doubles["paced"]
    double.reset()
    tag = token()
    jobs = [
        {
            "kind": "portal",
            "at": i * ramp / n,
            "user": users[i],
            "text": f"concurrency {tag} {n} turn {i}",
            "app": "bench-paced",
        }
        for i in range(n)
    ]
    start_at = time.monotonic() + 1.0
    plans = [
        {"web": _web(stack), "jobs": jobs[k::clients], "start_at": start_at} for k in range(clients)
    ]
    groups = stack_groups(stack)
    with Monitor(groups) as monitor:
        results, client_cpu = run_clients(plans)
    received = double.received()
    rows = _turn_rows([r["turn"] for r in results if r.get("turn")])
    expected = analysis.expected_answers(list(rows.values()), double.chats())
    check = analysis.check_turns(results, expected, rows)

    by_text = {e["json"]["messages"][-1]["content"]: e for e in received if e.get("json")}
    added, chunk = [], []
    for r in results:
        entry = by_text.get(r["text"])
        if not entry or not r.get("t_first") or not entry.get("writes"):
            continue
        upstream_ttft = entry["writes"][0] - entry["time"]
        added.append(r["t_first"] - r["t0"] - upstream_ttft)
        want = expected.get(r.get("turn"))
        if want:
            chunk.extend(analysis.chunk_latencies(r, entry["writes"], want))
    sent_rate, read_rate, sent, read = analysis.summarise_rates(results, received)
    streaming = [
        (r["t_first"], r["t_done"]) for r in results if r.get("t_first") and r.get("t_done")
    ]
    in_flight = [(r["t0"], r.get("t_done") or r["t0"]) for r in results]
    peak_streaming = analysis.peak_overlap(streaming)
    peak_in_flight = analysis.peak_overlap(in_flight)
    portal_cpu = monitor.cpu["web"] + monitor.cpu["worker"]
    mem_growth = sum(max(0, monitor.peak_rss[g] - monitor.start_rss[g]) for g in ("web", "worker"))
    return {
        "turns": n,
        "ramp_s": ramp,
        "completed": check.completed,
        "lost": check.lost,
        "duplicated": check.duplicated,
        "failed": check.failed,
        "errors": check.errors[:5],
        "peak_streaming": peak_streaming,
        "added_ttft_ms": {k: v * 1000 for k, v in analysis.pcts(added).items()},
        "added_ttft_p99_ms": analysis.percentile(added, 99) * 1000,
        # Where the first token's time goes under load: the client's POST /chat/send, and the
        # worker's share by the turns' timestamps.
        "send_response": analysis.pcts([r["t_sent"] - r["t0"] for r in results if r.get("t_sent")]),
        "worker_breakdown": worker_breakdown([r["turn"] for r in results if r.get("turn")]),
        "tokens_sent": sent,
        "tokens_delivered": read,
        "tokens_per_s_sent": sent_rate,
        "tokens_per_s_delivered": read_rate,
        "chunk_latency_ms": {k: v * 1000 for k, v in analysis.pcts(chunk).items()},
        "cpu_s": dict(monitor.cpu),
        "cpu_percent": {g: 100 * c / monitor.wall for g, c in monitor.cpu.items()},
        "wall_s": monitor.wall,
        "peak_rss_mb": {g: v / 2**20 for g, v in monitor.peak_rss.items()},
        "memory_per_turn_kb": mem_growth / 1024 / max(1, peak_in_flight),
        "portal_cpu_us_per_token": 1e6 * portal_cpu / max(1, read),
        "redis_cpu_us_per_token": 1e6 * monitor.cpu.get("redis", 0.0) / max(1, read),
        "client_cpu_percent": 100 * client_cpu / monitor.wall,
    }


def stack_groups(stack: Stack) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {
        "web": [stack.web.pid] if stack.web else [],
        "worker": [w.pid for w in stack.workers],
        "double": [d.proc.pid for d in stack.doubles.values()],
    }
    pid = redis_pid(stack.env["REDIS_URL"])
    if pid:
        groups["redis"] = [pid]
    if stack.database == "PostgreSQL":
        postmasters = [
            p.pid
            for p in psutil.process_iter(["name", "ppid"])
            if p.info["name"] in ("postgres", "postmaster")
            and psutil.Process(p.info["ppid"]).name() not in ("postgres", "postmaster")
        ]
        if postmasters:
            groups["postgres"] = postmasters
    return groups


def machine() -> dict[str, Any]:
    import redis

    info = redis.Redis.from_url(os.environ["REDIS_URL"]).info("server")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": psutil.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "redis": info.get("redis_version"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(report: dict[str, Any]) -> str:
    """One table: each figure, what was measured, the goal and whether it is met."""
    ms = analysis.fmt_ms
    rows: list[tuple[str, str, str, str]] = []
    t, a = report["ttft"], report["ttft"]["added"]
    rows += [
        (f"added TTFT p50 ({t['pairs']} pairs)", ms(a["p50"]), "<= 10 ms", _yes(a["p50"] <= 0.01)),
        ("added TTFT p95", ms(a["p95"]), "", ""),
        ("added TTFT p99", ms(a["p99"]), "<= 25 ms", _yes(a["p99"] <= 0.025)),
        ("  portal / direct TTFT p50",
         f"{ms(t['portal_ttft']['p50'])} / {ms(t['direct_ttft']['p50'])}", "", ""),
        ("  of which POST /chat/send p50", ms(t["send_response"]["p50"]), "", ""),
    ]  # fmt: skip
    if w := t.get("worker_breakdown"):
        rows.append(
            ("  worker: queued->task / ->1st token",
             " / ".join(ms(w[k]["p50"]) for k in ("dispatch", "upstream")), "", "")
        )  # fmt: skip
    if c := t.get("cpu_ms_per_turn"):
        rows.append(("  portal CPU per turn: web / worker", f"{ms(c['web'] / 1000)} / "
                     f"{ms(c['worker'] / 1000)}", "", ""))  # fmt: skip
    for lv in report["concurrency"]:
        n, h = lv["turns"], f"{lv['turns']} streams"
        p99 = lv["added_ttft_p99_ms"]
        cpu, rss, c = lv["cpu_percent"], lv["peak_rss_mb"], lv["chunk_latency_ms"]
        nan = math.nan
        rows += [
            (f"{h}: completed (peak {lv['peak_streaming']} at once)",
             f"{lv['completed']}/{n} lost {lv['lost']} dup {lv['duplicated']}",
             "100%", _yes(lv["completed"] == n)),
            (f"{h}: added TTFT p50 / p99", f"{lv['added_ttft_ms']['p50']:.0f} / {p99:.0f} ms",
             "<= 250 ms" if n >= 1000 else "", _yes(p99 <= 250) if n >= 1000 else ""),
            (f"{h}: send / queued->task / ->1st token p50",
             " / ".join(f"{1000 * v:.0f}" for v in (
                 lv["send_response"]["p50"], lv["worker_breakdown"]["dispatch"]["p50"],
                 lv["worker_breakdown"]["upstream"]["p50"]
             )) + " ms", "", ""),
            (f"{h}: tokens/s delivered / sent",
             f"{lv['tokens_per_s_delivered']:.0f} / {lv['tokens_per_s_sent']:.0f}", "", ""),
            (f"{h}: chunk double->client p50/p99", f"{c['p50']:.1f} / {c['p99']:.1f} ms", "", ""),
            (f"{h}: CPU web / worker / redis",
             f"{cpu['web']:.0f}% / {cpu['worker']:.0f}% / {cpu.get('redis', nan):.0f}%", "", ""),
            (f"{h}: CPU double / clients / postgres",
             f"{cpu['double']:.0f}% / {lv['client_cpu_percent']:.0f}% / "
             f"{cpu.get('postgres', nan):.0f}%", "", ""),
            (f"{h}: peak memory web / worker", f"{rss['web']:.0f} / {rss['worker']:.0f} MB",
             "", ""),
            (f"{h}: memory per in-flight turn", f"{lv['memory_per_turn_kb']:.0f} KB", "", ""),
            (f"{h}: portal CPU per token (redis)",
             f"{lv['portal_cpu_us_per_token']:.0f} us ({lv['redis_cpu_us_per_token']:.0f} us)",
             "", ""),
        ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':<{vwidth}}  {'goal':<9}  met"]
    lines.append(f"{'-' * width}  {'-' * vwidth}  {'-' * 9}  ---")
    lines += [f"{r[0]:<{width}}  {r[1]:<{vwidth}}  {r[2]:<9}  {r[3]}".rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 pairs, 100 streams")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--levels", default=None, help="comma-separated stream counts")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--web-workers", type=int, default=StackConfig.web_workers)
    parser.add_argument("--pool", default=StackConfig.worker_pool)
    parser.add_argument("--concurrency", type=int, default=StackConfig.worker_concurrency)
    parser.add_argument(
        "--worker-processes", type=int, default=StackConfig.worker_processes,
        help="Celery worker processes, each with --concurrency threads",
    )  # fmt: skip
    parser.add_argument("--ramp", type=float, default=None, help="seconds to start all turns")
    args = parser.parse_args(argv)
    pairs = args.pairs or (200 if args.quick else 500)
    levels = [int(x) for x in args.levels.split(",")] if args.levels else (
        [100] if args.quick else [100, 500, 1000])  # fmt: skip

    started = time.monotonic()
    config = StackConfig(
        web_workers=args.web_workers, worker_pool=args.pool, worker_concurrency=args.concurrency,
        worker_processes=args.worker_processes,
    )  # fmt: skip
    stack = Stack(config)
    report: dict[str, Any] = {}
    failed = True
    try:
        stack.start()
        stack.start_double("fast", tokens=20)
        stack.start_double("paced", token_rate=TOKEN_RATE, tokens=TOKENS)
        stack.start_portal()
        users = stack.users(max(levels))
        print(f"Stack up in {time.monotonic() - started:.1f} s: {stack.database}, "
              f"Redis {stack.env['REDIS_URL']}, web x{config.web_workers}, "
              f"worker {config.worker_processes} x {config.worker_pool} "
              f"x{config.worker_concurrency}", flush=True)  # fmt: skip
        warm_up(stack, users)
        report = {"machine": machine(), "config": {
            "database": stack.database, "web_workers": config.web_workers,
            "worker_pool": config.worker_pool, "worker_concurrency": config.worker_concurrency,
            "worker_processes": config.worker_processes,
            "quick": args.quick, "token_rate": TOKEN_RATE, "tokens": TOKENS}}  # fmt: skip
        report["ttft"] = phase_ttft(stack, users[0], pairs)
        print(f"TTFT phase done ({time.monotonic() - started:.0f} s)", flush=True)
        report["concurrency"] = []
        for n in levels:
            # Starts spread over up to 8 s: every turn is still streaming (10 s each) at 8 s.
            ramp = args.ramp if args.ramp is not None else min(8.0, n / 100)
            level = phase_concurrency(stack, users, n, clients=args.clients, ramp=ramp)
            report["concurrency"].append(level)
            print(f"{n} streams done ({time.monotonic() - started:.0f} s)", flush=True)
        failed = any(level.get("errors") for level in report["concurrency"])
    finally:
        # A lost, failed or duplicated turn is diagnosed from the worker's and web's logs.
        stack.stop(keep_logs=failed)
    report["added_ttft_ms"] = {k: v * 1000 for k, v in report["ttft"]["added"].items()}
    report["levels"] = {
        str(level["turns"]): {
            k: level[k]
            for k in (
                "completed",
                "lost",
                "duplicated",
                "added_ttft_p99_ms",
                "tokens_per_s_sent",
                "tokens_per_s_delivered",
            )  # fmt: skip
        }
        for level in report["concurrency"]
    }
    report["elapsed_s"] = time.monotonic() - started
    RESULTS_JSON.write_text(json.dumps(report, indent=2, default=str))
    m = report["machine"]
    print()
    print(
        f"fastgpt-portal bench, {m['date']}: {m['cpus']} cores ({m['cpu_model']}), "
        f"{m['memory_gb']} GB, Python {m['python']}, Redis {m['redis']}, {stack.database}"
    )
    print(table(report))
    print(f"\nWrote {RESULTS_JSON.relative_to(ROOT)} in {report['elapsed_s']:.0f} s. "
          "Load without loss: python -m bench.load")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
