"""Stage `route`: the queue and priority of a new ticket, by the [[routing]] table. Touches nothing.

The rules run in order. Every match key a rule gives must hold (to, language, words,
from_domains, mailbox); the first matching rule that names a queue decides the queue,
the first matching rule that names a priority decides the priority. So an urgency rule
("Server down", "Ausfall" -> urgent) placed before the department rules raises the
priority whatever the queue. No rule: queue "default", priority "normal". The Route
names the rules that decided, for the ticket's events, the log and `mailtick show`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from mailtick.config import RoutingRule
from mailtick.identify import recipients
from mailtick.ingest.quotes import split_reply
from mailtick.mail import ParsedMail
from mailtick.threading.lexicon import fold

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = "normal"


@dataclass(frozen=True)
class Route:
    queue: str = DEFAULT_QUEUE
    priority: str = DEFAULT_PRIORITY
    queue_rule: str = ""  # the rule that chose the queue ("": none matched)
    priority_rule: str = ""

    def why(self) -> str:
        """For the ticket's "routed" event: `queue billing (rule billing-mail), priority urgent
        (rule outage)`."""
        queue = f"queue {self.queue}" + (f" (rule {self.queue_rule})" if self.queue_rule else "")
        priority = f"priority {self.priority}" + (
            f" (rule {self.priority_rule})" if self.priority_rule else ""
        )
        return f"{queue}, {priority}"


def route(mail: ParsedMail, mailbox: str, rules: Sequence[RoutingRule]) -> Route:
    """Where a new ticket opened by `mail` (fetched from `mailbox`, "" if not from IMAP) goes."""
    found = Route()
    for n, rule in enumerate(rules):
        if not matches(rule, mail, mailbox):
            continue
        name = rule.name or f"routing[{n}]"
        if rule.queue and not found.queue_rule:
            found = Route(rule.queue, found.priority, name, found.priority_rule)
        if rule.priority and not found.priority_rule:
            found = Route(found.queue, rule.priority, found.queue_rule, name)
        if found.queue_rule and found.priority_rule:
            break
    return found


def matches(rule: RoutingRule, mail: ParsedMail, mailbox: str) -> bool:
    """Every match key the rule gives holds for the mail."""
    if rule.to and not set(rule.to) & set(recipients(mail)):
        return False
    if rule.language and mail.language != rule.language:
        return False
    if rule.mailbox and rule.mailbox != mailbox:
        return False
    if rule.from_domains and not _from_domain(mail.from_addr, rule.from_domains):
        return False
    return not rule.words or _words(rule.words).search(_searchable(mail)) is not None


def _from_domain(addr: str, domains: Sequence[str]) -> bool:
    domain = addr.rpartition("@")[2].lower()
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _searchable(mail: ParsedMail) -> str:
    """The subject and the visible text (quotes and signature stripped), folded: lower
    case, umlauts spelled out, so "AUSFALL" and "Ausfall" and "Kündigung"/"Kuendigung" match."""
    return fold(f"{mail.subject}\n{split_reply(mail.text).visible}")


@lru_cache(maxsize=256)
def _words(words: tuple[str, ...]) -> re.Pattern[str]:
    """Any of the words or phrases, whole words only, spaces matching any whitespace."""
    parts = [r"\s+".join(re.escape(w) for w in fold(phrase).split()) for phrase in words]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")
