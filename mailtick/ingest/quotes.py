"""Split a plain-text reply into visible text, quoted history and signature. Touches nothing.

Policy (tables below, first match wins, each rule named so tests and logs can cite it):

* Quote headers (`QUOTE_HEADERS`): Outlook "-----Original Message-----" / "-----Ursprüngliche
  Nachricht-----", Outlook/new-Outlook/GMX header blocks ("From:/Sent:/To:/Subject:",
  "Von:/Gesendet:/An:/Betreff:", with or without the "____" line), forward markers, and the
  attribution lines "On … wrote:", "Am … schrieb …:", "… schrieb am …:", "Le … a écrit :",
  also wrapped over two lines. A block header cuts everything after it. An attribution
  followed by `>` lines only marks its own lines as quoted, so inline answers between the
  `>` lines stay visible; a dated attribution followed by unquoted text cuts the rest.
* Forwards count as quoted: the forwarded mail is not what the sender wrote now. `quote_rule`
  starts with "forward-" then, so a caller can show it anyway. The full mail is kept elsewhere.
* `>` lines are quoted wherever they are.
* Signature (`visible`'s tail only): a "-- " (or bare "--") line; a mobile "Sent from my
  iPhone" line; a sign-off block ("Viele Grüße\\nJörg\\n<company lines>") — the sign-off line
  itself goes to `signature` too. Conservative: a block holding a question or a "PS" is
  content, and a thanks ("Danke!", "Thanks,") counts only in its own paragraph with a name.
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
    quote_rule: str = ""  # the QUOTE_HEADERS rule that matched first ("quote-marks" for `>`)
    signature_rule: str = ""  # the SIGNATURE_RULES rule that started the signature


# --- quote headers ------------------------------------------------------------------------

_DATE = r"(?=[^\n]*?(?:\d{1,2}:\d{2}|\b(?:19|20)\d{2}\b|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b))"
_LINE = r"[^\n]{0,200}?"
_WRAP = r"[^\n]{0,200}?\n[^\n]{0,120}?"  # a second line of a wrapped attribution


def _block(names: str, first: str) -> str:
    """≥3 consecutive header lines `Name: value` with `first` (From/Von) among the first three,
    optionally after Outlook's "____" separator line."""
    line = rf"[ \t]*\**(?:{names})\**:\**[^\n]*"
    sep = r"(?:[ \t]*_{10,}[ \t]*\n(?:[ \t]*\n)?)?"
    return rf"{sep}(?=(?:{line}\n){{0,2}}[ \t]*\**(?:{first})\**:){line}\n{line}\n{line}"


_EN = "From|Sent|Date|To|Cc|Subject|Reply-To"
_DE = "Von|Gesendet|Datum|An|Cc|Betreff|Antwort an|Kopie"
_FR = "De|Envoyé|Date|À|A|Cc|Objet"

