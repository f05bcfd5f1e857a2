"""Demo: the scripted steps, what people do and what mailtick must then have done. Via session.

Each step is an action (a customer writes, an agent replies) and expectations checked in
order; an expectation returns what it confirmed (printed as ok) or raises DemoFailed.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from mailtick.demo.common import PREFIX, SUPPORT, SUPPORT_NAME, DemoFailed, tag
from mailtick.demo.people import (
    BEA,
    BERT,
    DANA,
    JOERG,
    NEW_WORD,
    Agent,
    Customer,
    agent_mail,
    customer_mail,
    quoted,
    references,
    reply_address,
    wrote,
)
from mailtick.demo.printer import short
from mailtick.demo.servers import Delivered, submit
from mailtick.demo.session import Demo

LANGUAGE_NAMES = {"de": "German", "en": "English"}

JOERG_SUBJECT = "Mails an unsere Kunden kommen nicht an"
JOERG_FIRST = """\
Hallo,

seit heute Morgen kommen unsere Mails an Kunden nicht mehr an. Fast jede Mail
kommt nach ein paar Minuten mit diesem Fehler zurück:

  550 5.7.1 <einkauf@partner.example>: Message rejected: SPF check failed for kunde.example

Betroffen sind alle Absender @kunde.example, auch Rechnungen und Angebote.
Gestern haben wir den DNS-Eintrag für unseren neuen Newsletter-Dienst geändert.
Können Sie sich das bitte dringend ansehen?

Viele Grüße
Jörg Beispiel
Beispiel & Söhne GmbH
"""
DANA_ANSWER = """\
Guten Tag Herr Beispiel,

Ihr SPF-Eintrag für kunde.example nennt seit der Änderung von gestern nur noch
den Newsletter-Dienst:

  v=spf1 include:spf.newsletter.example -all

Ihr eigener Mailserver fehlt darin, deshalb lehnen die Empfänger Ihre Mails ab.
Bitte ergänzen Sie ihn, zum Beispiel so:

  v=spf1 mx include:spf.newsletter.example -all

Sobald der Eintrag verteilt ist (meist innerhalb einer Stunde), kommen Ihre
Mails wieder an.

Viele Grüße
"""
JOERG_THANKS = """\
Hallo Frau Example,

danke, das war es! Wir haben den SPF-Eintrag ergänzt, seit einer halben Stunde
kommen unsere Mails bei den Kunden wieder an, auch die Rechnungen.

Viele Grüße
Jörg Beispiel
"""
JOERG_WIFI = """\
Hallo Frau Example,

Das WLAN im Büro geht seit heute früh nicht mehr. Kein Laptop und kein Telefon
verbindet sich, der Access Point im Flur blinkt nur noch orange.

Können Sie bitte jemanden vorbeischicken?

Viele Grüße
Jörg Beispiel
"""

BEA_INVOICE = """\
Guten Tag,

die Rechnung 2026-1187 wurde uns zweimal vom Konto abgebucht, am 2. und am 3. Dezember.
Bitte erstatten Sie einen der beiden Beträge.

