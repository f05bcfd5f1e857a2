"""Composing our outgoing mail: jinja2 body + safe headers -> OutgoingMail. Touches nothing.

Values taken from incoming mail reach headers only through `text_header` and
`address_header` (control characters removed, RFC 2047-encoded, addresses checked)
and templates only as data.
"""

from __future__ import annotations

import email.charset
import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import encoders
from email.header import Header
from email.headerregistry import Address
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from urllib.parse import quote

import jinja2

from mailtick.ingest.classify import LOOP_HEADER
from mailtick.mail import Attachment
from mailtick.threading.subject import tag, with_tag

LANGUAGES = ("de", "en")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class OutgoingMail:
    message_id: str
    mail_from: str  # envelope sender
    from_name: str  # display name of the From header
    rcpt_to: tuple[str, ...]
    subject: str
    text: str
    raw: bytes


@dataclass(frozen=True)
class Reply:
    """What a mail needs of its ticket and of the mail it answers."""

    number: str
    title: str
    language: str
    to_addr: str
    to_name: str
    in_reply_to: str  # the Message-ID this mail answers ("" for none)
    references: tuple[str, ...]
    from_name: str | None = None  # None: the support address's own display name
    reply_to: str = ""  # a Reply-To address (an agent's token address)
    attachments: tuple[Attachment, ...] = ()
    auto_submitted: str = "auto-replied"  # RFC 3834; "auto-generated" for notifications


class Composer:
    """Renders templates into complete RFC 5322 mails from the support address."""

    def __init__(self, from_address: str, prefix: str, default_language: str) -> None:
        name, addr = parseaddr(from_address)
        self.sender = Address(display_name=name, addr_spec=addr)
        self.prefix = prefix
        self.default_language = default_language
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("mailtick", "templates"),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text mail; values are data, never template source
            keep_trailing_newline=True,
            auto_reload=False,  # templates ship with the package: no stat() per mail
        )

    def acknowledgement(self, reply: Reply) -> OutgoingMail:
        return self.compose("ack", reply)

    def compose(self, template: str, reply: Reply, **context: object) -> OutgoingMail:
        """Render `<template>.<language>.txt.j2` with the ticket facts and `context`."""
        language = reply.language if reply.language in LANGUAGES else self.default_language
        body = self.env.get_template(f"{template}.{language}.txt.j2").render(
            number=reply.number,
            tag=tag(self.prefix, reply.number),
            title=reply.title,
            customer_name=reply.to_name,
            support_address=self.sender.addr_spec,
            support_name=self.sender.display_name or self.sender.addr_spec,
            **context,
        )
        return self._envelope(reply, body, language)

    def _envelope(self, reply: Reply, body: str, language: str) -> OutgoingMail:
        message_id = make_msgid(idstring=f"{self.prefix}{reply.number}", domain=self.sender.domain)
        subject = with_tag(reply.title, self.prefix, reply.number)
        from_name = self.sender.display_name if reply.from_name is None else reply.from_name
        headers: list[tuple[str, str | Header]] = [
            ("From", address_header(self.sender.addr_spec, from_name)),
            ("To", address_header(reply.to_addr, reply.to_name)),
            ("Subject", text_header(subject)),
            ("Date", format_datetime(datetime.now(UTC), usegmt=True)),
            ("Message-ID", message_id),
        ]
        if reply.reply_to:
            headers.append(("Reply-To", address_header(reply.reply_to, "")))
        if reply.in_reply_to:
            references = " ".join((*reply.references[-10:], reply.in_reply_to))
            headers += [("In-Reply-To", reply.in_reply_to), ("References", references)]
        headers += [
            ("Auto-Submitted", reply.auto_submitted),
            ("X-Auto-Response-Suppress", "All"),
            (LOOP_HEADER, f"{self.sender.addr_spec} {reply.number}"),
            ("Content-Language", language),
            ("MIME-Version", "1.0"),
        ]
        return OutgoingMail(
            message_id=message_id,
            mail_from=self.sender.addr_spec,
            from_name=from_name,
            rcpt_to=(reply.to_addr,),
            subject=subject,
            text=body,
            raw=render_mail(headers, body, reply.attachments),
        )


# The stdlib's compat32 generator: about three times faster than EmailMessage with
# policy.SMTP, which parses every header back. It does not check values, so every
# value goes through the two functions below first.
_UTF8 = email.charset.Charset("utf-8")
_UTF8.header_encoding = email.charset.QP
_UTF8.body_encoding = email.charset.QP
_WIRE = email.policy.compat32.clone(linesep="\r\n")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
_ADDR_SPEC = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+$")


