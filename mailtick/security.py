"""Signed agent reply addresses and trusted DMARC results. Touches nothing: no I/O, no database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

TokenKind = Literal["r", "n"]  # r: public reply to the customer, n: internal note

DOMAIN_SEPARATION = b"mailtick-reply-token-v1"
MAC_BYTES = 16  # 128 bits of HMAC-SHA256
MIN_SECRET_BYTES = 32
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
# A token "issued" up to two days ahead is fine: time zones differ, and a clock that ran
# up to 48 h fast and was corrected must not void every token it issued meanwhile.
FUTURE_SLACK_DAYS = 2
EPOCH = date(1970, 1, 1)
_MAX_DAY = (date.max - EPOCH).days

_KINDS: dict[str, TokenKind] = {"r": "r", "n": "n"}
_TICKET = re.compile(r"[0-9]{1,20}")
# kind - ticket - day (no leading zeros: one spelling per token) - 26 base32 characters
_TAG = re.compile(r"([rn])-([0-9]{1,20})-(0|[1-9][0-9]{0,6})-([a-z2-7]{26})")
_TOKEN_SHAPED = re.compile(r"[rn]-")  # other plus-tags (support+billing@...) are not tokens


@dataclass(frozen=True)
class ReplyToken:
    kind: TokenKind
    ticket: str  # ticket number, digits
    agent: str  # the agent's name as configured (e.g. "dana")
    day: int  # issue day: days since 1970-01-01 UTC


@dataclass(frozen=True)
class TokenCheck:
    token: ReplyToken | None  # the valid token found, or None
    problem: str  # "" when valid or when no token was present at all; else a reason for the log
    present: bool  # a token-shaped plus-address was there (valid or not)

    @property
    def reason(self) -> str:
        """Why a mail claiming an agent's From is refused: `problem`, or "no reply token"."""
        if self.token is not None:
            return ""
        return self.problem or "no reply token"


