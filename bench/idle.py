"""Idle answer streams: what one web process pays to hold many, and what they cost the others.

    python -m bench.idle [--idle 1600] [--active 200]

Starts bench.stack's real stack with two doubles: the paced one of `make bench` (20 tokens/s,
200 tokens) and a slow one whose first token comes after 150 s, as a long FastGPT workflow's
would (heartbeats only until then). Then:
  1. --active turns on the paced double, as a baseline;
  2. --idle turns on the slow double, started over 30 s and left waiting, each with its event
     stream open: the web process's connections and memory per waiting stream, and every
     process's CPU over a minute of nothing but waiting;
  3. the same --active turns again, beside the waiting ones.
The worker keeps a thread and an HTTP connection per waiting turn: --idle plus --active must
stay under its 2,000 connections to FastGPT (upstream.client.new_http).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

import psutil

from bench.run import _web, phase_concurrency, stack_groups
from bench.stack import PY, ROOT, Monitor, Stack, StackConfig, token

SLOW_FIRST_TOKEN_S = 150.0


def _active(label: str, level: dict[str, Any]) -> str:
    cpu = level["cpu_percent"]
    return (
        f"{label}: completed {level['completed']}/{level['turns']}, added first token p50 / p99 "
        f"{level['added_ttft_ms']['p50']:.0f} / {level['added_ttft_p99_ms']:.0f} ms, chunk p50 "
        f"{level['chunk_latency_ms']['p50']:.0f} ms, CPU web / worker {cpu['web']:.0f} / "
        f"{cpu['worker']:.0f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1600, help="waiting answer streams")
    parser.add_argument("--active", type=int, default=200, help="streaming answers beside them")
    args = parser.parse_args(argv)

    stack = Stack(StackConfig(worker_concurrency=max(1200, args.idle + args.active + 100)))
    waiting: list[subprocess.Popen] = []
    try:
        stack.start()
        stack.start_double("paced", token_rate=20.0, tokens=200)
        stack.start_double("slow", tokens=5, first_token_delay=SLOW_FIRST_TOKEN_S)
        stack.start_portal()
        users = stack.users(args.idle + args.active)
        active_users = users[: args.active]
        print(_active("baseline", phase_concurrency(stack, active_users, args.active,
                                                    clients=2, ramp=2.0)), flush=True)  # fmt: skip

        web = psutil.Process(stack.web.pid if stack.web else 0)
        rss_before = web.memory_info().rss
        tag = token()
        jobs = [
            {"kind": "portal", "at": i * 30.0 / args.idle, "user": users[args.active + i],
             "text": f"waiting {tag} {i}", "app": "bench-slow"}
            for i in range(args.idle)
        ]  # fmt: skip
        start_at = time.monotonic() + 1.0
        for k in range(2):
            proc = subprocess.Popen(
                [PY, "-m", "bench.client"], cwd=ROOT, stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"web": _web(stack), "jobs": jobs[k::2],
                                         "start_at": start_at}).encode())  # fmt: skip
            proc.stdin.close()
            waiting.append(proc)
        time.sleep(start_at + 33.0 - time.monotonic())
        connections = sum(c.status == "ESTABLISHED" for c in web.net_connections())
        grown = web.memory_info().rss - rss_before
        per_stream_kb = grown / 1024 / args.idle
        print(
            f"{args.idle} waiting: the web process holds {connections} connections, "
            f"{per_stream_kb:.0f} KB more memory per waiting stream",
            flush=True,
        )
        # A minute: every waiting stream asks the database once a minute whether its turn ended.
        with Monitor(stack_groups(stack)) as monitor:
            time.sleep(60)
        shares = ", ".join(
            f"{group} {100 * cpu / monitor.wall:.1f}%" for group, cpu in monitor.cpu.items()
        )
        print(f"60 s of only waiting, CPU: {shares}", flush=True)
        beside = phase_concurrency(stack, active_users, args.active, clients=2, ramp=2.0)
        print(_active(f"beside {args.idle} waiting", beside), flush=True)
        return 0 if beside["completed"] == args.active else 1
    finally:
        for proc in waiting:
            proc.kill()
        stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
