"""Routing: queues and priorities of new tickets by the [[routing]] table (mailtick/routing.py);
the pure rules, then the real daemon on Dovecot, aiosmtpd, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, Desk, mailtick, run_once, write_config
from servers import ImapTestClient, SmtpSink, make_mail

from mailtick.config import ConfigError, RoutingRule
from mailtick.db import Event, Ticket
from mailtick.ingest.parse import parse
from mailtick.routing import Route, route

RULES = (
    RoutingRule(name="outage", priority="urgent", words=("Server ausgefallen", "server down")),
    RoutingRule(name="billing", queue="billing", to=("billing@example.com",)),
    RoutingRule(name="cloudbox-en", queue="product-en", language="en", words=("Cloudbox",)),
    RoutingRule(name="cloudbox-de", queue="product-de", language="de", words=("Cloudbox",)),
    RoutingRule(name="key-customer", queue="key", from_domains=("bigcustomer.example",)),
    RoutingRule(name="cancel", queue="billing", words=("Kündigung",)),
)
ENGLISH = "Hello,\n\nour Cloudbox stopped syncing files since yesterday evening. Can you help?\n"
GERMAN = "Hallo,\n\nunsere Cloudbox synchronisiert seit gestern Abend keine Dateien mehr.\n"


def routed(**mail: Any) -> Route:
    return route(parse(make_mail(**mail)), "INBOX", RULES)


def test_no_rule_matches_default_and_normal() -> None:
    assert routed(subject="Hallo", body="Eine Frage zu Ihren Öffnungszeiten.\n") == Route()


def test_the_first_rule_with_a_queue_and_the_first_with_a_priority_decide() -> None:
    found = routed(to_addr="billing@example.com", subject="Server ausgefallen!")
    assert (found.queue, found.priority) == ("billing", "urgent")
    assert (found.queue_rule, found.priority_rule) == ("billing", "outage")
    assert found.why() == "queue billing (rule billing), priority urgent (rule outage)"


def test_language_and_words_route_the_same_product_to_two_queues() -> None:
    assert routed(subject="Sync problem", body=ENGLISH).queue == "product-en"
    assert routed(subject="Synchronisation", body=GERMAN).queue == "product-de"


def test_words_ignore_case_and_umlaut_spelling_and_match_whole_words_only() -> None:
    assert routed(subject="KUENDIGUNG meines Vertrags").queue == "billing"
    assert routed(subject="Frage", body="Hiermit die Kündigung zum 31.12.\n").queue == "billing"
    assert routed(subject="Kündigungsfrist?").queue == "default"  # another word


def test_from_domains_take_subdomains_and_cc_counts_for_to() -> None:
    assert routed(from_addr="a@it.bigcustomer.example").queue == "key"
    assert routed(from_addr="a@notbigcustomer.example").queue == "default"
    assert routed(headers={"Cc": "billing@example.com"}).queue == "billing"


def test_a_quoted_word_does_not_route() -> None:
    body = "Danke!\n\nAm Montag schrieb Support:\n> Ihre Kündigung ist eingegangen.\n"
    assert routed(subject="Re: Ihre Anfrage", body=body).queue == "default"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"queue": "nowhere", "words": ["x"]}, 'routing[0].queue: "nowhere" is no queue'),
        ({"queue": "billing"}, "routing[0]: matches nothing"),
        ({"words": ["x"]}, "routing[0]: sets neither a queue nor a priority"),
        ({"priority": "asap", "words": ["x"]}, "routing[0].priority: expected one of"),
    ],
)
def test_bad_routing_names_the_key(desk: Desk, rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        desk.config(DANA_AGENT, queues=[{"name": "billing"}], routing=[rule])
    assert any(line.startswith(problem) for line in raised.value.problems), raised.value.problems


def test_a_lead_must_be_an_agent(desk: Desk) -> None:
    with pytest.raises(ConfigError) as raised:
        desk.config(DANA_AGENT, queues=[{"name": "billing", "leads": ["ghost"]}])
    assert raised.value.problems == ['queues[0].leads: "ghost" is not an agent']


# -- the daemon ---------------------------------------------------------------------------------

AGENTS = [
    DANA_AGENT,
    {"name": "bert", "addresses": ["bert@example.com"], "queues": ["billing"]},
    {"name": "emma", "addresses": ["emma@example.com"], "queues": ["product-en"]},
    {"name": "gerd", "addresses": ["gerd@example.com"], "queues": ["product-de"]},
]
ROUTING = [
    {"name": "outage", "priority": "urgent", "words": ["Server ausgefallen", "server down"]},
    {"name": "billing", "queue": "billing", "to": ["billing@example.com"]},
    {"name": "cloudbox-en", "queue": "product-en", "language": "en", "words": ["Cloudbox"]},
    {"name": "cloudbox-de", "queue": "product-de", "language": "de", "words": ["Cloudbox"]},
]


def test_each_mail_reaches_only_its_queues_agents(
    desk: Desk, db: pw.Database, imap_client: ImapTestClient, smtp_sink: SmtpSink
) -> None:
    config = desk.config(*AGENTS, queues=[{"name": "billing", "leads": ["bert"]}], routing=ROUTING)
    imap_client.append(make_mail(to_addr="billing@example.com", subject="Rechnung 4711 fehlt"))
    imap_client.append(make_mail(from_addr="ann@kunde.example", subject="Sync", body=ENGLISH))
    imap_client.append(make_mail(from_addr="udo@kunde.example", subject="Sync", body=GERMAN))
    imap_client.append(make_mail(from_addr="ops@kunde.example", subject="Server ausgefallen"))
    run_once(config)
    queues = {str(t.requester): (t.queue, t.priority) for t in Ticket.select()}
    assert queues == {
        "alice@customer.example": ("billing", "normal"),
        "ann@kunde.example": ("product-en", "normal"),
        "udo@kunde.example": ("product-de", "normal"),
        "ops@kunde.example": ("default", "urgent"),
    }
    told = {
        agent: sorted(str(m.message["Subject"]).split("] ", 1)[1] for m in smtp_sink.to(addr))
        for agent, addr in [("dana", DANA), ("bert", "bert@example.com"),
                            ("emma", "emma@example.com"), ("gerd", "gerd@example.com")]
    }  # fmt: skip
    assert told == {
        "dana": ["Server ausgefallen"],
        "bert": ["Rechnung 4711 fehlt"],
        "emma": ["Sync"],
        "gerd": ["Sync"],
    }
    english = Ticket.get(Ticket.requester == "ann@kunde.example")
    assert english.queue == "product-en"
    [event] = Event.select().where((Event.ticket == english) & (Event.kind == "routed"))
    assert event.detail == "queue product-en (rule cloudbox-en), priority normal"
    shown = desk.show(str(english.number), data=desk.settings(*AGENTS, routing=ROUTING))
    assert "rule cloudbox-en" in shown
    path = write_config(desk.tmp_path / "list.toml", desk.settings())
    listed = mailtick("tickets", "--queue", "billing", "--json", "-c", str(path))
    assert [t["subject"] for t in json.loads(listed.stdout)] == ["Rechnung 4711 fehlt"]
    urgent = mailtick("tickets", "--priority", "urgent", "-c", str(path)).stdout
    assert "Server ausgefallen" in urgent and "urgent  default" in urgent


def test_a_reply_stays_in_its_tickets_queue_and_a_queue_without_agents_tells_default(
    desk: Desk, db: pw.Database, imap_client: ImapTestClient, smtp_sink: SmtpSink
) -> None:
    config = desk.config(
        DANA_AGENT,
        queues=[{"name": "billing"}],
        routing=[{"name": "billing", "queue": "billing", "words": ["Rechnung"]}],
    )
    imap_client.append(make_mail(subject="Rechnung fehlt", message_id="<first@kunde.example>"))
    run_once(config)
    ticket = Ticket.get()
    assert ticket.queue == "billing"
    assert len(smtp_sink.to(DANA)) == 1  # nobody joins billing: the default queue hears of it
    imap_client.append(
        make_mail(subject="Re: Rechnung fehlt", in_reply_to="<first@kunde.example>",
                  body="Und noch eine Frage zur Lieferung.\n")
    )  # fmt: skip
    run_once(config)
    assert [t.queue for t in Ticket.select()] == ["billing"]
