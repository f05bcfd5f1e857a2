"""Stage `parse`: RawMail bytes -> ParsedMail (mail-parser + stdlib headers). Touches nothing.

HTML from a mail is sanitised with nh3 (an allow-list) before anything reads or keeps
it: the body before it is turned into text, a text/html attachment before its bytes
are stored (and relayed to agents or customers from there). Attachment names are
plain file names: no directories, no control characters.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import hashlib
import re
from collections.abc import Iterable, Sequence
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from functools import lru_cache
from typing import Any

import html2text
import mailparser
import nh3

from mailtick.config import TicketsConfig
from mailtick.mail import Attachment, ParsedMail
from mailtick.outcomes import Rejected

_MSGID = re.compile(r"<[^<>\s]+>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
LANGUAGES = ("de", "en")
_MIN_LANGUAGE_CONFIDENCE = 0.8


def parse(raw: bytes, default_language: str = TicketsConfig.default_language) -> ParsedMail:
    """Parse one mail. A mail mail-parser cannot read at all is Rejected with the reason."""
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on broken input
        raise Rejected(f"unparseable mail: {type(exc).__name__}: {exc}") from exc
    message: Message = parsed.message
    from_name, from_addr, from_problem = read_from(message.get_all("From", []))
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
        in_reply_to=message_ids(message.get("In-Reply-To", ""), MAX_IN_REPLY_TO),
        references=message_ids(message.get("References", ""), MAX_REFERENCES),
        text=text,
        language=detect_language(text, default_language),
        attachments=tuple(_attachments(parsed.attachments)),
        headers=dict(reversed(header_list)),
        defects=tuple(str(d) for d in parsed.defects),
        header_list=header_list,
        from_problem=from_problem,
    )


def clean_header(value: Any) -> str:
    """A header value decoded from RFC 2047 with every control character (CR, LF, NUL) removed."""
    try:
        text = str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, ValueError, binascii.Error, email.errors.MessageError):
        text = str(value)
    return " ".join(_CONTROL.sub(" ", text).split())


# Every id a mail names may feed a database query (threading): a header listing 250,001
# ids must not make a statement with 250,001 parameters. In-Reply-To names one mail (RFC
# 5322), a few at most; of References the first (the thread's root) and the newest count.
MAX_IN_REPLY_TO = 10
MAX_REFERENCES = 100


def message_ids(value: Any, limit: int) -> tuple[str, ...]:
    """The first Message-ID of the header and the newest `limit - 1` (at most `limit`)."""
    found = _MSGID.findall(str(value))
    if len(found) > limit:
        found = [found[0], *found[len(found) - limit + 1 :]]
    return tuple(mid for mid in found if len(mid) <= 250)


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


_NAMED_ADDRESS = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
_ANGLED = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+?)\s*>")


def read_from(values: Sequence[Any]) -> tuple[str, str, str]:
    """(display name, address, problem) of the From header(s). The address is the one in
    angle brackets, which mail clients show and DMARC judges; `problem` says why the header
    can be read as another address as well ("" when it cannot): several addresses or From
    headers, an address as display name, or a parser that reads a different address."""
    raw = _undecoded(values[0]) if values else ""
    name, addr = parseaddr(raw)
    angled = _ANGLED.findall(raw)
    chosen = (angled[0] if len(angled) == 1 else addr).strip().lower()
    name = clean_header(name)
    return name, chosen, _from_problem(values, raw, name, addr.strip().lower(), chosen)


def _from_problem(values: Sequence[Any], raw: str, name: str, parsed: str, chosen: str) -> str:
    if len(values) > 1:
        return f"{len(values)} From headers"
    if len([a for _, a in getaddresses([raw]) if "@" in a]) > 1 or len(_ANGLED.findall(raw)) > 1:
        return "From names several addresses"
    if parsed != chosen:
        return f"From reads as {parsed} or {chosen}"
    if any(other.lower() != chosen for other in _NAMED_ADDRESS.findall(name)):
        return f"From's display name is another address than {chosen}"
    return ""


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
    """Sanitised first: no script or style content and no comments (Outlook's conditional
    ones) reach the text."""
    converter = html2text.HTML2Text()
    converter.ignore_images = True
    converter.body_width = 0
    return str(converter.handle(sanitize_html(html))).strip() + "\n"


# -- HTML: the allow-list -------------------------------------------------------------------

# Ordinary formatting, lists, tables and links. Nothing runs, loads or submits: no script,
# style, iframe, object, embed, form or input; no on* or style attributes; images keep
# their size and alt text but no src (no remote loads, no tracking pixels, no data: URLs).
_TAG_NAMES = (  # one string: the allow-list reads as a list of words
    "a abbr b bdi bdo blockquote br caption center cite code col colgroup dd del dfn div dl dt "
    "em figcaption figure h1 h2 h3 h4 h5 h6 hr i img ins kbd li mark ol p pre q s samp small "
    "span strike strong sub sup table tbody td tfoot th thead tr tt u ul var wbr"
)
HTML_TAGS = frozenset(_TAG_NAMES.split())
HTML_ATTRIBUTES: dict[str, frozenset[str]] = {
    "*": frozenset({"title", "lang", "dir"}),  # on every allowed tag
    "a": frozenset({"href", "title"}),
    "img": frozenset({"alt", "title", "width", "height"}),
    "table": frozenset({"border", "cellpadding", "cellspacing", "width", "align", "summary"}),
    "td": frozenset({"colspan", "rowspan", "align", "valign", "width"}),
    "th": frozenset({"colspan", "rowspan", "align", "valign", "width", "scope"}),
    "col": frozenset({"span", "width"}),
    "colgroup": frozenset({"span", "width"}),
    "ol": frozenset({"start", "type"}),
    "bdo": frozenset({"dir"}),
}
# Removed together with everything inside them (other tags not allowed keep their text).
_DROPPED_NAMES = (
    "script style title template noscript iframe frame frameset noframes object embed "
    "applet xml svg math textarea select"
)
HTML_DROPPED_WITH_CONTENT = frozenset(_DROPPED_NAMES.split())
HTML_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_HTML_NAME = re.compile(r"\.(x?html?|shtml)$", re.IGNORECASE)
HTML_FILE_HEAD = '<!DOCTYPE html>\n<meta charset="utf-8">\n'
_PATH_SEPARATORS = re.compile(r"[/\\]")
_MAX_NAME = 200
# Bidirectional and invisible format characters: "rechnung\u202efdp.exe" shows as
# "rechnungexe.pdf". None of them belongs in a file name.
_FORMAT_CHARACTERS = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
# Types that can carry script and are not HTML (which is sanitised): passed on inert, as
# application/octet-stream named ".txt", so no client renders them.
_ACTIVE_TYPES = frozenset(
    {"image/svg+xml", "text/xml", "application/xml", "application/xslt+xml", "text/javascript",
     "application/javascript", "application/x-javascript", "application/hta", "message/rfc822x"}
)  # fmt: skip
_ACTIVE_NAME = re.compile(r"\.(svgz?|xml|xsl|xslt|js|mjs|hta|wsf|vbs|mht|mhtml)$", re.IGNORECASE)
_HTML_START = re.compile(
    rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body|script)\b", re.I | re.S
)
_ACTIVE_START = re.compile(rb"^\s*(<\?xml|<svg\b|<!doctype\s+svg)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=set(HTML_TAGS),
        clean_content_tags=set(HTML_DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in HTML_ATTRIBUTES.items()},
        url_schemes=set(HTML_URL_SCHEMES),
        url_relative="deny",  # "//host/x" or "x.html" mean nothing in a mail
        strip_comments=True,
        link_rel="noopener noreferrer",
    )


def sanitize_html(html: str) -> str:
    """HTML from a mail reduced to the allow-list above (nh3: the Ammonia sanitiser)."""
    return _cleaner().clean(html)


def sanitize_html_file(data: bytes, charset: str | None) -> bytes:
    """An HTML attachment as a sanitised UTF-8 document that says it is UTF-8."""
    try:
        text = data.decode(charset or "utf-8")
    except (LookupError, UnicodeDecodeError):
        text = data.decode("cp1252", errors="replace")
    return (HTML_FILE_HEAD + sanitize_html(text)).encode("utf-8")


def safe_filename(name: str) -> str:
    """An attachment's name as a plain file name, never a path: RFC 2047 decoded, control
    characters (CR, LF, NUL ...) gone, only what follows the last / or \\, no leading dots,
    at most 200 characters (a short extension kept); "attachment" when nothing is left."""
    plain = _FORMAT_CHARACTERS.sub("", clean_header(name))
    base = _PATH_SEPARATORS.split(plain)[-1].strip().strip(". ")
    if len(base) > _MAX_NAME:
        stem, dot, extension = base.rpartition(".")
        short = dot and 0 < len(extension) <= 10
        base = stem[: _MAX_NAME - 1 - len(extension)] + dot + extension if short else base
        base = base[:_MAX_NAME]
    return base or "attachment"


def _attachments(items: Iterable[dict[str, Any]]) -> Iterable[Attachment]:
    for item in items:
        payload = item.get("payload") or ""
        try:
            data = base64.b64decode(payload) if item.get("binary") else str(payload).encode()
        except (binascii.Error, ValueError):
            data = str(payload).encode()
        filename = safe_filename(str(item.get("filename") or ""))
        content_type = str(item.get("mail_content_type") or "application/octet-stream").lower()
        yield _defused(Attachment(filename, content_type, data), item.get("charset"))


def _defused(item: Attachment, charset: Any) -> Attachment:
    """HTML (by type, name or content) sanitised; other active content (SVG, XML, scripts,
    by type, name or content) made inert: application/octet-stream with ".txt" added."""
    head = item.data[:1024]
    if (
        item.content_type in _HTML_TYPES
        or _HTML_NAME.search(item.filename)
        or _HTML_START.match(head)
    ):
        data = sanitize_html_file(item.data, str(charset) if charset else None)
        return Attachment(item.filename, "text/html", data)
    if (
        item.content_type in _ACTIVE_TYPES
        or _ACTIVE_NAME.search(item.filename)
        or _ACTIVE_START.match(head)
    ):
        return Attachment(
            safe_filename(item.filename + ".txt"), "application/octet-stream", item.data
        )
    return item


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
