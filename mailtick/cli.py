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
from dataclasses import dataclass
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


Option = tuple[tuple[str, ...], dict[str, Any]]  # add_argument(*names, **settings)
JSON: Option = (("--json",), {"action": "store_true", "help": "machine-readable output"})


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler, its help line and its options (besides -c/--config)."""

    name: str
    handler: Callable[[argparse.Namespace], int]
    help: str
    options: tuple[Option, ...] = ()
    config: bool = True  # takes -c/--config, default DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailtick", description="Email ticketing daemon.")
    parser.add_argument("--version", action="version", version=f"mailtick {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.config:
            p.add_argument(
                "-c",
                "--config",
                default=DEFAULT_CONFIG,
                type=Path,
                help=f"config file (default {DEFAULT_CONFIG})",
            )
        for names, settings in command.options:
            p.add_argument(*names, **settings)
        p.set_defaults(handler=command.handler)
    sub.choices["demo"].set_defaults(config="(demo)")
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
    from mailtick.views import FILTERS, list_tickets

    config = _load(args)
    _open_db(config)
    rows = list_tickets(**{name: getattr(args, name) for name in FILTERS})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    prefix = config.tickets.prefix
    for t in rows:
        number = f"{prefix}#{t['number']}"
        print(
            f"{number:<12} {t['status']:<12} {t['priority']:<7} {t['queue']:<12} "
            f"{t['owner'] or '-':<10} {t['age']:>5} {t['messages']:>3} msg  "
            f"{t['requester']:<30} {t['subject']}"
        )
    print(f"{len(rows)} ticket(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from mailtick.views import render_ticket, show_ticket

    config = _load(args)
    number = args.number.rpartition("#")[2].strip("[] ")
    _open_db(config)
    detail = show_ticket(number)
    if detail is None:
        print(f"mailtick: no ticket {args.number}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(detail, indent=2, ensure_ascii=False))
    else:
        print(render_ticket(detail, config.tickets.prefix))
    return 0


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
        rows = quarantine.list_rows()
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


# The subcommands, in the order `mailtick --help` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("run", cmd_run, "run the daemon in the foreground (logs to stderr)", (
        (("--once",), {"action": "store_true",
                       "help": "catch up with the mailbox, send what is due, exit"}),
    )),
    Command("check-config", cmd_check_config, "validate the configuration", (
        (("--connect",), {"action": "store_true", "help": "also log in to IMAP and SMTP"}),
    )),
    Command("tickets", cmd_tickets, "list tickets", (
        (("--status",), {"help": "only tickets with this status"}),
        (("--queue",), {"help": "only tickets of this queue"}),
        (("--owner",), {"help": "only tickets this agent owns"}),
        (("--priority",), {"help": "only tickets of this priority"}),
        JSON,
    )),
    Command("show", cmd_show, "show one ticket's thread", (
        (("number",), {"help": "ticket number, with or without the prefix (MT#10009 or 10009)"}),
        JSON,
    )),
    Command("init", cmd_init, "create the reply-token secret if missing, then check"),
    Command("new", cmd_new, "open a ticket on a customer's behalf (a phone call)", (
        (("--customer",), {"required": True, "help": "the customer's mail address"}),
        (("--subject",), {"required": True, "help": "the ticket's subject"}),
        (("--body-file",), {"required": True, "type": Path, "help": "what the customer said"}),
    )),
    Command("quarantine", cmd_quarantine, "list, show, requeue or drop quarantined mail", (
        (("action",), {"choices": ("list", "show", "requeue", "drop")}),
        (("id",), {"nargs": "?", "type": int, "help": "the quarantine entry (see list)"}),
        JSON,
        (("--raw",), {"action": "store_true", "help": "show: the mail's bytes as stored"}),
    )),
    Command("drift", cmd_drift,
            "judge one reply for topic drift (JSON on stdin -> verdict on stdout)", (
        (("--json",), {"action": "store_true", "required": True, "help": "JSON in and out"}),
        (("--threshold",), {"type": float, "default": None,
                            "help": "default: [drift] threshold"}),
        (("-c", "--config"), {"type": Path, "default": None,
                              "help": "take the threshold from here"}),
    ), config=False),
    Command("parse", cmd_parse, "show how mailtick sees one mail (writes nothing)", (
        (("file",), {"type": Path, "help": "the mail, as an .eml file"}),
        JSON,
        (("--thread",), {"action": "store_true", "help": "also say where it would thread"}),
    )),
    Command("demo", cmd_demo, "play a scripted conversation on embedded servers", (
        (("--keep-running",), {"action": "store_true",
                               "help": "leave servers and daemon up"}),
    ), config=False),
)  # fmt: skip
