"""Demo: what it explains (where things run, acting as the agent, a real mailbox). Prints only."""

from __future__ import annotations

import shlex
from pathlib import Path

from mailtick.demo.common import HOST, PREFIX, SUPPORT
from mailtick.demo.people import DANA, JOERG, reply_address
from mailtick.demo.printer import Printer
from mailtick.demo.servers import ImapServer, SmtpSink
from mailtick.demo.session import Demo
from mailtick.demo.workdir import PASSWORD_ENV


def announce(printer: Printer, imap: ImapServer, smtp: SmtpSink, root: Path) -> None:
    offered = [cap for cap in ("IDLE", "MOVE") if cap in imap.capabilities]
    offers = f"offers {' and '.join(offered)}" if offered else "offers neither IDLE nor MOVE"
    printer.block(
        f"""\
          IMAP    {HOST}:{imap.port}  pymap, in memory: {SUPPORT}, empty INBOX, {offers}
          SMTP    {HOST}:{smtp.port}  aiosmtpd; prints every mail it is given
          daemon  mailtick run -c {root / "config.toml"}  (a task in this process)
          files   {root}  (config, reply-secret, SQLite, mailtick.log; removed at the end)
          people  {JOERG.name} <{JOERG.addr}>, a customer, writes in German;
                  {DANA.display_name} <{DANA.addr}>, agent "{DANA.name}", works by mail"""
    )


def real_mailbox_help(printer: Printer) -> None:
    printer.heading("Point mailtick at your real mailbox")
    printer.block(
        f"""\
          1. Copy the documented example config.toml from the mailtick sources:
               cp config.toml /etc/mailtick/config.toml
             and set imap.host/username, smtp.host/from_address and database.url.
          2. One [[agents]] block per agent (name, addresses, display_name), then create
             the key that signs their reply addresses:
               mailtick init -c /etc/mailtick/config.toml
             Your mail server must deliver support+...@ to the support mailbox
             (plus-addressing; README: "What the mail server must allow").
          3. Give it the passwords through the environment:
               export {PASSWORD_ENV}='...' MAILTICK_SMTP_PASSWORD='...'
          4. Check it, including a real login to both servers:
               mailtick check-config --connect -c /etc/mailtick/config.toml
          5. Run it (or install it as a systemd service):
               mailtick run -c /etc/mailtick/config.toml"""
    )


def keep_running_help(printer: Printer, demo: Demo, root: Path) -> None:
    imap, smtp = demo.imap, demo.smtp
    config, env = root / "config.toml", f"{PASSWORD_ENV}='{imap.password}'"
    printer.heading("Still running. Send mail to it; Ctrl-C stops everything")
    printer.block(
        f"""\
          SMTP  {HOST}:{smtp.port}, no TLS, no AUTH. Mail to {SUPPORT} and its plus-addresses
                lands in the INBOX; mail to anyone else (mailtick's answers, the agent's
                notifications) is only recorded and shown here:
                  swaks --server {HOST}:{smtp.port} --from you@example.org --to {SUPPORT} \\
                        --header 'Subject: Hello' --body 'Does this open a ticket?'
          IMAP  {HOST}:{imap.port}, no TLS, user {SUPPORT}, password {imap.password}
                (INBOX, Processed, Quarantine; any mail client will do)
          CLI   {env} mailtick tickets -c {config}
                {env} mailtick show -c {config} {PREFIX}#<number>
          log   {root / "mailtick.log"}"""
    )
    agent_help(printer, demo)


def agent_help(printer: Printer, demo: Demo) -> None:
    """How to act as the agent: reply to a notification's Reply-To from the agent's address."""
    last = demo.last_mail_to(DANA.addr, f"[{PREFIX}#")
    to = reply_address(last) if last is not None else "support+r-<ticket>-<day>-<token>@..."
    subject = f"Re: {last.subject}" if last is not None else "Re: ..."
    printer.block(
        f"""\
          AGENT {DANA.name}: {DANA.display_name} <{DANA.addr}>. Her notifications are shown above.
                A mail from {DANA.addr} to a notification's Reply-To address acts as
                {DANA.display_name}: its text goes to the customer from {SUPPORT}, and
                commands at its top (#close, #status, #assign, #note, ...) change the ticket.
                Without a valid token, or from another address, it is a customer's mail.
                  swaks --server {HOST}:{demo.smtp.port} --from {DANA.addr} \\
                        --to {to} \\
                        --header {shlex.quote("Subject: " + subject)} --body '#close'"""
    )
