"""Demo: the timeline on the terminal (events, verdicts, mail summaries). Writes to its stream."""

from __future__ import annotations

import email
import email.policy
import os
import re
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TextIO

_STYLES = {"head": "1", "imap": "36", "smtp": "33", "ok": "32", "fail": "1;31", "dim": "2"}
_INDENT = " " * 16


def wants_color(out: TextIO) -> bool:
    """ANSI colours only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return out.isatty() and not os.environ.get("NO_COLOR")


@dataclass
class Printer:
    out: TextIO
    color: bool
    started: float = field(default_factory=time.monotonic)

    def paint(self, text: str, style: str) -> str:
        return f"\033[{_STYLES[style]}m{text}\033[0m" if self.color else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def offset(self) -> str:
        return f"{time.monotonic() - self.started:+7.2f}s"

    def heading(self, text: str) -> None:
        self.line()
        self.line(self.paint(f"== {text}", "head"))

    def block(self, text: str) -> None:
        self.line(textwrap.indent(textwrap.dedent(text), "  "))

    def event(self, label: str, head: str, details: Sequence[str]) -> None:
        tag = self.paint(f"{label.upper():<5}", label)
        self.line(f"{self.paint(self.offset(), 'dim')}  {tag}  {head}")
        for detail in details:
            self.line(f"{_INDENT}{detail}")

    def verdict(self, good: bool, text: str) -> None:
        mark = self.paint("ok  " if good else "FAIL", "ok" if good else "fail")
        self.line(f"{self.paint(self.offset(), 'dim')}  {mark}   {text}")


def mail_summary(message: EmailMessage, lines: int = 4) -> list[str]:
    """Reply-To (when set), Subject and the first non-blank body lines, for the timeline."""
    body = message.get_body(("plain",))
    text = body.get_content() if isinstance(body, EmailMessage) else ""
    shown = [ln.strip() for ln in str(text).splitlines() if ln.strip()][:lines]
    reply_to = [f"Reply-To: {short(str(message['Reply-To']))}"] if message["Reply-To"] else []
    return [
        *reply_to,
        f"Subject: {message['Subject']}",
        *(f"| {textwrap.shorten(ln, 90)}" for ln in shown),
    ]


def parse_mail(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def short(addr: str) -> str:
    """A reply-token address, shortened for the timeline: support+r-10019-20415-abcd…@…"""
    return re.sub(r"(\+[rn]-\d+-\d+-[a-z2-7]{4})[a-z2-7]+@", r"\1…@", addr)
