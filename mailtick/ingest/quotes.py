"""Split a plain-text reply into visible text, quoted history and signature. Touches nothing.

The policy is two tables, tried in order, each rule named so that tests and logs can cite it:

* `QUOTE_HEADERS`: where quoted history starts. Outlook "-----Original Message-----" /
  "-----Ursprüngliche Nachricht-----", Outlook/new-Outlook/GMX header blocks
  ("From:/Sent:/To:/Subject:", "Von:/Gesendet:/An:/Betreff:", with or without the "____"
  line), forward markers, and the attribution lines "On … wrote:", "Am … schrieb …:",
  "… schrieb am …:", "Am … hat … geschrieben:", "Le … a écrit :" (also wrapped over two or
  three lines). A header block cuts everything after it. An attribution followed by `>` lines
  only quotes its own lines, so inline answers between the `>` lines stay visible; a dated
  attribution followed by unquoted text cuts the rest. An attribution needs a date or time
  (or a following `>` line), so "In your last mail you wrote:" in prose never cuts.
* `>` lines are quoted wherever they stand.
* Forwards count as quoted: the forwarded mail is not what the sender wrote now. `quote_rule`
  then starts with "forward-", so a caller can still show it. The full original is kept by the
  caller (the stored raw mail), never here.
* `SIGNATURE_RULES`, on the tail of the visible text only: a "-- " line (a bare "--" only before
  signature-like lines); a mobile line ("Sent from my iPhone", "Von meinem iPhone gesendet");
  a sign-off block ("Viele Grüße\\nJörg\\n<company and phone lines>"). The sign-off line itself
  goes to `signature` too. Conservative: a block holding a question or a "PS" is content, and
  a thanks ("Danke!", "Thanks,") counts only at the start of a paragraph and with a name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplyParts:
    visible: str  # what the sender wrote now: no quoted history, no signature
    quoted: str  # the quoted history, in order, as it appeared
    signature: str  # the signature block, if any
    quote_rule: str = ""  # the first QUOTE_HEADERS rule that matched; "quote-marks" for `>`
    signature_rule: str = ""  # the SIGNATURE_RULES rule where the signature starts


# --- quote headers ------------------------------------------------------------------------

# a time, a year or a numeric date somewhere on the attribution's first line
_DATE = r"(?=[^\n]*?(?:\d{1,2}:\d{2}|\b(?:19|20)\d{2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b))"
_LINE = r"[^\n]{0,200}?"
_WRAP = r"[^\n]{0,200}?(?:\n[^\n]{0,120}?){1,2}"  # an attribution wrapped onto 2 or 3 lines
_DASHES = r"[ \t]*-{3,}[ \t]*"
_EN = "From|Sent|Date|To|Cc|Subject|Reply-To"
_DE = "Von|Gesendet|Datum|An|Cc|Betreff|Antwort an|Kopie"
_FR = "De|Envoyé|Date|À|A|Cc|Objet"


def _block(names: str, sender: str) -> str:
    """Three consecutive `Name: value` lines with `sender` (From/Von/De) among them, optionally
    after Outlook's "____" separator line; "**From:**" (html2text) and "De :" (French) count."""
    line = rf"[ \t]*\**(?:{names})\**[ \t\xa0]?:\**[^\n]*"
    separator = r"(?:[ \t]*_{10,}[ \t]*\n(?:[ \t]*\n)?)?"
    has_sender = rf"(?=(?:{line}\n){{0,2}}[ \t]*\**(?:{sender})\**[ \t\xa0]?:)"
    return rf"{separator}{has_sender}{line}\n{line}\n{line}"


