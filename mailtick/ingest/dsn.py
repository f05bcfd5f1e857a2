"""Stage `record`, first step: is this automatic mail a delivery report, and about what? Pure.

Reads RFC 3464 delivery status notifications (multipart/report with a
message/delivery-status part and the returned mail or its headers) and the common
plain-text bounces (qmail, older Exim, Exchange, "Undelivered Mail" from a
MAILER-DAEMON or with a null Return-Path). The result names the Message-IDs the
report may be about, the returned mail's first; which of them is ours is for the
database to say (record/report.py). Uses the stdlib email package on the raw bytes.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from mailtick.ingest.classify import null_return_path
from mailtick.mail import ParsedMail

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")  # RFC 3464, 6533
RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

_MSGID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_MSGID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s@]+@[^<>\s@]+>)", re.IGNORECASE | re.MULTILINE)
_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_QMAIL_STATUS = re.compile(r"\(#([245]\.\d{1,3}\.\d{1,3})\)")
_SMTP_REPLY = re.compile(r"\b[245]\d\d[ -]")
_BOUNCE_SENDERS = ("mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster")

# Where the returned copy of the mail starts in a plain-text bounce.
_COPY_MARKERS = re.compile(
    r"^(?:-+ ?Below this line is a copy of the message"
    r"|-+ This is a copy of the message"
    r"|-+ ?Original message"
    r"|-+ ?The header of the original message"
    r"|Original message headers:"
    r"|(?:Return-Path|Received):)",
    re.IGNORECASE | re.MULTILINE,
)

# (name, phrase): a plain-text mail from a bounce sender is a bounce when one matches its
# subject or its report text (lower-cased).
BOUNCE_PHRASES: tuple[tuple[str, str], ...] = (
    ("qmail", "this is the qmail-send program"),
    ("not-delivered", "could not be delivered"),
    ("not-delivered", "couldn't be delivered"),
    ("not-delivered", "wasn't able to deliver"),
    ("not-delivered", "unable to deliver"),
    ("undeliverable", "undeliverable"),
    ("undelivered", "undelivered mail"),
    ("failed", "delivery has failed"),
    ("failed", "delivery failed"),
    ("failed", "delivery failure"),
    ("failed", "failure notice"),
    ("returned", "returned mail"),
    ("returned", "returned to sender"),
    ("dsn", "delivery status notification"),
    ("delayed", "delivery delayed"),
    ("delayed", "has been delayed"),
    ("delayed", "not yet been delivered"),
    ("de", "unzustellbar"),
    ("de", "konnte nicht zugestellt werden"),
)
_DELAY_PHRASES = (
    "delayed",
    "not yet been delivered",
    "will continue trying",
    "still trying",
    "will retry",
    "verzögert",
)


@dataclass(frozen=True)
class Recipient:
    """One recipient the report speaks of (RFC 3464 per-recipient fields)."""

    address: str  # Final-Recipient, or the address the text names; lower-cased, "" unknown
    original: str = ""  # Original-Recipient: the address as we gave it, when reported
    action: str = "failed"  # failed | delayed | delivered | relayed | expanded
    status: str = ""  # "5.1.1"
    diagnostic: str = ""  # Diagnostic-Code, or the text's explanation, one line

    @property
    def permanent(self) -> bool:
        return self.action == "failed"

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.original, self.address) if a)

    def summary(self) -> str:
        """ "5.1.1 smtp; 550 5.1.1 user unknown": status and diagnostic, for the records."""
        return " ".join(part for part in (self.status, self.diagnostic) if part) or self.action


@dataclass(frozen=True)
class DeliveryReport:
    form: str  # "rfc3464", or the bounce phrase rule that recognised a plain-text bounce
    recipients: tuple[Recipient, ...]
    message_ids: tuple[str, ...]  # the mails it may be about, the returned mail's first
    reporter: str  # Reporting-MTA, else the sender of the report

    @property
    def action(self) -> str:
        """The report's gist: failed if any recipient failed, else delayed, else the first."""
        actions = [r.action for r in self.recipients]
        for wanted in ("failed", "delayed"):
            if wanted in actions:
                return wanted
        return actions[0] if actions else "failed"

    def about(self, action: str) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.action == action)


def read_report(mail: ParsedMail) -> DeliveryReport | None:
    """The delivery report in `mail`, or None when it is no delivery report or bounce."""
    message = email.message_from_bytes(mail.raw, policy=email.policy.compat32)
    status = [part for part in _parts(message) if part.get_content_type() in STATUS_TYPES]
    if status:
        return _rfc3464(mail, message, status[0])
    return _plain_bounce(mail, message)