def text_header(value: str) -> str | Header:
    """A header value with no way to start another header: control characters become
    spaces; anything but printable ASCII is RFC 2047-encoded."""
    clean = " ".join(_CONTROL.sub(" ", value).split())
    if clean.isascii() and len(clean) < 900:
        return clean
    return Header(clean, _UTF8, maxlinelen=76)


def usable_address(addr: str) -> bool:
    """A plain ASCII addr-spec we can put in a header and an envelope."""
    return bool(_ADDR_SPEC.match(addr)) and len(addr) <= 254


MAX_DISPLAY_NAME = 64  # characters of a display name we write; longer ones end in "…"
MAX_ECHO = 60  # characters of a sender's subject an automatic answer repeats

# A URL or a host name ("http://x.example/y", "www.x.example", "cheap-pills.example/buy").
_LINK = re.compile(
    r"(?i)\b(?:[a-z][a-z0-9+.-]*://\S+|(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}\b\S*)"
)


def inert(text: str, limit: int = MAX_ECHO) -> str:
    """What an automatic answer may repeat of a sender's words: no link a mail client
    would make clickable ("cheap-pills.example" becomes "cheap-pills[.]example"), at most
    `limit` characters. Forged senders make us mail strangers (backscatter); the mail
    then carries no spammer's link and little of the spammer's text."""
    defanged = _LINK.sub(lambda m: m[0].replace("://", "[:]//").replace(".", "[.]"), text)
    clean = " ".join(_CONTROL.sub(" ", defanged).split())
    return clean if len(clean) <= limit else clean[: limit - 1].rstrip() + "…"


def address_header(addr: str, name: str) -> str | Header:
    """`Name <addr>` from untrusted parts. An address that is not a plain addr-spec is
    refused (ValueError). The name is cleaned, cut to MAX_DISPLAY_NAME characters, and a
    non-ASCII one RFC 2047-encoded in words that fold (no line over 78 octets)."""
    if not usable_address(addr):
        raise ValueError(f"not a usable mail address: {addr!r}")
    clean = " ".join(_CONTROL.sub(" ", name).split())
    if len(clean) > MAX_DISPLAY_NAME:
        clean = clean[: MAX_DISPLAY_NAME - 1].rstrip() + "…"
    if clean.isascii():
        return formataddr((clean, addr))
    header = Header(clean, _UTF8, maxlinelen=76)
    header.append(f"<{addr}>", "us-ascii")
    return header


def render_mail(
    headers: list[tuple[str, str | Header]], body: str, attachments: Sequence[Attachment] = ()
) -> bytes:
    text = Message()
    text.set_payload(body, _UTF8)  # text/plain; charset="utf-8", quoted-printable
    msg: Message = MIMEMultipart("mixed") if attachments else text
    if attachments:
        msg.attach(text)
        for item in attachments:
            msg.attach(_attachment(item))
    for name, value in headers:
        if name == "MIME-Version" and "MIME-Version" in msg:
            continue
        msg[name] = value  # type: ignore[assignment]  # compat32 takes Header objects
    return msg.as_bytes(policy=_WIRE)


def _attachment(item: Attachment) -> MIMEBase:
    maintype, _, subtype = item.content_type.partition("/")
    if not _TOKEN.fullmatch(maintype) or not _TOKEN.fullmatch(subtype):
        maintype, subtype = "application", "octet-stream"
    part = MIMEBase(maintype, subtype)
    part.set_payload(item.data)
    encoders.encode_base64(part)
    name = " ".join(_CONTROL.sub(" ", item.filename).split()) or "attachment"
    part["Content-Disposition"] = disposition(name)
    return part


def disposition(filename: str) -> str:
    """`attachment` with the file name as RFC 2231 continuations (filename*0*=utf-8''…;
    filename*1*=…), one short line each: a long or non-ASCII name never makes a line
    longer than 998 octets, which SMTP servers refuse."""
    encoded = quote(filename.encode(), safe="")
    chunks: list[str] = []
    while encoded:
        cut = min(_CHUNK, len(encoded))
        while cut < len(encoded) and "%" in encoded[cut - 2 : cut]:
            cut -= 1  # never split a %XX
        chunks.append(encoded[:cut])
        encoded = encoded[cut:]
    params = [f"filename*{n}*={chunk}" for n, chunk in enumerate(chunks)]
    params[0] = params[0].replace("*=", "*=utf-8''", 1)
    return ";\n ".join(["attachment", *params])


_CHUNK = 60  # percent-encoded characters per filename*N* line