# (name, pattern matched at a line start against that line and the next few, needs `>` after)
QUOTE_HEADERS: tuple[tuple[str, str, bool], ...] = (
    ("original-message-en", rf"{_DASHES}(?i:Original Message){_DASHES}$", False),
    (
        "original-message-de",
        rf"{_DASHES}(?:Ursprüngliche Nachricht|Original-?Nachricht){_DASHES}$",
        False,
    ),
    ("forward-en", rf"{_DASHES}(?i:Forwarded message){_DASHES}$|Begin forwarded message:", False),
    (
        "forward-de",
        rf"{_DASHES}Weitergeleitete (?:Nachricht|E-Mail){_DASHES}$"
        r"|Anfang der weitergeleiteten (?:Nachricht|E-Mail):",
        False,
    ),
    ("forward-fr", rf"{_DASHES}Message transféré{_DASHES}$|Début du message réexpédié", False),
    ("header-block-en", _block(_EN, "From"), False),
    ("header-block-de", _block(_DE, "Von"), False),
    ("header-block-fr", _block(_FR, "De"), False),
    ("wrote-en", rf"On\b{_DATE}{_LINE}\bwrote ?:[ \t]*$", False),
    ("wrote-en-wrapped", rf"On\b{_DATE}{_WRAP}\bwrote ?:[ \t]*$", True),
    ("schrieb-de", rf"Am\b{_DATE}{_LINE}\bschrieb\b[^\n]{{0,150}}:[ \t]*$", False),
    (
        "schrieb-de-wrapped",
        rf"Am\b{_DATE}(?=(?:[^\n]*\n){{0,2}}[^\n]*\bschrieb\b){_WRAP}:[ \t]*$",
        True,
    ),
    ("hat-geschrieben-de", rf"Am\b{_DATE}{_LINE}\bhat\b{_LINE}\bgeschrieben ?:[ \t]*$", False),
    ("schrieb-am-de", rf"[^\n]{{1,120}}\bschrieb am\b{_DATE}{_LINE}:[ \t]*$", False),
    ("wrote-on-en", rf"[^\n]{{1,120}}\bwrote on\b{_DATE}{_LINE}:[ \t]*$", False),
    ("a-ecrit-fr", rf"Le\b{_DATE}{_LINE}\ba écrit ?:[ \t]*$", False),
    ("a-ecrit-fr-wrapped", rf"Le\b{_DATE}{_WRAP}\ba écrit ?:[ \t]*$", True),
    ("zitat-von-de", r"(?:Zitat von|Quoting) [^\n]{1,120}:[ \t]*$", True),
    ("name-wrote", r"[\w.\"'-]+(?: [\w.\"'<>@-]+){0,3} (?:wrote|schrieb|a écrit) ?:[ \t]*$", True),
)
_CUTTING = ("original-message", "forward", "header-block")  # rules that always cut to the end

_COMPILED = tuple((name, re.compile(p, re.MULTILINE), needs) for name, p, needs in QUOTE_HEADERS)
# Only a line starting like this can start a header: most lines skip the table.
_MAY_START = re.compile(
    r"[ \t]*(?:-{3}|_{10}|\**(?:From|Sent|Date|Von|Gesendet|Datum|De|Envoyé)\b|On\b|Am\b|Le\b"
    r"|Begin\b|Anfang\b|Début\b|Zitat\b|Quoting\b)"
)
_ATTRIBUTION_WORD = re.compile(r"\b(?:wrote|schrieb|écrit)\b")
_QUOTE_MARK = re.compile(r"[ \t]{0,3}>")
_WINDOW = 6  # lines a header may span, including the "____" line


@dataclass(frozen=True)
class _Header:
    rule: str
    lines: int  # how many lines the header itself spans
    cuts: bool  # True: everything from here on is quoted


def _next_text(lines: Sequence[str], start: int) -> str:
    return next((line for line in lines[start:] if line.strip()), "")


def _header_at(lines: Sequence[str], index: int) -> _Header | None:
    """The first QUOTE_HEADERS rule matching at `lines[index]`, if any."""
    if not (_MAY_START.match(lines[index]) or _ATTRIBUTION_WORD.search(lines[index])):
        return None
    window = "\n".join(lines[index : index + _WINDOW])
    for name, pattern, needs_quote_after in _COMPILED:
        found = pattern.match(window)
        if found is None:
            continue
        span = found.group().count("\n") + 1
        quote_follows = bool(_QUOTE_MARK.match(_next_text(lines, index + span)))
        if needs_quote_after and not quote_follows:
            continue
        attribution_only = quote_follows and not name.startswith(_CUTTING)
        return _Header(name, span, cuts=not attribution_only)
    return None


# --- signatures ---------------------------------------------------------------------------

