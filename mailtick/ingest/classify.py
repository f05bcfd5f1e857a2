"""Stage `classify`: is this mail automatic (never answered) or too big? Touches nothing.

RFC 3834: automatic mail (auto-replies, bounces, lists, bulk) is recorded on its
ticket but never gets an automatic answer, so two robots cannot ping-pong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailtick.mail import ParsedMail
from mailtick.outcomes import Rejected

LOOP_HEADER = "X-Mailtick-Loop"


@dataclass(frozen=True)
class Disposition:
    automatic: bool
    reason: str  # the rule that decided, for the log and the message record


def _header_is(name: str, *values: str) -> Callable[[ParsedMail], bool]:
    def check(mail: ParsedMail) -> bool:
        return mail.header(name).strip().lower().split(";")[0].strip() in values

    return check


def _has_header(name: str) -> Callable[[ParsedMail], bool]:
    return lambda mail: bool(mail.header(name).strip())


def _auto_submitted(mail: ParsedMail) -> bool:
    value = mail.header("Auto-Submitted").strip().lower()
    return bool(value) and not value.startswith("no")


def _robot_sender(mail: ParsedMail) -> bool:
    local = mail.from_addr.partition("@")[0]
    return local in (
        "mailer-daemon",
        "mailerdaemon",
        "mail-daemon",
        "postmaster",
        "noreply",
        "no-reply",
        "donotreply",
        "do-not-reply",
    )


def null_return_path(mail: ParsedMail) -> bool:
    """The topmost Return-Path is the null sender "<>" (also written "< >" or "<> (comment)")
    or the MAILER-DAEMON some MTAs write for it."""
    value = "".join(mail.header("Return-Path").split()).lower()
    return value.startswith("<>") or value in ("<mailer-daemon>", "mailer-daemon")


def _delivery_report(mail: ParsedMail) -> bool:
    """RFC 6522 multipart/report: delivery status (RFC 3464), read receipts, feedback."""
    return mail.header("Content-Type").lower().lstrip().startswith("multipart/report")


# (name, predicate): the first that matches marks the mail automatic.
AUTOMATIC_RULES: tuple[tuple[str, Callable[[ParsedMail], bool]], ...] = (
    ("our-loop-header", _has_header(LOOP_HEADER)),
    ("auto-submitted", _auto_submitted),
    ("precedence", _header_is("Precedence", "bulk", "junk", "list")),
    ("list-id", _has_header("List-Id")),
    ("list-unsubscribe", _has_header("List-Unsubscribe")),
    ("x-auto-response-suppress", _has_header("X-Auto-Response-Suppress")),
    ("null-return-path", null_return_path),
    ("robot-sender", _robot_sender),
    ("delivery-report", _delivery_report),
    ("x-failed-recipients", _has_header("X-Failed-Recipients")),  # Exim's bounces
    ("no-sender", lambda mail: "@" not in mail.from_addr),
)


def classify(mail: ParsedMail, max_bytes: int) -> Disposition:
    if len(mail.raw) > max_bytes:
        raise Rejected(f"mail of {len(mail.raw)} bytes exceeds tickets.max_mail_bytes={max_bytes}")
    for name, rule in AUTOMATIC_RULES:
        if rule(mail):
            return Disposition(automatic=True, reason=name)
    return Disposition(automatic=False, reason="customer")