Mit freundlichen Grüßen
Bea Muster
"""


Action = Callable[["Demo"], Awaitable[None]]
Expectation = Callable[["Demo"], Awaitable[str]]  # what was confirmed; raises DemoFailed


@dataclass(frozen=True)
class Step:
    title: str
    action: Action
    expect: tuple[Expectation, ...]  # checked in order, each printed as it holds


# -- actions: what the people in the script do --


def writes(customer: Customer, subject: str, body: str) -> Action:
    async def act(demo: Demo) -> None:
        await demo.deliver(customer, customer_mail(customer, subject, body))

    return act


def replies(customer: Customer, body: str, reply_word: str = "AW:") -> Action:
    """The customer hits "reply" on the last mail they got from support, quoting it."""

    async def act(demo: Demo) -> None:
        last = demo.last_mail_to(customer.addr)
        if last is None:
            raise DemoFailed(f"{customer.addr} has no mail to reply to")
        mail = customer_mail(
            customer,
            f"{reply_word} {last.subject}",
            body.rstrip() + "\n\n" + quoted(wrote(last.message), last.text),
            answers=(*references(last.message), str(last.message["Message-ID"])),
        )
        await demo.deliver(customer, mail)

    return act


def agent_replies(agent: Agent, ticket: str, body: str) -> Action:
    """The agent replies to their latest notification of the ticket, through SMTP."""

    async def act(demo: Demo) -> None:
        number = demo.numbers[ticket]
        notification = demo.last_mail_to(agent.addr, tag(number))
        if notification is None or not reply_address(notification):
            raise DemoFailed(f"{agent.addr} has no notification of {tag(number)} to reply to")
        rcpt = reply_address(notification)
        await submit(demo.smtp.port, agent_mail(agent, notification, body), agent.addr, rcpt)

    return act


# -- expectations: what mailtick must have done --


def acknowledged(customer: Customer, ticket: str) -> Expectation:
    """A new ticket for the customer and an acknowledgement in their language naming it."""

    async def expect(demo: Demo) -> str:
        ack = await demo.wait_for_mail(customer.addr, "", f"an acknowledgement to {customer.addr}")
        number = check_ack(ack, customer)
        detail = await demo.ticket(number)
        if detail is None or detail["requester"] != customer.addr:
            raise DemoFailed(f"the ack names {PREFIX}#{number}, but they have no such ticket")
        if detail["language"] != customer.language:
            raise DemoFailed(f"{PREFIX}#{number} got language {detail['language']!r}")
        demo.numbers[ticket] = number
        language = LANGUAGE_NAMES[customer.language]
        return f"new ticket {PREFIX}#{number}, acknowledged from {SUPPORT} in {language}"

    return expect


def check_ack(ack: Delivered, customer: Customer) -> str:
    """The ticket number an acknowledgement names; DemoFailed if it is not a proper one."""
    number = ticket_of(ack)
    language = ack.message["Content-Language"]  # optional header; checked when present
    problems = [
        *from_support(ack),
        f"no [{PREFIX}#...] in subject {ack.subject!r}" if number is None else "",
        "ticket number missing from the body" if number and number not in ack.text else "",
        f"Content-Language {language}, expected {customer.language}"
        if language is not None and language != customer.language
        else "",
    ]
    if number is None or any(problems):
        raise DemoFailed("unexpected acknowledgement: " + "; ".join(p for p in problems if p))
    return number


def from_support(mail: Delivered) -> list[str]:
    """Problems, if any, with a mail that mailtick should have sent as the support address."""
    sender = parseaddr(str(mail.message["From"]))[1]
    return [
        f"envelope sender {mail.mail_from!r}" if mail.mail_from != SUPPORT else "",
        f"From: {mail.message['From']}" if sender != SUPPORT else "",
    ]


def fail_on(problems: Sequence[str], what: str) -> None:
    found = [p for p in problems if p]
    if found:
        raise DemoFailed(f"{what}: " + "; ".join(found))


def notified(agent: Agent, ticket: str) -> Expectation:
    """The agent got a notification of the ticket whose Reply-To carries a reply token."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        note = await demo.wait_for_mail(agent.addr, tag(number), f"{agent.name}'s notification")
        reply_to = reply_address(note)
        token = re.fullmatch(rf"support\+r-{number}-\d+-[a-z2-7]+@example\.com", reply_to)
        fail_on([*from_support(note), "" if token else f"Reply-To {reply_to!r}"], "notification")
        drift = next((ln[3:] for ln in note.text.splitlines() if ln.startswith(">> ")), "")
        said = f"noting: {textwrap.shorten(drift, 70)}" if drift else f"Reply-To {short(reply_to)}"
        return f"{agent.name} notified of {tag(number)}, {said}"

    return expect


