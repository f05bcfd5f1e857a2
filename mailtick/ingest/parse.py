"""Stage `parse`: RawMail bytes -> ParsedMail (mail-parser + stdlib headers). Touches nothing."""

from __future__ import annotations

import base64
import binascii
import email.errors
import hashlib
import re
from collections.abc import Iterable
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from functools import lru_cache
from typing import Any

import html2text
import mailparser

from mailtick.mail import Attachment, ParsedMail
from mailtick.outcomes import Rejected

_MSGID = re.compile(r"<[^<>\s]+>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LANGUAGES = ("de", "en")
_MIN_LANGUAGE_CONFIDENCE = 0.8


def parse(raw: bytes, default_language: str = "en") -> ParsedMail:
    """Parse one mail. A mail mail-parser cannot read at all is Rejected with the reason."""
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on broken input
        raise Rejected(f"unparseable mail: {type(exc).__name__}: {exc}") from exc
    message: Message = parsed.message
    from_name, from_addr = _from(message)
    text = _text(parsed)
    header_list = tuple((k.lower(), clean_header(v)) for k, v in message.items())
    return ParsedMail(
        raw=raw,
        message_id=_message_id(message, raw),
        subject=clean_header(message.get("Subject", "")),
        from_name=from_name,
        from_addr=from_addr,
        to=_addresses(message.get_all("To", [])),
        cc=_addresses(message.get_all("Cc", [])),
        date=_date(message.get("Date")),
        in_reply_to=tuple(_MSGID.findall(str(message.get("In-Reply-To", "")))),
        references=tuple(_MSGID.findall(str(message.get("References", "")))),
        text=text,
        language=detect_language(text, default_language),
        attachments=tuple(_attachments(parsed.attachments)),
        headers=dict(reversed(header_list)),
        defects=tuple(str(d) for d in parsed.defects),
        header_list=header_list,
    )


def clean_header(value: Any) -> str:
    """A header value decoded from RFC 2047 with every control character (CR, LF, NUL) removed."""
    try:
        text = str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, ValueError, binascii.Error, email.errors.MessageError):
        text = str(value)
    return " ".join(_CONTROL.sub(" ", text).split())


def _message_id(message: Message, raw: bytes) -> str:
    found = _MSGID.findall(str(message.get("Message-ID", "")))
    if found and len(found[0]) <= 250:
        return str(found[0])
    return f"<{hashlib.sha256(raw).hexdigest()[:40]}@no-message-id.mailtick.invalid>"


def _undecoded(value: Any) -> str:
    """A header as sent, control characters removed. Addresses are parsed from this,
    before any RFC 2047 decoding: an encoded display name such as
    =?utf-8?q?boss=40example.com?= must never become the address."""
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def _from(message: Message) -> tuple[str, str]:
    name, addr = parseaddr(_undecoded(message.get("From", "")))
    return clean_header(name), addr.strip().lower()


def _addresses(values: Iterable[Any]) -> tuple[str, ...]:
    pairs = getaddresses([_undecoded(v) for v in values])
    return tuple(addr.strip().lower() for _, addr in pairs if "@" in addr)


def _date(value: Any) -> Any:
    if not value:
        return None
    try:
        return parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _text(parsed: Any) -> str:
    plain: list[str] = parsed.text_plain
    if "".join(plain).strip():  # an empty text part beside the HTML one says nothing
        return "\n".join(plain).replace("\r\n", "\n")
    html: list[str] = parsed.text_html
    if html:
        return html_to_text("\n".join(html))
    return ""


def html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.ignore_images = True
    converter.body_width = 0
    return str(converter.handle(html)).strip() + "\n"


def _attachments(items: Iterable[dict[str, Any]]) -> Iterable[Attachment]:
    for item in items:
        payload = item.get("payload") or ""
        try:
            data = base64.b64decode(payload) if item.get("binary") else str(payload).encode()
        except (binascii.Error, ValueError):
            data = str(payload).encode()
        yield Attachment(
            filename=clean_header(item.get("filename") or "attachment")[:200],
            content_type=str(item.get("mail_content_type") or "application/octet-stream"),
            data=data,
        )


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(LANGUAGES))
    return identifier


def warm_up() -> None:
    """Load the language model (about a second) before the first mail needs it."""
    _identifier()


def detect_language(text: str, default: str) -> str:
    """ "de" or "en" when the text says so with confidence, else the configured default."""
    sample = text[:1000]
    if len(sample.split()) < 3:
        return default
    language, confidence = _identifier().classify(sample)
    return str(language) if float(confidence) >= _MIN_LANGUAGE_CONFIDENCE else default