# (name, pattern matched at a line start against that line and the next ones, needs `>` after)
QUOTE_HEADERS: tuple[tuple[str, str, bool], ...] = (
    ("original-message-en", r"[ \t]*-{3,}[ \t]*(?i:Original Message)[ \t]*-{3,}[ \t]*$", False),
    (
        "original-message-de",
        r"[ \t]*-{3,}[ \t]*(?:Ursprüngliche Nachricht|Original-?Nachricht)[ \t]*-{3,}[ \t]*$",
        False,
    ),
    ("forward-en", r"[ \t]*(?:-{3,}[ \t]*(?i:Forwarded message)[ \t]*-{3,}|Begin forwarded message:)", False),
    (
        "forward-de",
        r"[ \t]*(?:-{3,}[ \t]*Weitergeleitete (?:Nachricht|E-Mail)[ \t]*-{3,}"
        r"|Anfang der weitergeleiteten (?:Nachricht|E-Mail):)",
        False,
    ),
    ("forward-fr", r"[ \t]*(?:-{3,}[ \t]*Message transféré[ \t]*-{3,}|Début du message réexpédié)", False),
    ("header-block-en", _block(_EN, "From"), False),
    ("header-block-de", _block(_DE, "Von"), False),
    ("header-block-fr", _block(_FR, "De"), False),
    ("wrote-en", rf"On\b{_DATE}{_LINE}\bwrote[ \t]?:[ \t]*$", False),
    ("wrote-en-wrapped", rf"On\b{_DATE}{_WRAP}\bwrote[ \t]?:[ \t]*$", True),
    ("schrieb-de", rf"Am\b{_DATE}{_LINE}\bschrieb\b[^\n]{{0,150}}:[ \t]*$", False),
    ("schrieb-de-wrapped", rf"Am\b{_DATE}{_WRAP}:[ \t]*$", True),
    ("hat-geschrieben-de", rf"Am\b{_DATE}{_LINE}\bhat\b{_LINE}\bgeschrieben[ \t]?:[ \t]*$", False),
    ("schrieb-am-de", rf"[^\n]{{1,120}}\bschrieb am\b{_DATE}{_LINE}:[ \t]*$", False),
    ("wrote-on-en", rf"[^\n]{{1,120}}\bwrote on\b{_DATE}{_LINE}:[ \t]*$", False),
    ("a-ecrit-fr", rf"Le\b{_DATE}{_LINE}\ba écrit[ \t]?:[ \t]*$", False),
    ("a-ecrit-fr-wrapped", rf"Le\b{_DATE}{_WRAP}\ba écrit[ \t]?:[ \t]*$", True),
    ("zitat-von-de", r"(?:Zitat von|Quoting) [^\n]{1,120}:[ \t]*$", True),
    ("name-wrote", r"[\w.\"'-]+(?: [\w.\"'<>@-]+){0,3} (?:wrote|schrieb|a écrit)[ \t]?:[ \t]*$", True),
)

_COMPILED = tuple((name, re.compile(p, re.MULTILINE), needs) for name, p, needs in QUOTE_HEADERS)
# Only lines starting like this can start a header: skips the table for most lines.
_MAY_START = re.compile(
    r"[ \t]*(?:-{3}|_{10}|\**(?:From|Sent|Date|Von|Gesendet|Datum|De|Envoyé)\b|On\b|Am\b|Le\b"
    r"|Begin\b|Anfang\b|Début\b|Zitat\b|Quoting\b|[^\n]*(?:wrote|schrieb|écrit)\b)"
)
_QUOTE_MARK = re.compile(r"[ \t]{0,3}>")
_WINDOW = 6  # lines a header may span, including the "____" line


@dataclass(frozen=True)
class _Header:
    rule: str
    lines: int  # how many lines the header itself spans
    cuts: bool  # True: everything from here on is quoted


def _next_text(lines: Sequence[str], start: int) -> str:
    for line in lines[start:]:
        if line.strip():
            return line
    return ""


def _header_at(lines: Sequence[str], index: int) -> _Header | None:
    if not _MAY_START.match(lines[index]):
        return None
    window = "\n".join(lines[index : index + _WINDOW])
    for name, pattern, needs_quote_after in _COMPILED:
        found = pattern.match(window)
        if found is None:
            continue
        span = found.group().count("\n") + 1
        followed_by_quote = bool(_QUOTE_MARK.match(_next_text(lines, index + span)))
        if needs_quote_after and not followed_by_quote:
            continue
        is_attribution = needs_quote_after or not name.startswith(_CUTTING_PREFIXES)
        return _Header(name, span, cuts=not (is_attribution and followed_by_quote))
    return None


_CUTTING_PREFIXES = ("original-message", "forward", "header-block")


# --- signatures ---------------------------------------------------------------------------