def relayed(agent: Agent, customer: Customer, ticket: str) -> Expectation:
    """The agent's answer reached the customer from the support address, not the agent's."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        answer = await demo.wait_for_mail(customer.addr, tag(number), f"{agent.name}'s answer")
        asked = demo.written[customer.key]
        fail_on(relay_problems(answer, agent, asked), "the relayed answer")
        detail = await demo.ticket(number) or {}
        state = detail.get("status"), detail.get("owner")
        if state != ("answered", agent.name):
            raise DemoFailed(f"{tag(number)}: status and owner {state} after the answer")
        display = f"{agent.display_name} via {SUPPORT_NAME}"
        return f'{customer.first_name} got it as "{display}" <{SUPPORT}>, no {agent.addr} in it'

    return expect


def relay_problems(answer: Delivered, agent: Agent, asked: EmailMessage) -> list[str]:
    display = f"{agent.display_name} via {SUPPORT_NAME}"
    name = parseaddr(str(answer.message["From"]))[0]
    threads = answer.message["In-Reply-To"] == asked["Message-ID"]
    return [
        *from_support(answer),
        f"From name {name!r}, expected {display!r}" if name != display else "",
        f"{agent.addr} in the customer's copy" if agent.addr.encode() in answer.raw else "",
        "the notification quoted" if "Antworten Sie auf diese Mail" in answer.text else "",
        "" if threads else "not In-Reply-To the customer's mail",
    ]


def on_topic(customer: Customer, ticket: str) -> Expectation:
    """The customer's last mail joined the ticket and was judged to be on its topic."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        entry = await demo.stored(number, demo.written[customer.key])
        drift = entry["drift"] or {}
        if drift.get("action") != "none":
            raise DemoFailed(f"topic-drift decision {drift} on an on-topic reply")
        return (
            f"threaded into {tag(number)} by {entry['thread_rule']}; same topic "
            f"(drift score {drift['score']:.2f})"
        )

    return expect


def nothing_to(customer: Customer) -> Expectation:
    """Once the outbox is empty, no mail since the step began went to the customer."""

    async def expect(demo: Demo) -> str:
        await demo.outbox_empty()
        extra = demo.new_mail_to(customer.addr)
        if extra is not None:
            raise DemoFailed(f"unexpected mail to {customer.addr}: {extra.subject}")
        return f"nothing was sent to {customer.first_name}"

    return expect