_GREETING_DE = (
    r"(?:(?:Danke|Vielen Dank) (?:und|&) )?(?:(?:Mit )?(?:freundliche[mn]?|viele[n]?|beste[n]?"
    r"|liebe[n]?|herzliche[n]?|schöne[n]?|sonnige[n]?|kollegiale[n]?) )?"
    r"(?:Grüßen|Grüße|Grüssen|Grüsse|Gruessen|Gruesse|Gruß|Gruss)(?: aus \w+)?"
    r"|MfG|LG|VG|BG"
)
_GREETING_EN = (
    r"(?:(?:Best|Kind|Warm|Warmest|With best|With kind|(?:Many )?thanks and(?: best)?) )?"
    r"regards|Best wishes|All the best|Cheers|Sincerely|Yours sincerely|Yours faithfully|"
    r"Yours truly|Best|Greetings|Cordialement|Bien à vous|Salutations"
)
_GREETINGS = rf"(?i:{_GREETING_DE}|{_GREETING_EN})"
_THANKS = (
    r"(?i:Thanks|Thank you|Many thanks|Thanks again|Thanks in advance|Thx|Danke|Danke schön|"
    r"Dankeschön|Vielen Dank|Besten Dank|Herzlichen Dank|(?:Vielen )?Dank im Voraus|"
    r"Merci(?: beaucoup)?)"
)
# a name as people sign: capitalised words (case-sensitive on purpose), particles, initials
_WORD = r"(?:[A-ZÄÖÜÉ*_][\w.'*_-]*|von|van|de|der|di)"
_NAME = rf"{_WORD}(?: {_WORD}){{0,3}}"
_GREETING = re.compile(rf"{_GREETINGS}(?: / {_GREETINGS})?[ \t]*[,.!]?(?:[ \t]+{_NAME})?[ \t]*")
_THANKS_LINE = re.compile(rf"{_THANKS}[ \t]*[,.!]*(?P<name>[ \t]+{_NAME})?[ \t]*")
_NAME_LINE = re.compile(rf"[ \t]*{_NAME}[ \t]*[,.]?[ \t]*")

_MOBILE = re.compile(
    r"[ \t]*(?:Sent from my \S.{0,60}|Sent (?:from|with|via) (?:Outlook|Yahoo|Proton|Mail|Gmail"
    r"|BlueMail|Spark|AOL|Samsung)\b.{0,60}|Get Outlook for \S.{0,60}"
    r"|Gesendet (?:von|mit|vom|über) .{1,60}|Von meine[mr] .{1,60} gesendet\.?.{0,40}"
    r"|Von Outlook für .{1,60}|Outlook für (?:iOS|Android) beziehen.{0,40}"
    r"|Diese Nachricht wurde von meinem .{1,60} gesendet\.?|Envoyé (?:de|depuis) mon .{1,60})"
)
_MOBILE_MAX_WORDS = 8
_DASH_DELIMITER = re.compile(r"--[ \t]?")
_CONTACT = re.compile(
    r"@|www\.|https?://|\+?\d[\d ()/.-]{6,}|\b(?:Tel|Telefon|Fax|Mobil|Mobile|Phone|Mob|E-Mail"
    r"|HRB|HRA|PR|Amtsgericht|Registergericht|Sitz|Geschäftsführ\w*|USt|VAT|IBAN|BIC|Managing)\b",
    re.IGNORECASE,
)
_DISCLAIMER = re.compile(
    r"[ \t]*(?:Diese (?:E-?Mail|Nachricht)|This (?:e-?mail|message)|CONFIDENTIAL|Vertraulich"
    r"|Hinweis:|Disclaimer|Pflichtangaben|The information (?:in|contained))",
    re.IGNORECASE,
)
_POSTSCRIPT = re.compile(r"[ \t]*P\.?[ \t]?S\b", re.IGNORECASE)
_MAX_SIGNATURE_LINES = 20


def _is_content(line: str) -> bool:
    """A PS, a question or a lead-in to more text: never part of a signature."""
    return bool(_POSTSCRIPT.match(line)) or line.rstrip().endswith(("?", ":"))


def _short(line: str) -> bool:
    return len(line.split()) <= 6 and len(line) <= 60


def _first_text(lines: Sequence[str]) -> str:
    return next((line for line in lines if line.strip()), "")


def _signature_lines(lines: Sequence[str]) -> bool:
    """Lines after a sign-off: blank, short, contact or legal lines, or a closing disclaimer."""
    if sum(1 for line in lines if line.strip()) > _MAX_SIGNATURE_LINES:
        return False
    for line in lines:
        if _DISCLAIMER.match(line):
            return True  # a closing disclaimer: the rest is legal text
        if _is_content(line) and not _CONTACT.search(line):
            return False
        if line.strip() and not (_short(line) or _CONTACT.search(line)):
            return False
    return True


