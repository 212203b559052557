"""portal_app add|list|check: manage the FastGPT apps the portal talks to."""

from __future__ import annotations

import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from fastgpt_portal.upstream.client import client_for
from fastgpt_portal.upstream.models import App
from fastgpt_portal.upstream.services import app_record_check, app_upsert


class Command(BaseCommand):
    help = "Add, list and check FastGPT apps. `add` reads the app key from standard input."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Create or update an app; the key comes from stdin.")
        add.add_argument("--name", required=True)
        add.add_argument("--base-url", required=True, help="FastGPT's root, e.g. https://host")
        add.add_argument("--slug", default="")
        add.add_argument("--app-id", default="", help="Only for a global (team) key.")
        add.add_argument("--demo", action="store_true", help="Label it as the demo double.")
        add.add_argument("--no-check", action="store_true", help="Do not call FastGPT.")
        sub.add_parser("list", help="List apps (keys masked).")
        check = sub.add_parser("check", help="Call FastGPT and say whether each key works.")
        check.add_argument("slug", nargs="?", help="Only this app.")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"handle_{action}")(**options)

    def handle_add(self, *, name, base_url, slug, app_id, demo, no_check, **_) -> None:
        if sys.stdin.isatty():
            self.stderr.write("Paste the app key and press Enter: ", ending="")
        key = sys.stdin.readline().strip()
        if not key:
            raise CommandError(
                'No key on standard input (echo "$KEY" | manage.py portal_app add …).'
            )
        try:
            app, created = app_upsert(
                name=name,
                base_url=base_url,
                api_key=key,
                fastgpt_app_id=app_id,
                slug=slug,
                is_demo=demo,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        verb = "Created" if created else "Updated"
        self.stdout.write(
            f"{verb} app {app.slug!r} ({app.name}) at {app.base_url}, key {app.masked_key}."
        )
        if not no_check:
            self._check(app)

    def handle_list(self, **_) -> None:
        apps = App.objects.all()
        if not apps:
            self.stdout.write(
                "No apps yet. Add one with: manage.py portal_app add --name … --base-url …"
            )
        for app in apps:
            state = "enabled" if app.enabled else "disabled"
            health = "healthy" if app.healthy else f"UNHEALTHY: {app.health_message}"
            demo = " [demo double]" if app.is_demo else ""
            appid = f" appId={app.fastgpt_app_id}" if app.fastgpt_app_id else ""
            self.stdout.write(
                f"{app.slug}\t{app.name}{demo}\t{app.base_url}\tkey {app.masked_key}{appid}"
                f"\t{state}, {health}"
            )

    def handle_check(self, *, slug=None, **_) -> None:
        apps = App.objects.filter(slug=slug) if slug else App.objects.all()
        if slug and not apps:
            raise CommandError(f"No app {slug!r}.")
        failed = [app for app in apps if not self._check(app)]
        if failed:
            raise CommandError(f"{len(failed)} app(s) failed the check.")

    def _check(self, app: App) -> bool:
        result = client_for(app).check()
        app_record_check(app=app, ok=result.ok, message=result.message)
        mark = "OK" if result.ok else "FAILED"
        self.stdout.write(f"{app.slug}: {mark}: {result.message}")
        return result.ok
