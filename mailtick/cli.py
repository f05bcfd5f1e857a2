"""Command line: `mailtick run|check-config|tickets|show|demo`. The only place that exits.

Exit codes: 0 fine, 1 the work failed (a server unreachable, a ticket not found),
2 the configuration is unusable (every bad key is named on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailtick import __version__
from mailtick.config import Config, ConfigError, describe, load_config
from mailtick.outcomes import Transient

DEFAULT_CONFIG = os.environ.get("MAILTICK_CONFIG", "/etc/mailtick/config.toml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"mailtick: configuration {args.config} is not usable:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailtick", description="Email ticketing daemon.")
    parser.add_argument("--version", action="version", version=f"mailtick {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "-c",
            "--config",
            default=DEFAULT_CONFIG,
            type=Path,
            help=f"config file (default {DEFAULT_CONFIG})",
        )
        p.set_defaults(handler=handler)
        return p

    run = command("run", cmd_run, "run the daemon in the foreground (logs to stderr)")
    run.add_argument(
        "--once", action="store_true", help="catch up with the mailbox, send what is due, exit"
    )
    check = command("check-config", cmd_check_config, "validate the configuration")
    check.add_argument("--connect", action="store_true", help="also log in to IMAP and SMTP")
    tickets = command("tickets", cmd_tickets, "list tickets")
    tickets.add_argument("--status", help="only tickets with this status")
    tickets.add_argument("--json", action="store_true", help="machine-readable output")
    show = command("show", cmd_show, "show one ticket's thread")
    show.add_argument(
        "number", help="ticket number, with or without the prefix (MT#10009 or 10009)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    command("init", cmd_init, "create the reply-token secret if missing, then check")
    new = command("new", cmd_new, "open a ticket on a customer's behalf (a phone call)")
    new.add_argument("--customer", required=True, help="the customer's mail address")
    new.add_argument("--subject", required=True, help="the ticket's subject")
    new.add_argument("--body-file", required=True, type=Path, help="what the customer said")
    quarantine = command(
        "quarantine", cmd_quarantine, "list, show, requeue or drop quarantined mail"
    )
    quarantine.add_argument("action", choices=("list", "show", "requeue", "drop"))
    quarantine.add_argument("id", nargs="?", type=int, help="the quarantine entry (see list)")
    quarantine.add_argument("--json", action="store_true", help="machine-readable output")
    quarantine.add_argument("--raw", action="store_true", help="show: the mail's bytes as stored")
    drift = sub.add_parser(
        "drift", help="judge one reply for topic drift (JSON on stdin -> verdict on stdout)"
    )
    drift.add_argument("--json", action="store_true", required=True, help="JSON in and out")
    drift.add_argument("--threshold", type=float, default=None, help="default: [drift] threshold")
    drift.add_argument(
        "-c", "--config", type=Path, default=None, help="take the threshold from here"
    )
    drift.set_defaults(handler=cmd_drift)
    parse = command("parse", cmd_parse, "show how mailtick sees one mail (writes nothing)")
    parse.add_argument("file", type=Path, help="the mail, as an .eml file")
    parse.add_argument("--json", action="store_true", help="machine-readable output")
    parse.add_argument("--thread", action="store_true", help="also say where it would thread")
    demo = sub.add_parser("demo", help="play a scripted conversation on embedded servers")
    demo.add_argument("--keep-running", action="store_true", help="leave servers and daemon up")
    demo.set_defaults(handler=cmd_demo, config="(demo)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    logging.basicConfig(
        level=getattr(logging, config.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from mailtick.app import Daemon, serve
    from mailtick.leader import AlreadyRunning

    config = _load(args)

    async def go() -> int:
        try:
            if not args.once:
                await serve(config)
                return 0
            result = await Daemon(config).run_once()
        except Transient as exc:
            logging.getLogger("mailtick").error("run --once failed: %s", exc.reason)
            return 1
        except AlreadyRunning as exc:  # a second instance on one SQLite database
            print(f"mailtick: {exc}", file=sys.stderr)
            return 1
        ingest, sent = result.ingest, result.send
        print(
            f"fetched {ingest.fetched}, recorded or ignored {ingest.acked}, "
            f"quarantined {ingest.quarantined}, to retry {ingest.retry}; "
            f"sent {sent.sent}, deferred {sent.deferred}, failed {sent.failed}"
        )
        return 1 if ingest.retry else 0

    return asyncio.run(go())


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    print(f"{args.config}: OK")
    print(textwrap.indent(describe(config), "  "))
    if not args.connect:
        return 0
    from mailtick.probe import probe

    ok = True
    for name, good, detail in asyncio.run(probe(config)):
        ok = ok and good
        print(f"  {name}: {'OK' if good else 'FAILED'} - {detail}")
    return 0 if ok else 1


def _open_db(config: Config) -> Any:
    from mailtick.db import open_database

    return open_database(config.database.url)


def cmd_tickets(args: argparse.Namespace) -> int:
    from mailtick.views import list_tickets

    config = _load(args)
    rows = list_tickets(_open_db(config), args.status)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    prefix = config.tickets.prefix
    for t in rows:
        number = f"{prefix}#{t['number']}"
        print(
            f"{number:<12} {t['status']:<12} {t['age']:>5} {t['messages']:>3} msg  "
            f"{t['requester']:<30} {t['subject']}"
        )
    print(f"{len(rows)} ticket(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mailtick.views import show_ticket

    config = _load(args)
    number = args.number.rpartition("#")[2].strip("[] ")
    detail = show_ticket(_open_db(config), number)
    if detail is None:
        print(f"mailtick: no ticket {args.number}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(detail, indent=2, ensure_ascii=False))
    else:
        print(render_ticket(detail, config.tickets.prefix))
    return 0


def render_ticket(t: dict[str, Any], prefix: str) -> str:
    lines = [
        f"{prefix}#{t['number']}  {t['subject']}",
        f"  status {t['status']}, priority {t['priority']}, owner {t['owner'] or '-'}, "
        f"customer {t['requester_name']} <{t['requester']}>, "
        f"opened {t['created_at']} ({t['age']} ago), {t['messages']} message(s)",
    ]
    if t["linked_to"]:
        lines.append(f"  follows {prefix}#{t['linked_to']}")
    if t["links"]:
        lines.append("  continued in " + ", ".join(f"{prefix}#{n}" for n in t["links"]))
    for b in t.get("bouncing", []):
        lines.append(
            f"  !! mail to {b['address']} bounces: {b['bounces']} bounce(s), "
            f"last {b['last_bounce_at']}: {b['last_bounce']}"
        )
    for e in t["events"]:
        lines.append(f"  {e['at']}  [{e['kind']}] {e['detail']}")
    for m in t["thread"]:
        arrow = "<-" if m["direction"] == "in" else "->"
        if m["direction"] == "in":
            rule = m["thread_rule"]
            how = f"{m['kind']}, " + (
                "opened the ticket" if rule == "new" else f"threaded by {rule}"
            )
        else:
            how = "acknowledgement" if m["kind"] == "ack" else m["kind"]
        name = f"{m['author_name']} " if m["author_name"] else ""
        lines.append("")
        lines.append(f"  {arrow} {m['at']}  {name}<{m['author']}>  ({how})")
        lines.append(f"     Subject: {m['subject']}")
        if m.get("flag"):
            lines.append(f"     !! {m['flag']}")
        if m.get("drift"):
            d = m["drift"]
            verdict = "new topic" if d["new_topic"] else "same topic"
            lines.append(f"     topic: {verdict}, score {d['score']:.2f}, action {d['action']}")
            lines.extend(f"       - {reason}" for reason in d["reasons"])
        if "delivery" in m:
            d = m["delivery"]
            to = ", ".join(d["to"])
            outcome = (
                str(d["last_error"])  # "held: ticket-burst, ...": never tried
                if d["status"] == "held"
                else f"{d['status']} after {d['attempts']} attempt(s) {d['last_error']}"
            )
            lines.append(f"     to {to}: {outcome}".rstrip())
        body = [ln for ln in m["text"].strip().splitlines()[:8]]
        lines.extend(f"     | {ln}" for ln in body)
    return "\n".join(lines)


def cmd_init(args: argparse.Namespace) -> int:
    from mailtick.config import secret_path
    from mailtick.security import generate_secret

    path = secret_path(args.config)
    if path.exists():
        print(f"{path}: exists, left as it is")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_secret().hex() + "\n")
        print(f"{path}: created (mode 0600); keep it secret, back it up with the database")
    return cmd_check_config(argparse.Namespace(config=args.config, connect=False))


def cmd_new(args: argparse.Namespace) -> int:
    from mailtick.manual import open_for_customer

    config = _load(args)
    try:
        body = args.body_file.read_text()
        recorded = asyncio.run(open_for_customer(config, args.customer, args.subject, body))
    except (OSError, ValueError) as exc:
        print(f"mailtick new: {exc}", file=sys.stderr)
        return 1
    print(f"{config.tickets.prefix}#{recorded.ticket_number}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from mailtick import quarantine

    config = _load(args)
    db = _open_db(config)
    if args.action == "list":
        rows = quarantine.list_rows(db)
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        for r in [] if args.json else rows:
            line = f"{r['id']:>5}  {r['at']}  {r['from'][:30]:<30}  {r['subject'][:40]:<40}"
            print(f"{line}  {r['reason']}")
        return 0
    if args.id is None:
        print(
            f"mailtick quarantine {args.action}: which entry? (see: mailtick quarantine list)",
            file=sys.stderr,
        )
        return 2
    row = quarantine.find(args.id)
    if row is None:
        print(f"mailtick quarantine: no entry {args.id}", file=sys.stderr)
        return 1
    if args.action == "show":
        if args.raw:
            sys.stdout.buffer.write(quarantine.stored_bytes(row))
        else:
            print(json.dumps(quarantine.describe(row), indent=2, ensure_ascii=False))
        return 0
    if args.action == "drop":
        quarantine.drop(db, args.id)
        folder = config.imap.quarantine_mailbox
        print(f"dropped entry {args.id}; the copy in {folder} stays on the server")
        return 0
    try:
        how = asyncio.run(quarantine.requeue(db, config.imap, args.id))
    except Transient as exc:
        print(f"mailtick quarantine requeue: {exc.reason}", file=sys.stderr)
        return 1
    print(f"requeued entry {args.id}: {how}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Needs no config: the threshold comes from --threshold, -c or the default."""
    from mailtick.threading.drift import DEFAULT_THRESHOLD, drift_command

    threshold = args.threshold
    if threshold is None:
        threshold = _load(args).drift.threshold if args.config else DEFAULT_THRESHOLD
    return drift_command(sys.stdin, sys.stdout, threshold)


def cmd_parse(args: argparse.Namespace) -> int:
    from mailtick.inspect import parse_command

    config = _load(args)
    t = config.tickets
    return parse_command(
        args.file,
        args.json,
        config.database.url if args.thread else None,
        t.prefix,
        default_language=t.default_language,
        reopen_days=t.reopen_days,
        max_bytes=t.max_mail_bytes,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from mailtick.demo import run_demo  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        print(
            f"mailtick demo needs the demo extra (pip install 'mailtick[demo]'): {exc}",
            file=sys.stderr,
        )
        return 1
    return int(run_demo(keep_running=args.keep_running))