def _is_sign_off(lines: Sequence[str], index: int) -> bool:
    line, after = lines[index], lines[index + 1 :]
    if not any(text.strip() for text in lines[:index]):
        return False  # nothing before it: it is all the sender wrote, keep it
    if _GREETING.fullmatch(line):
        name = _first_text(after)
        return _signature_lines(after) and (not name or _short(name))
    thanks = _THANKS_LINE.fullmatch(line)
    if thanks is None or (index and lines[index - 1].strip()):
        return False  # not a thanks, or one that ends a paragraph of content
    named = thanks.group("name") or _NAME_LINE.fullmatch(_first_text(after))
    return bool(named) and _signature_lines(after)


def _is_mobile(line: str) -> bool:
    """A client's one-line advert; a longer line or one with a comma is prose about a device."""
    words = line.split("<", 1)[0]
    return (
        len(words.split()) <= _MOBILE_MAX_WORDS
        and "," not in words
        and bool(_MOBILE.fullmatch(line))
    )


def _cut_dash_delimiter(lines: Sequence[str]) -> int | None:
    for index, line in enumerate(lines):
        bare = _DASH_DELIMITER.fullmatch(line) and _signature_lines(lines[index + 1 :])
        if line == "-- " or bare:
            return index
    return None


def _cut_mobile(lines: Sequence[str]) -> int | None:
    last = max((index for index, line in enumerate(lines) if line.strip()), default=None)
    return last if last is not None and _is_mobile(lines[last]) else None


def _cut_sign_off(lines: Sequence[str]) -> int | None:
    """The sign-off nearest the end whose following lines all look like a signature."""
    start = max(0, len(lines) - _MAX_SIGNATURE_LINES - 6)
    for index in range(len(lines) - 1, start - 1, -1):
        if lines[index].strip() and _is_sign_off(lines, index):
            return index
    return None


# (name, finder): each looks at the visible lines above the previous finder's cut; the last
# one that finds something names where the signature starts.
SIGNATURE_RULES: tuple[tuple[str, Callable[[Sequence[str]], int | None]], ...] = (
    ("dash-delimiter", _cut_dash_delimiter),
    ("mobile", _cut_mobile),
    ("sign-off", _cut_sign_off),
)


def _signature_start(lines: list[str]) -> tuple[int, str]:
    cut, rule = len(lines), ""
    for name, finder in SIGNATURE_RULES:
        found = finder(lines[:cut])
        if found is not None:
            cut, rule = found, name
    return cut, rule


# --- the split ----------------------------------------------------------------------------


def _strip_blank(lines: Sequence[str]) -> list[str]:
    """Without leading and trailing blank lines."""
    texts = [index for index, line in enumerate(lines) if line.strip()]
    return list(lines[texts[0] : texts[-1] + 1]) if texts else []


def _flatten(blocks: Sequence[Sequence[str]]) -> list[str]:
    """The non-empty blocks without surrounding blank lines, one blank line between them."""
    out: list[str] = []
    for block in filter(None, map(_strip_blank, blocks)):
        out.extend([""] * bool(out) + block)
    return out


@dataclass
class _Scan:
    """Visible segments (split where a quote was removed) and quoted blocks, in order."""

    visible: list[list[str]]
    quoted: list[list[str]]
    rule: str = ""

    def quote(self, lines: Sequence[str], rule: str) -> None:
        if self.quoted and not any(line.strip() for line in self.visible[-1]):
            self.quoted[-1].extend(self.visible[-1])  # blank lines inside one quote stay in it
            self.visible[-1].clear()
        else:
            self.quoted.append([])
            self.visible.append([])
        self.quoted[-1].extend(lines)
        self.rule = self.rule or rule

    def show(self, line: str) -> None:
        self.visible[-1].append(line)


def _scan(lines: list[str]) -> _Scan:
    scan = _Scan([[]], [])
    index = 0
    while index < len(lines):
        header = _header_at(lines, index)
        if header is not None:
            span = len(lines) - index if header.cuts else header.lines
            scan.quote(lines[index : index + span], header.rule)
            index += span
            continue
        if _QUOTE_MARK.match(lines[index]):
            scan.quote(lines[index : index + 1], "quote-marks")
        else:
            scan.show(lines[index])
        index += 1
    return scan


def split_reply(text: str) -> ReplyParts:
    """Separate what the sender wrote now from quoted history and the signature."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    scan = _scan(lines)
    visible = _flatten(scan.visible)
    cut, signature_rule = _signature_start(visible)
    return ReplyParts(
        visible="\n".join(line.rstrip() for line in visible[:cut]).strip("\n"),
        quoted="\n".join(_flatten(scan.quoted)),
        signature="\n".join(_strip_blank(visible[cut:])),
        quote_rule=scan.rule,
        signature_rule=signature_rule if cut < len(visible) else "",
    )