_GREETING_DE = (
    r"(?:(?:Danke|Vielen Dank)(?: und| &) )?(?:(?:Mit )?(?:freundliche[mn]?|viele[n]?|beste[n]?"
    r"|liebe[n]?|herzliche[n]?|schöne[n]?|sonnige[n]?|kollegiale[n]?) )?"
    r"(?:Grüßen|Grüße|Grüssen|Grüsse|Gruessen|Gruesse|Gruß|Gruss)(?: aus \w+)?"
    r"|MfG|LG|VG|BG"
)
_GREETING_EN = (
    r"(?:(?:Best|Kind|Warm|Warmest|Many thanks and(?: best)?|Thanks and(?: best)?|With best|"
    r"With kind) )?regards|Best wishes|All the best|Cheers|Sincerely|Yours sincerely|"
    r"Yours faithfully|Yours truly|Best|Greetings|Cordialement|Bien à vous|Salutations"
)
_THANKS = (
    r"Thanks|Thank you|Many thanks|Thanks again|Thanks in advance|Thx|"
    r"Danke|Danke schön|Dankeschön|Vielen Dank|Besten Dank|Herzlichen Dank|"
    r"(?:Vielen )?Dank im Voraus|Merci(?: beaucoup)?"
)
_NAME = r"(?:[A-ZÄÖÜÉ*_][\w.'*_-]*|von|van|de|der|di)(?: (?:[A-ZÄÖÜÉ*_][\w.'*_-]*|von|van|de|der|di)){0,3}"
_GREETING = re.compile(
    rf"(?:{_GREETING_DE}|{_GREETING_EN})(?: / (?:{_GREETING_DE}|{_GREETING_EN}))?"
    rf"[ \t]*[,.!]?(?:[ \t]+{_NAME})?[ \t]*",
    re.IGNORECASE,
)
_THANKS_LINE = re.compile(rf"(?:{_THANKS})[ \t]*[,.!]*(?P<name>[ \t]+{_NAME})?[ \t]*", re.IGNORECASE)
_NAME_LINE = re.compile(rf"[ \t]*{_NAME}[ \t]*[,.]?[ \t]*")

_MOBILE = re.compile(
    r"[ \t]*(?:Sent from my \S.{0,60}|Sent (?:from|with|via) (?:Outlook|Yahoo|Proton|Mail|Gmail|"
    r"BlueMail|Spark|AOL|Samsung|my)\b.{0,60}|Get Outlook for \S.{0,60}|"
    r"Gesendet (?:von|mit|vom|über) .{1,60}|Von meine[mr] .{1,60} gesendet\.?.{0,40}|"
    r"Von Outlook für .{1,60}|Outlook für (?:iOS|Android) beziehen.{0,40}|"
    r"Diese Nachricht wurde von meinem .{1,60} gesendet\.?|Envoyé (?:de|depuis) mon .{1,60})"
)
_DASH_DELIMITER = re.compile(r"--[ \t]?")
_CONTACT = re.compile(
    r"@|www\.|https?://|\+?\d[\d ()/.-]{6,}|\b(?:Tel|Telefon|Fax|Mobil|Mobile|Phone|Mob|E-Mail|"
    r"HRB|HRA|PR|Amtsgericht|Registergericht|Sitz|Geschäftsführ\w*|USt|VAT|IBAN|BIC|Managing)\b",
    re.IGNORECASE,
)
_DISCLAIMER = re.compile(
    r"[ \t]*(?:Diese (?:E-?Mail|Nachricht)|This (?:e-?mail|message)|CONFIDENTIAL|Vertraulich|"
    r"Hinweis:|Disclaimer|Pflichtangaben|The information (?:in|contained))",
    re.IGNORECASE,
)
_CONTENT = re.compile(r"[ \t]*P\.?\s?S\b|.*[?:][ \t]*$", re.IGNORECASE)
_MAX_SIGNATURE_LINES = 20


def _short(line: str) -> bool:
    return len(line.split()) <= 6 and len(line) <= 60


def _signature_lines(lines: Sequence[str]) -> bool:
    """Lines after a sign-off: blank, short, contact or legal lines, or a closing disclaimer."""
    if sum(1 for line in lines if line.strip()) > _MAX_SIGNATURE_LINES:
        return False
    for index, line in enumerate(lines):
        if _DISCLAIMER.match(line):
            return True
        if _CONTENT.match(line) and not _CONTACT.search(line):
            return False
        if line.strip() and not (_short(line) or _CONTACT.search(line)):
            return False
        del index
    return True


