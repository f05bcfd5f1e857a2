"""Topic drift end to end: warn, split, the customer's NEU reply and the agent's #split."""

from __future__ import annotations

import json
import subprocess
import sys

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, REPO, Desk, run_once
from servers import ImapTestClient, SmtpSink, make_mail

from mailtick.config import Config
from mailtick.db import Message, Ticket

CUSTOMER = "Jörg Beispiel <joerg@kunde.example>"
JOERG = "joerg@kunde.example"
FIRST = (
    "Guten Tag,\n\nbitte legen Sie für unsere neue Kollegin Frau Meier einen Benutzer an, "
    "mit Zugang zum Mailkonto und zum CMS.\n\nViele Grüße\nJörg\n"
)
WIFI = "Hallo,\n\ndas WLAN im Büro geht seit heute früh nicht mehr, kein Gerät verbindet sich.\n"
THANKS = "Vielen Dank, der Benutzer für Frau Meier funktioniert jetzt, sie kann sich anmelden.\n"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """Topic drift reads text, not the database: SQLite alone (the `db` and `desk` fixtures)."""
    return sqlite_url


def ticket_and_reply(client: ImapTestClient, config: Config, body: str) -> str:
    """Jörg opens "Benutzer erzeugen", then replies to the acknowledgement with `body`; the
    ticket's number."""
    client.append(make_mail(from_addr=CUSTOMER, subject="Benutzer erzeugen", body=FIRST))
    run_once(config)
    number = str(Ticket.get().number)
    _reply(client, config, number, body)
    return number


def _reply(client: ImapTestClient, config: Config, number: str, body: str) -> None:
    ack = Message.get(
        (Message.kind == "ack") & (Message.ticket == Ticket.get(Ticket.number == number))
    )
    client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{number}] Benutzer erzeugen",
            body=f"{body}\n> quoted acknowledgement\n",
            in_reply_to=ack.message_id,
        )
    )
    run_once(config)


def test_warn_keeps_the_reply_tells_customer_and_agent(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, drift={"action": "warn"})
    number = ticket_and_reply(imap_client, config, WIFI)
    assert Ticket.select().count() == 1
    reply = Message.select().where(Message.kind == "customer").order_by(Message.id.desc()).get()
    decision = json.loads(reply.drift)
    assert decision["new_topic"] and decision["action"] == "warn" and decision["reasons"]
    [warning] = [m for m in smtp_sink.to(JOERG) if "NEU" in m.message.get_content()]
    assert warning.message["Subject"] == f"[MT#{number}] Benutzer erzeugen"
    assert warning.message["In-Reply-To"] == reply.message_id
    assert warning.message["Auto-Submitted"] == "auto-replied"
    assert any("possible new topic" in m.message.get_content() for m in smtp_sink.to(DANA))

    # The customer answers the warning with NEU: the Wi-Fi message gets its own ticket.
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=str(warning.message["Subject"]),
            body="NEU\n\n> Sie sieht für uns nach einem eigenen Anliegen aus.\n",
            in_reply_to=warning.message["Message-ID"],
        )
    )
    run_once(config)
    old, new = list(Ticket.select().order_by(Ticket.id))
    assert new.linked_to_id == old.id and "WLAN" in new.subject
    assert Message.get(Message.message_id == reply.message_id).ticket_id == new.id
    [told] = [m for m in smtp_sink.to(JOERG) if f"[MT#{new.number}]" in str(m.message["Subject"])]
    assert f"[MT#{old.number}]" in told.message.get_content()


def test_thank_you_is_not_a_new_topic(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, drift={"action": "warn"})
    ticket_and_reply(imap_client, config, THANKS)
    reply = Message.select().where(Message.kind == "customer").order_by(Message.id.desc()).get()
    assert json.loads(reply.drift)["action"] == "none"
    assert not any("NEU" in m.message.get_content() for m in smtp_sink.to(JOERG))


def test_split_opens_a_linked_ticket_and_tells_both_numbers(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, drift={"action": "split"})
    ticket_and_reply(imap_client, config, WIFI)
    old, new = list(Ticket.select().order_by(Ticket.id))
    assert new.linked_to_id == old.id
    moved = Message.get(Message.ticket == new)
    assert json.loads(moved.drift)["action"] == "split"
    [told] = [m for m in smtp_sink.to(JOERG) if f"[MT#{new.number}]" in str(m.message["Subject"])]
    assert f"[MT#{old.number}]" in told.message.get_content()


def test_agent_split_command(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, drift={"action": "off"})
    ticket_and_reply(imap_client, config, WIFI)
    assert Ticket.select().count() == 1 and not any(
        "NEU" in m.message.get_content() for m in smtp_sink.to(JOERG)
    )
    notification = smtp_sink.to(DANA)[-1]
    imap_client.append(
        make_mail(
            from_addr=f"Dana Example <{DANA}>",
            to_addr=notification.message["Reply-To"].addresses[0].addr_spec,
            subject="Re: " + str(notification.message["Subject"]),
            body="#split\n",
        )
    )
    run_once(config)
    old, new = list(Ticket.select().order_by(Ticket.id))
    assert new.linked_to_id == old.id and "WLAN" in new.subject
    assert any(f"[MT#{new.number}]" in str(m.message["Subject"]) for m in smtp_sink.to(JOERG))


def test_drift_command_line_contract() -> None:
    case = {
        "ticket_subject": "Benutzer erzeugen",
        "ticket_history": ["Bitte legen Sie einen Benutzer für Frau Meier an."],
        "new_subject": "AW: [MT#10019] Benutzer erzeugen",
        "new_message": (
            "Hallo,\nWLAN geht nicht.\n\nAm 01.11.2026 schrieb Support:\n> Wir legen ihn an.\n"
        ),
    }
    run = subprocess.run(
        [sys.executable, "-m", "mailtick", "drift", "--json"],
        input=json.dumps(case),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    verdict = json.loads(run.stdout)
    assert run.returncode == 0 and verdict["new_topic"] is True and verdict["reasons"]
    bad = subprocess.run(
        [sys.executable, "-m", "mailtick", "drift", "--json"],
        input="{}",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 2 and "missing key" in bad.stderr
