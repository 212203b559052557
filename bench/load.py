"""Load without loss: many logged-in users chatting at once through the real stack.

    python -m bench.load [--users 100] [--turns 10] [--think 2.0] [--token-rate 40]

Each simulated user is a distinct account with its own session. It starts a conversation and
sends --turns questions in it, one after the other, each read to its end over the event stream
as a browser would (POST /chat/send, then GET the events), pausing --think seconds between them.
The stack is bench.stack's: uvicorn, a Celery worker, Redis, the database, the FastGPT double.

Afterwards every turn is checked against what the double actually sent for it (its saved chat
item) and against what the database stored. Prints turns per second, failures (a turn that ended
failed, or an error in the browser's path) and lost turns (submitted but never finished, or an
answer that differs from what the double sent). Exit status 1 if either is not 0.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import analysis
from bench.run import run_clients
from bench.stack import Stack, StackConfig, token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--turns", type=int, default=10, help="turns per user, one conversation")
    parser.add_argument("--think", type=float, default=2.0, help="seconds between a user's turns")
    parser.add_argument("--token-rate", type=float, default=40.0, help="the double's pace")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--web-workers", type=int, default=StackConfig.web_workers)
    args = parser.parse_args(argv)

    started = time.monotonic()
    stack = Stack(StackConfig(web_workers=args.web_workers))
    try:
        stack.start()
        double = stack.start_double("load", token_rate=args.token_rate)
        stack.start_portal()
        users = stack.users(args.users, prefix="load")
        tag = token()
        jobs = [
            {
                "kind": "session",
                # Users arrive over the first two seconds rather than all in one instant.
                "at": 2.0 * i / max(1, args.users),
                "user": user,
                "app": "bench-load",
                "think": args.think,
                "texts": [
                    f"Question {n + 1} from {user['username']} ({tag}): what is new?"
                    for n in range(args.turns)
                ],
            }
            for i, user in enumerate(users)
        ]
        start_at = time.monotonic() + 1.0
        plans = [
            {
                "web": ["127.0.0.1", stack.web_port],
                "jobs": jobs[k :: args.clients],
                "start_at": start_at,
            }
            for k in range(args.clients)
        ]
        t0 = time.monotonic()
        results, _ = run_clients(plans)
        wall = time.monotonic() - t0 - 1.0
        from fastgpt_portal.chat.models import Turn

        pks = [r["turn"] for r in results if r.get("turn")]
        rows = {
            row["pk"]: {**row, "chat_id": row["conversation__chat_id"]}
            for row in Turn.objects.filter(pk__in=pks).values(
                "pk", "status", "answer", "data_id", "conversation__chat_id"
            )
        }
        expected = analysis.expected_answers(list(rows.values()), double.chats())
    finally:
        stack.stop()

    # Failures: the send was refused, or the turn ended failed. Everything else must have
    # arrived whole and once; a turn that did not is lost (or duplicated).
    failures = [
        r for r in results
        if not r.get("turn") or rows.get(r["turn"], {}).get("status") == "failed"
    ]  # fmt: skip
    check = analysis.check_turns([r for r in results if r not in failures], expected, rows)
    wanted = args.users * args.turns
    failed = len(failures) + check.failed
    # A user whose turn broke stops there: the turns it never sent count as lost.
    lost = check.lost + check.duplicated + (wanted - len(results))
    ttft = [r["t_first"] - r["t0"] for r in results if r.get("t_first")]
    print(
        f"Load without loss ({stack.database}): {args.users} users x {args.turns} turns, "
        f"think {args.think:g} s, double at {args.token_rate:g} tokens/s"
    )
    print(f"  turns completed  {check.completed}/{wanted}")
    print(f"  turns per second {check.completed / wall:.1f}  (over {wall:.1f} s)")
    print(f"  first token      p50 {analysis.fmt_ms(analysis.percentile(ttft, 50))}, "
          f"p99 {analysis.fmt_ms(analysis.percentile(ttft, 99))}")  # fmt: skip
    print(f"  failures         {failed}")
    print(f"  lost             {lost}")
    for error in check.errors[:10]:
        print(f"    {error}")
    print(f"  ({time.monotonic() - started:.0f} s in all)")
    return 0 if failed == 0 and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