def _first_text(lines: Sequence[str]) -> str:
    return next((line for line in lines if line.strip()), "")


def _starts_paragraph(lines: Sequence[str], index: int) -> bool:
    return index == 0 or not lines[index - 1].strip()


def _is_sign_off(lines: Sequence[str], index: int) -> bool:
    line, after = lines[index], lines[index + 1 :]
    if not any(text.strip() for text in lines[:index]):
        return False  # nothing before it: keep it, it is all the sender wrote
    if _GREETING.fullmatch(line):
        return _signature_lines(after) and (not _first_text(after) or _short(_first_text(after)))
    thanks = _THANKS_LINE.fullmatch(line)
    if thanks is None or not _starts_paragraph(lines, index):
        return False
    name_follows = thanks.group("name") or _NAME_LINE.fullmatch(_first_text(after))
    return bool(name_follows) and _signature_lines(after)


def _cut_dash_delimiter(lines: Sequence[str]) -> int | None:
    for index, line in enumerate(lines):
        if line == "-- " or (_DASH_DELIMITER.fullmatch(line) and _signature_lines(lines[index + 1 :])):
            return index
    return None


def _cut_mobile(lines: Sequence[str]) -> int | None:
    texts = [index for index, line in enumerate(lines) if line.strip()]
    if texts and _MOBILE.fullmatch(lines[texts[-1]]):
        return texts[-1]
    return None


def _cut_sign_off(lines: Sequence[str]) -> int | None:
    start = max(0, len(lines) - _MAX_SIGNATURE_LINES - 6)
    for index in range(len(lines) - 1, start - 1, -1):
        if lines[index].strip() and _is_sign_off(lines, index):
            return index
    return None


# (name, finder): each looks at the visible lines before the previous cut; the last one that
# finds something names where the signature starts.
SIGNATURE_RULES: tuple[tuple[str, Callable[[Sequence[str]], int | None]], ...] = (
    ("dash-delimiter", _cut_dash_delimiter),
    ("mobile", _cut_mobile),
    ("sign-off", _cut_sign_off),
)


def _split_signature(lines: list[str]) -> tuple[int, str]:
    cut, rule = len(lines), ""
    for name, finder in SIGNATURE_RULES:
        found = finder(_trim(lines[:cut]))
        if found is not None:
            cut, rule = found, name
    return cut, rule


# --- the split ----------------------------------------------------------------------------


def _trim(lines: list[str]) -> list[str]:
    """Without trailing blank lines (leading ones are kept so indexes stay valid)."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _join(lines: Sequence[str]) -> str:
    return "\n".join(lines).strip("\n")


def _strip_blank(lines: Sequence[str]) -> list[str]:
    """Without leading and trailing blank lines."""
    texts = [index for index, line in enumerate(lines) if line.strip()]
    return list(lines[texts[0] : texts[-1] + 1]) if texts else []


def _flatten(blocks: Sequence[Sequence[str]]) -> list[str]:
    """Non-empty blocks, each without surrounding blank lines, one blank line between them."""
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
        elif _QUOTE_MARK.match(lines[index]):
            scan.quote([lines[index]], "quote-marks")
            index += 1
        else:
            scan.show(lines[index])
            index += 1
    return scan


def split_reply(text: str) -> ReplyParts:
    """Separate what the sender wrote now from quoted history and the signature."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    scan = _scan(lines)
    visible = _flatten(scan.visible)
    cut, signature_rule = _split_signature(visible)
    return ReplyParts(
        visible=_join([line.rstrip() for line in visible[:cut]]),
        quoted=_join(_flatten(scan.quoted)),
        signature=_join(visible[cut:]),
        quote_rule=scan.rule,
        signature_rule=signature_rule,
    )