# -- RFC 3464 ------------------------------------------------------------------------------


def _rfc3464(mail: ParsedMail, message: Message, status: Message) -> DeliveryReport:
    blocks = _status_blocks(status)
    per_message, per_recipient = (blocks[0], blocks[1:]) if blocks else (Message(), [])
    text_ids = _text_ids(_report_text(message))
    return DeliveryReport(
        form="rfc3464",
        recipients=tuple(_recipient(block) for block in per_recipient if _field(block, "Action")),
        message_ids=_unique((*_returned_ids(message), *_named_ids(mail), *text_ids)),
        reporter=_typed_value(_field(per_message, "Reporting-MTA")) or mail.from_addr,
    )


def _status_blocks(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status part (compat32 parses them as a list
    of header blocks; an encoded part is decoded and split here)."""
    if part.is_multipart():
        return _subparts(part)
    text = _decoded(part)
    parser = HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(block.strip() + "\n") for block in re.split(r"\n\s*\n", text.strip())]


def _recipient(block: Message) -> Recipient:
    code = _status(_field(block, "Status"))
    action = _field(block, "Action").lower().split()[0:1]
    return Recipient(
        address=_typed_value(_field(block, "Final-Recipient")).lower(),
        original=_typed_value(_field(block, "Original-Recipient")).lower(),
        action=action[0] if action and action[0] in ACTIONS else _action_of(code),
        status=code,
        diagnostic=_one_line(_field(block, "Diagnostic-Code")),
    )


def _returned_ids(message: Message) -> list[str]:
    """The Message-ID of the returned mail (message/rfc822) or headers (text/rfc822-headers)."""
    returned = [part for part in _parts(message) if part.get_content_type() in RETURNED_TYPES]
    return _returned_id(returned[0]) if returned else []


def _returned_id(part: Message) -> list[str]:
    if part.is_multipart():  # message/rfc822: compat32 parsed the returned mail
        header = " ".join(str(sub.get("Message-ID", "")) for sub in _subparts(part)[:1])
        return _MSGID.findall(header)[:1]
    return [match[1] for match in _MSGID_LINE.finditer(_decoded(part))][:1]


# -- plain-text bounces --------------------------------------------------------------------


def _plain_bounce(mail: ParsedMail, message: Message) -> DeliveryReport | None:
    if not _from_bounce_sender(mail):
        return None
    text = _report_text(message)
    report = _before_copy(text)
    said = f"{mail.subject}\n{report}".lower()
    rule = _bounce_phrase(said)
    if rule is None:
        return None
    delayed = "permanent" not in said and any(p in said for p in _DELAY_PHRASES)
    return DeliveryReport(
        form=rule,
        recipients=tuple(_text_recipients(report, mail, "delayed" if delayed else "failed")),
        message_ids=_unique((*_returned_ids(message), *_text_ids(text), *_named_ids(mail))),
        reporter=mail.from_addr,
    )


def _from_bounce_sender(mail: ParsedMail) -> bool:
    """Bounces come from a MAILER-DAEMON or postmaster, or with a null Return-Path."""
    local = mail.from_addr.partition("@")[0]
    return null_return_path(mail) or local in _BOUNCE_SENDERS or "@" not in mail.from_addr


def _bounce_phrase(text: str) -> str | None:
    return next((name for name, phrase in BOUNCE_PHRASES if phrase in text), None)


def _before_copy(text: str) -> str:
    """The report of a plain-text bounce: its text before the copy of the returned mail."""
    found = _COPY_MARKERS.search(text)
    return text if found is None else text[: found.start()]


# "<joerg@kunde.example>:" starting a line, the reason after it or below it (qmail, Postfix)
_ANGLE_FORM = re.compile(r"^<([^<>\s]+@[^<>\s]+)>:[ \t]*\n?((?:[ \t]*\S.*\n?)*)", re.MULTILINE)
# The line that introduces a list of addresses (Exim, Exchange, Sendmail, ...).
_LIST_LEAD = re.compile(
    r"(?:failed|delayed|delivered (?:is|are)|recipients or groups|recipients?)[ \t]*:[ \t]*$",
    re.IGNORECASE,
)
_ADDR_LINE = re.compile(r"^([ \t]*)<?([^<>\s@]+@[^<>\s:]+)>?:?[ \t]*$")


def _text_recipients(report: str, mail: ParsedMail, action: str) -> Iterable[Recipient]:
    """The recipients a plain-text bounce names, with the reason given for each."""
    reasons = {m[1].lower(): m[2] for m in _ANGLE_FORM.finditer(report)}
    for address, reason in _listed(report):
        reasons.setdefault(address, reason)
    failed = _ADDR.findall(mail.header("X-Failed-Recipients"))  # Exim
    named = [a.lower() for a in failed] + list(reasons)
    if not named:  # no explicit form: whatever addresses the report text mentions
        named = [a.lower() for a in _ADDR.findall(report)]
        named = [a for a in named if a != mail.from_addr and not _robot(a)]
    for address in dict.fromkeys(named):
        yield _text_recipient(address, reasons.get(address, ""), report, action)


def _listed(report: str) -> Iterable[tuple[str, str]]:
    """(address, reason) of the indented lists after a lead-in such as Exim's
    "The following address(es) failed:"; the reason lines are indented deeper."""
    lines = report.splitlines()
    for index, line in enumerate(lines):
        if _LIST_LEAD.search(line):
            yield from _list_after(lines[index + 1 :])


def _list_after(lines: list[str]) -> Iterable[tuple[str, str]]:
    address, indent, reason = "", -1, list[str]()
    for line in lines:
        found = _ADDR_LINE.match(line)
        if not line.strip():
            if address:
                break
            continue
        if found and (not address or len(found[1]) <= indent):
            if address:
                yield address, " ".join(reason)
            address, indent, reason = found[2].lower(), len(found[1]), []
        elif address and len(line) - len(line.lstrip()) > indent:
            reason.append(line.strip())
        elif address or not found:
            break
    if address:
        yield address, " ".join(reason)


def _robot(address: str) -> bool:
    return address.partition("@")[0] in _BOUNCE_SENDERS


def _text_recipient(address: str, reason: str, report: str, action: str) -> Recipient:
    diagnostic = _one_line(reason) or _smtp_line(report)
    code = _status(diagnostic) or _status(report) or ("4.0.0" if action == "delayed" else "5.0.0")
    return Recipient(address=address, action=action, status=code, diagnostic=diagnostic)


def _status(text: str) -> str:
    """The enhanced status code (RFC 3463) a text gives: qmail's "(#5.1.1)" first."""
    found = _QMAIL_STATUS.search(text) or _STATUS.search(text)
    return found[1] if found else ""


def _smtp_line(report: str) -> str:
    lines = (line.strip() for line in report.splitlines())
    return next((line for line in lines if _SMTP_REPLY.search(line)), "")


# -- helpers -------------------------------------------------------------------------------


def _parts(message: Message) -> Iterable[Message]:
    """The MIME parts, not descending into returned mails or status blocks."""
    yield message
    if message.get_content_type() not in (*STATUS_TYPES, *RETURNED_TYPES):
        for part in _subparts(message):
            yield from _parts(part)


def _subparts(message: Message) -> list[Message]:
    payload = message.get_payload() if message.is_multipart() else []
    return [part for part in payload if isinstance(part, Message)]


def _report_text(message: Message) -> str:
    """The human-readable text of the report, not that of a returned mail."""
    texts = [_decoded(p) for p in _parts(message) if p.get_content_type() == "text/plain"]
    return "\n".join(texts).replace("\r\n", "\n")


def _decoded(part: Message) -> str:
    """A leaf part's text. The stdlib raises ValueError on some charset names (NUL)."""
    try:
        data = part.get_payload(decode=True)
    except ValueError:
        return ""
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):  # an unknown or malformed charset name
        return data.decode("utf-8", errors="replace")


def _named_ids(mail: ParsedMail) -> tuple[str, ...]:
    """The ids the report's own headers name (Exim and others set References)."""
    return (*reversed(mail.references), *mail.in_reply_to)


def _text_ids(text: str) -> list[str]:
    """Message-IDs in a text: those on a Message-ID: line first, then any other."""
    return [m[1] for m in _MSGID_LINE.finditer(text)] + _MSGID.findall(text)


def _field(block: Message, name: str) -> str:
    return str(block.get(name, "")).strip()


def _typed_value(value: str) -> str:
    """ "rfc822; joerg@kunde.example" -> "joerg@kunde.example" (RFC 3464 address-type)."""
    return value.partition(";")[2].strip().strip("<>") if ";" in value else value.strip("<> ")


def _action_of(status: str) -> str:
    return {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[:1], "failed")


def _one_line(value: str) -> str:
    return " ".join(value.split())[:500]


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