def drift_warned(customer: Customer, ticket: str) -> Expectation:
    """The reply stays on the ticket; the customer is asked to answer NEU for a new one."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        warning = await demo.wait_for_mail(customer.addr, tag(number), "a topic-drift warning")
        asked = str(demo.written[customer.key]["Message-ID"])
        word = NEW_WORD[customer.language]
        fail_on(
            [
                *from_support(warning),
                f"no {word} in the warning" if word not in warning.text.split() else "",
                "not In-Reply-To the customer's mail"
                if warning.message["In-Reply-To"] != asked
                else "",
            ],
            "the topic-drift warning",
        )
        drift = (await demo.stored(number, demo.written[customer.key]))["drift"] or {}
        reason = (drift.get("reasons") or ["?"])[0]
        return f"topic-drift warning sent (score {drift.get('score', 0):.2f}: {reason})"

    return expect


def split_off(customer: Customer, old: str, new: str) -> Expectation:
    """A new ticket, linked to the old one; the customer gets a mail naming both."""

    async def expect(demo: Demo) -> str:
        before = demo.numbers[old]

        async def told() -> tuple[Delivered, str] | None:
            mail = demo.new_mail_to(customer.addr, f"[{PREFIX}#")
            number = ticket_of(mail) if mail is not None else None
            if mail is None or number is None or number == before:
                return None
            return mail, number

        mail, number = await demo.wait_until(told, f"a mail to {customer.addr} with a new number")
        detail = await demo.ticket(number)
        if detail is None or detail["linked_to"] != before:
            raise DemoFailed(f"{tag(number)} is not linked to {tag(before)}: {detail}")
        fail_on(
            [*from_support(mail), "" if tag(before) in mail.text else f"no {tag(before)} in it"],
            f"the mail about {tag(number)}",
        )
        demo.numbers[new] = number
        title, told_to = f'"{detail["subject"]}"', customer.first_name
        return f"new ticket {tag(number)} {title}, linked to {tag(before)}; both named to {told_to}"

    return expect


def ticket_of(mail: Delivered) -> str | None:
    found = re.search(rf"\[{PREFIX}#(\d+)\]", mail.subject)
    return found[1] if found else None


def closed(agent: Agent, ticket: str) -> Expectation:
    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]

        async def is_closed() -> dict[str, Any] | None:
            detail = await demo.ticket(number)
            return detail if detail is not None and detail["status"] == "closed" else None

        detail = await demo.wait_until(is_closed, f"{tag(number)} to be closed")
        event = next((e for e in reversed(detail["events"]) if e["kind"] == "status"), None)
        if event is None or agent.name not in event["detail"]:
            raise DemoFailed(f"{tag(number)} closed, but not by {agent.name}: {event}")
        others = [n for n in demo.numbers.values() if n != number]
        still = [f"{tag(n)} {(await demo.ticket(n) or {}).get('status')}" for n in others]
        return f"{tag(number)} {event['detail']}" + "".join(f"; {s}" for s in still)

    return expect


def routed(ticket: str, queue: str, passed_over: Agent) -> Expectation:
    """The ticket landed in `queue` by a routing rule, and `passed_over` heard nothing of it."""

    async def expect(demo: Demo) -> str:
        number = demo.numbers[ticket]
        detail = await demo.ticket(number) or {}
        event = next((e for e in detail.get("events", ()) if e["kind"] == "routed"), None)
        if detail.get("queue") != queue or event is None:
            raise DemoFailed(f"{tag(number)} is in queue {detail.get('queue')!r}, not {queue!r}")
        if demo.last_mail_to(passed_over.addr, tag(number)) is not None:
            raise DemoFailed(f"{passed_over.name} was told of {tag(number)}, not their queue")
        return f"{tag(number)} routed: {event['detail']}; {passed_over.name} not bothered"

    return expect


SCRIPT: tuple[Step, ...] = (
    Step(
        "Jörg writes in German: his company's mails bounce",
        writes(JOERG, JOERG_SUBJECT, JOERG_FIRST),
        (acknowledged(JOERG, "mail"), notified(DANA, "mail")),
    ),
    Step(
        "Dana answers in Thunderbird: a reply to her notification",
        agent_replies(DANA, "mail", DANA_ANSWER),
        (relayed(DANA, JOERG, "mail"),),
    ),
    Step(
        "Jörg replies: the mails arrive again",
        replies(JOERG, JOERG_THANKS),
        (on_topic(JOERG, "mail"), notified(DANA, "mail"), nothing_to(JOERG)),
    ),
    Step(
        "Jörg replies to the same ticket about something else: the office Wi-Fi",
        replies(JOERG, JOERG_WIFI),
        (drift_warned(JOERG, "mail"), notified(DANA, "mail")),
    ),
    Step(
        'Jörg answers the warning with "NEU"',
        replies(JOERG, "NEU"),
        (split_off(JOERG, "mail", "wifi"), notified(DANA, "wifi")),
    ),
    Step(
        'Dana closes the first ticket: "#close" in a reply to its notification',
        agent_replies(DANA, "mail", "#close"),
        (closed(DANA, "mail"), nothing_to(JOERG)),
    ),
    Step(
        "Bea writes about an invoice charged twice: the billing queue gets it",
        writes(BEA, "Rechnung doppelt abgebucht", BEA_INVOICE),
        (
            acknowledged(BEA, "invoice"),
            routed("invoice", "billing", DANA),
            notified(BERT, "invoice"),
        ),
    ),
)