def mac(secret: bytes, kind: TokenKind, ticket: str, agent: str, day: int) -> str:
    """HMAC-SHA256 over length-prefixed fields, 128 bits, base32 lower-case without padding."""
    fields = (kind, ticket, agent, str(day))
    message = DOMAIN_SEPARATION + b"\x00" + b"".join(_length_prefixed(f) for f in fields)
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def _length_prefixed(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def generate_secret() -> bytes:
    """32 random bytes for `mailtick init`."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


class TokenSigner:
    """Issues and checks the reply-path plus-addresses of agent notifications."""

    def __init__(self, secret: bytes, valid_days: int = 90) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the reply-token secret needs {MIN_SECRET_BYTES} bytes or more")
        if valid_days < 1:
            raise ValueError("valid_days must be at least 1")
        self._secret = bytes(secret)
        self.valid_days = valid_days

    def __repr__(self) -> str:
        return f"TokenSigner(secret=<{len(self._secret)} bytes>, valid_days={self.valid_days})"

    def address(
        self,
        support_addr: str,
        kind: TokenKind,
        ticket: str,
        agent: str,
        today: date | None = None,
    ) -> str:
        """support+r-10019-20415-<mac>@example.com; the agent is in the MAC, not the address."""
        local, domain = _split_support(support_addr)
        if kind not in _KINDS or _TICKET.fullmatch(ticket) is None:
            raise ValueError(f"bad reply token: kind {kind!r}, ticket {ticket!r}")
        day = _day_number(today)
        tagged = f"{local}+{kind}-{ticket}-{day}-{mac(self._secret, kind, ticket, agent, day)}"
        if len(tagged) > MAX_LOCAL_PART:
            raise ValueError(f"{tagged!r} is longer than {MAX_LOCAL_PART} characters")
        return f"{tagged}@{domain}"

    def verify(
        self,
        recipients: Iterable[str],
        support_addr: str,
        agents: Sequence[str],
        today: date | None = None,
    ) -> TokenCheck:
        """The one valid token among the recipients' plus-addresses of `support_addr`.

        Each distinct tag is tried against every agent (no early exit). Several tags are
        accepted only when all are valid and name the same kind, ticket and agent.
        """
        local, domain = _split_support(support_addr)
        tags = _token_tags(recipients, local, domain)
        if not tags:
            return TokenCheck(None, "", present=False)
        day = _day_number(today)
        return _combine([self._check_tag(tag, agents, day) for tag in tags])

    def _check_tag(self, tag: str, agents: Sequence[str], today: int) -> TokenCheck:
        match = _TAG.fullmatch(tag)
        if match is None:
            return TokenCheck(None, "malformed token", present=True)
        kind, ticket, day = _KINDS[match[1]], match[2], int(match[3])
        signers = self._signers(kind, ticket, day, match[4], agents)
        if len(signers) != 1:
            return TokenCheck(None, "tampered token", present=True)
        problem = _age_problem(day, today, self.valid_days)
        if problem:
            return TokenCheck(None, problem, present=True)
        return TokenCheck(ReplyToken(kind, ticket, signers[0], day), "", present=True)

    def _signers(
        self, kind: TokenKind, ticket: str, day: int, given: str, agents: Sequence[str]
    ) -> list[str]:
        """Every agent whose MAC matches; all are computed and compared in constant time."""
        given_bytes = given.encode("ascii")
        matches = [
            hmac.compare_digest(mac(self._secret, kind, ticket, agent, day).encode(), given_bytes)
            for agent in agents
        ]
        return list(dict.fromkeys(agent for agent, ok in zip(agents, matches, strict=True) if ok))


def _split_support(support_addr: str) -> tuple[str, str]:
    local, at, domain = support_addr.strip().rpartition("@")
    if not at or not local or not domain or "+" in local:
        raise ValueError(f"{support_addr!r} is not a plain support address")
    return local, domain


def _day_number(today: date | None) -> int:
    day = datetime.now(UTC).date() if today is None else today
    return day.toordinal() - EPOCH.toordinal()


def _token_tags(recipients: Iterable[str], local: str, domain: str) -> list[str]:
    """Distinct token-shaped tags (lower-cased) of plus-addresses of local@domain, in order."""
    prefix = f"{local.lower()}+"
    tags: dict[str, None] = {}
    for recipient in recipients:
        addr_local, at, addr_domain = recipient.strip().strip("<>").lower().rpartition("@")
        if not at or addr_domain != domain.lower() or not addr_local.startswith(prefix):
            continue
        tag = addr_local[len(prefix) :]
        if _TOKEN_SHAPED.match(tag):
            tags[tag] = None
    return list(tags)


def _age_problem(day: int, today: int, valid_days: int) -> str:
    if day > today + FUTURE_SLACK_DAYS:
        return f"token from the future (issued {_iso(day)})"
    if today > day + valid_days:
        return f"expired token (issued {_iso(day)})"
    return ""


def _iso(day: int) -> str:
    return (EPOCH + timedelta(days=day)).isoformat() if day <= _MAX_DAY else f"day {day}"


def _combine(checks: list[TokenCheck]) -> TokenCheck:
    if len(checks) == 1:
        return checks[0]
    tokens = [c.token for c in checks if c.token is not None]
    identities = {(t.kind, t.ticket, t.agent) for t in tokens}
    if len(tokens) == len(checks) and len(identities) == 1:
        return TokenCheck(max(tokens, key=lambda t: t.day), "", present=True)
    return TokenCheck(None, "several different tokens", present=True)


# --- Authentication-Results (RFC 8601) -------------------------------------------------------

# dmarc=permerror means the domain's DMARC record is broken: we cannot tell a forgery from a real
# mail, so for an agent's domain (which the team controls) it counts as a failure: fail closed.
# temperror (a DNS hiccup), none, pass, etc. do not.
DMARC_FAILURES = frozenset({"fail", "permerror"})

_PAIR = re.compile(
    r'"(?:[^"\\]|\\.)*"?'  # a quoted string on its own: skipped whole
    r'|(?P<key>[^\s="]+)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"?|[^\s"]*)'  # key=value
    r'|[^\s"]+',  # anything else
    re.DOTALL,
)


def dmarc_failed(authentication_results: Iterable[str], authserv_id: str, domain: str) -> bool:
    """True when a header from `authserv_id` (case-insensitive; "" trusts none) has dmarc=fail
    or dmarc=permerror for header.from=`domain` (or without header.from: it is the From domain),
    or any DMARC result for another header.from: the MTA read a different From than we did.

    Headers from any other authserv-id are ignored: senders can add their own. Our MTA must
    remove incoming headers that carry its id (RFC 8601 section 5). Never raises on garbage.
    """
    if isinstance(authentication_results, str):
        authentication_results = (authentication_results,)
    wanted_id = authserv_id.strip().casefold()
    if not wanted_id:
        return False
    wanted_domain = _domain(domain)
    return any(
        _header_fails(str(value), wanted_id, wanted_domain) for value in authentication_results
    )


def _header_fails(value: str, authserv_id: str, domain: str) -> bool:
    head, *results = _segments(value)
    words = head.split()
    if not words or _unquote(words[0]).casefold() != authserv_id:
        return False
    return any(_result_fails(result, domain) for result in results)


def _result_fails(resinfo: str, domain: str) -> bool:
    pairs = _pairs(resinfo)
    if not pairs:
        return False
    method, result = pairs[0]
    if method.split("/")[0] != "dmarc":
        return False
    from_domains = [_domain(value) for key, value in pairs[1:] if key == "header.from"]
    if from_domains and domain not in from_domains:
        return True  # a parser differential: the MTA judged another From domain
    return result in DMARC_FAILURES


def _pairs(resinfo: str) -> list[tuple[str, str]]:
    """key=value items (lower-cased, unquoted), quoted strings kept whole; "dmarc / 1" joined.

    Whitespace runs are collapsed first: no regex here ever rescans a long run (linear time).
    """
    text = re.sub(r" ?/ ?", "/", " ".join(resinfo.split()))
    return [
        (match["key"].casefold(), _unquote(match["value"]).casefold())
        for match in _PAIR.finditer(text)
        if match["key"] is not None
    ]


def _segments(value: str) -> list[str]:
    """Split at ";" outside quoted strings; comments (nested, escaped) become a space."""
    segments: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in value:
        keep = depth == 0
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth, keep = depth + 1, False
        elif char == ")":
            depth = max(depth - 1, 0)
            keep, char = depth == 0, " "
        elif depth:
            pass
        elif char == '"':
            quoted = True
        elif char == ";":
            segments.append("".join(current))
            current, keep = [], False
        if keep:
            current.append(char)
    segments.append("".join(current))
    return segments


def _unquote(text: str) -> str:
    if not text.startswith('"'):
        return text
    inner = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def _domain(value: str) -> str:
    return _unquote(value.strip()).strip().casefold().rpartition("@")[2].rstrip(".")
