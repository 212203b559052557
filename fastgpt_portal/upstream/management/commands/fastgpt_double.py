"""Run the FastGPT double in the foreground: the demo upstream of `make run`, and for benchmarks."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fastgpt_portal.upstream.double import DOUBLE_APP_ID, DOUBLE_APP_KEY, FastGPTDouble


class Command(BaseCommand):
    help = "Serve the FastGPT double (a stand-in for FastGPT) until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--key", default=DOUBLE_APP_KEY, help="the app key it accepts (a demo value)"
        )
        parser.add_argument("--app-id", default=DOUBLE_APP_ID, help="the app that key belongs to")
        parser.add_argument(
            "--token-rate", type=float, default=0.0, help="tokens per second (0: no pacing)"
        )
        parser.add_argument(
            "--tokens", type=int, default=None, help="answer length (default: a short echo)"
        )
        parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds")
        parser.add_argument(
            "--record-writes", action="store_true", help="record when each chunk was written"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["key"].count("-") != 1:
            # FastGPT reads a key with two dashes as the legacy key-appId form (§1.1).
            raise CommandError("The key must look like fastgpt-<letters and digits>.")
        double = FastGPTDouble(
            host=options["host"],
            port=options["port"],
            keys={options["key"]: {"app_id": options["app_id"], "name": "demo key"}},
            token_rate=options["token_rate"],
            tokens=options["tokens"],
            first_token_delay=options["first_token_delay"],
            record_writes=options["record_writes"],
        )
        double.start()
        # The demo key is not a secret: it only opens this double.
        self.stdout.write(f"FastGPT double listening on {double.url}")
        self.stdout.write(f"It accepts the app key {options['key']} (app {options['app_id']}).")
        self.stdout.write("Fault control: POST /__double__/faults, GET /__double__/received.")
        self.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            double.stop()
