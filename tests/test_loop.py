"""Mail loops and send caps: naive autoresponders against the real daemon, each cap through
the real pipeline, and the loop headers on every mail we send. Real Dovecot, real aiosmtpd,
SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import peewee as pw
import pytest
from aiosmtpd.smtp import Envelope, Session
from harness import (
    DANA,
    DANA_AGENT,
    ELI,
    ELI_AGENT,
    SUPPORT,
    Desk,
    agent_mail,
    daemon_process,
    note_address,
    run_once,
    write_config,
)
from servers import Dovecot, ImapTestClient, ReceivedMail, SmtpSink, make_mail

from mailtick.caps import subject_key
from mailtick.config import Config, parse_config
from mailtick.db import Address, Event, Message, Outbox, Ticket, open_database

CUSTOMER = "Jörg Beispiel <joerg@kunde.example>"
JOERG = "joerg@kunde.example"
FIRST = (
    "Guten Tag,\n\nbitte legen Sie für unsere neue Kollegin Frau Meier einen Benutzer an, "
    "mit Zugang zum Mailkonto und zum CMS.\n\nViele Grüße\nJörg\n"
)
WIFI = "Hallo,\n\ndas WLAN im Büro geht seit heute früh nicht mehr, kein Gerät verbindet sich.\n"
AWAY = (  # a vacation notice the drift check takes for a new topic
    "Ich bin im Urlaub bis 3.12. Ihre Mail wird nicht weitergeleitet. Bei Fragen zur "
    "Buchhaltung und zu Rechnungen wenden Sie sich an buchhaltung@kunde.example, "
    "Telefon 0211 123456.\n"
)
_TAG = re.compile(r"\[MT#\d+\]\s*")


# -- a naive autoresponder ----------------------------------------------------------------


class Autoresponder(SmtpSink):
    """An SMTP server whose mailboxes answer every mail the way a naive autoresponder does:
    from the recipient, to the Reply-To (else the From), with none of the headers that mark
    an automatic mail (no Auto-Submitted, no Precedence, no In-Reply-To, no References). The
    answer is APPENDed to the support INBOX on Dovecot, as if the MTA had delivered it."""

    def __init__(
        self, dovecot: Dovecot, answers: set[str], subject: Callable[[str], str], body: str
    ) -> None:
        super().__init__()
        self.dovecot, self.answers, self.subject, self.body = dovecot, answers, subject, body
        self.answered = 0

    def _on_data(self, session: Session, envelope: Envelope) -> str:
        status = super()._on_data(session, envelope)
        if status.startswith("250"):
            mail = self.messages[-1]
            for rcpt in mail.rcpt_tos:
                if rcpt in self.answers:
                    self._answer(rcpt, mail)
        return status

    def _answer(self, rcpt: str, mail: ReceivedMail) -> None:
        target = mail.message["Reply-To"] or mail.message["From"]
        answer = make_mail(
            from_addr=rcpt,
            to_addr=target.addresses[0].addr_spec,
            subject=self.subject(str(mail.message["Subject"])),
            body=self.body,
        )
        with self.dovecot.client() as client:
            client.append(answer)
        self.answered += 1


def run_daemon_until_quiet(
    config: Path, log: Path, client: ImapTestClient, sink: Autoresponder, first: bytes
) -> None:
    """`mailtick run` until nothing moved for 3 s and the inbox is empty; at most 60 s or 40
    answers of the autoresponder (a loop that runs away fails the caller's assertions)."""
    with daemon_process(config, log):
        client.append(first)
        deadline = time.monotonic() + 60
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline and sink.answered < 40:
            now = (len(sink.messages), client.count("INBOX"))
            if now[0] != seen or now[1]:
                seen, quiet_since = now[0], time.monotonic()
            elif time.monotonic() - quiet_since > 3:
                break
            time.sleep(0.1)


SCENARIOS: dict[str, tuple[str, Callable[[str], str], str]] = {
    # who answers, with which subject, and [drift] action
    "re-tagged": (JOERG, lambda s: f"Re: {s}", "warn"),  # (a) keeps our tag: drift warning
    "re-tagged-split": (JOERG, lambda s: f"Re: {s}", "split"),  # (a) splits a new ticket off
    "fixed-subject": (JOERG, lambda s: "Out of office", "warn"),  # (b) a new ticket each time
    "automatic-reply": (JOERG, lambda s: f"Automatic reply: {_TAG.sub('', s)}", "warn"),  # (c)
    "agent-side": (DANA, lambda s: f"Re: {s}", "warn"),  # (d) answers the notifications
    "both-sides": (JOERG + " " + DANA, lambda s: f"Re: {s}", "warn"),  # (a) and (d) at once
}
# Both sides: Jörg's 3 answers each reach Dana as a notification, after the first one: 4.
MOST = {"both-sides": 4}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_naive_autoresponder_gets_at_most_three_mails(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    tmp_path: Path,
    db_url: str,
    scenario: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    who, subject, drift = SCENARIOS[scenario]
    with Autoresponder(dovecot, set(who.split()), subject, AWAY) as sink:
        desk = Desk(dovecot, sink, db_url, tmp_path)
        data = desk.settings(DANA_AGENT, ELI_AGENT, drift={"action": drift})
        config = write_config(tmp_path / "config.toml", data)
        first = make_mail(from_addr=CUSTOMER, subject="Benutzer erzeugen", body=FIRST)
        run_daemon_until_quiet(config, tmp_path / "daemon.log", imap_client, sink, first)
        robots = {addr: len(sink.to(addr)) for addr in who.split()}
        robot, everyone = max(robots.values()), len(sink.messages)
    with capsys.disabled():
        kinds = [str(m.message["Subject"]) for addr in robots for m in sink.to(addr)]
        print(
            f"\n  loop {scenario} [{db_url.split(':')[0]}]: {robot} to the autoresponder "
            f"{kinds}, {everyone} sent in all, {sink.answered} answers"
        )
    assert 1 <= robot <= MOST.get(scenario, 3), [m.message["Subject"] for m in sink.messages]
    assert imap_client.count("INBOX") == 0
    db = open_database(db_url)
    try:
        robots_wrote = (Message.direction == "in") & Message.author_addr.in_(list(robots))
        answers = Message.select().where(robots_wrote)
        first_mail = 1 if JOERG in robots else 0
        assert answers.count() == sink.answered + first_mail  # every answer is on a ticket
        held = [row.last_error for row in Outbox.select().where(Outbox.status == "held")]
        with capsys.disabled():
            print(f"  held: {held}")
    finally:
        db.close()


class VaryingRobot(Autoresponder):
    """A robot that varies what the caps compare: it answers every mail to any of its
    addresses from a new plus-address (`robot+1@…`, `robot+2@…`; or always the same one),
    each time with a new subject without our tag ("Vorgang 7 eingegangen")."""

    def __init__(self, dovecot: Dovecot, base: str, vary_address: bool) -> None:
        super().__init__(dovecot, set(), lambda s: s, "Ihre Nachricht ist eingegangen.\n")
        self.base, self.vary_address = base, vary_address
        self.local, self.domain = base.split("@")

    def mine(self, rcpt: str) -> bool:
        local, _, domain = rcpt.partition("@")
        return domain == self.domain and local.split("+")[0] == self.local

    def _on_data(self, session: Session, envelope: Envelope) -> str:
        self.answers = {r for r in envelope.rcpt_tos if self.mine(r)}
        return super()._on_data(session, envelope)

    def _answer(self, rcpt: str, mail: ReceivedMail) -> None:
        n = self.answered + 1
        sender = f"{self.local}+{n}@{self.domain}" if self.vary_address else rcpt
        answer = make_mail(
            from_addr=sender,
            to_addr=SUPPORT,
            subject=f"Vorgang {n} eingegangen",
            body=f"Ihre Nachricht ist unter der Vorgangsnummer {n} eingegangen.\n",
        )
        with self.dovecot.client() as client:
            client.append(answer)
        self.answered += 1


@pytest.mark.parametrize("vary_address", [True, False], ids=["new-plus-address", "same-address"])
def test_a_robot_that_varies_address_and_subject_gets_at_most_three_mails(
    dovecot: Dovecot, imap_client: ImapTestClient, tmp_path: Path, db_url: str, vary_address: bool
) -> None:
    with VaryingRobot(dovecot, "robot@kunde.example", vary_address) as sink:
        data = Desk(dovecot, sink, db_url, tmp_path).settings()
        config = write_config(tmp_path / "config.toml", data)
        first = make_mail(from_addr="robot+0@kunde.example", subject="Vorgang 0 eingegangen")
        run_daemon_until_quiet(config, tmp_path / "daemon.log", imap_client, sink, first)
        to_robot = [m for m in sink.messages if any(sink.mine(r) for r in m.rcpt_tos)]
    assert 1 <= len(to_robot) <= 3, [m.message["Subject"] for m in to_robot]
    assert imap_client.count("INBOX") == 0
    db = open_database(db_url)
    try:
        held = Outbox.select().where(Outbox.status == "held")
        assert any("robot-pace" in row.last_error for row in held)
        assert Message.select().where(Message.direction == "in").count() == sink.answered + 1
    finally:
        db.close()


def test_a_backlog_of_one_customers_new_requests_is_acknowledged_in_full(
    desk: Desk, db: pw.Database, imap_client: ImapTestClient, smtp_sink: SmtpSink
) -> None:
    """robot-pace counts answers to our mail; five requests written before any answer
    went out (mail that waited while the daemon was down) are no robot."""
    for n in range(5):
        imap_client.append(make_mail(from_addr="viel@kunde.example", subject=f"Anliegen {n}"))
    run_once(desk.config())
    assert len(smtp_sink.to("viel@kunde.example")) == 5
    assert not Outbox.select().where(Outbox.status == "held").exists()


# -- each cap through the real pipeline -----------------------------------------------------


def _reply(number: str, n: int) -> bytes:
    return make_mail(
        from_addr=CUSTOMER,
        subject=f"AW: [MT#{number}] Benutzer erzeugen",
        body=f"Nachtrag {n}: Frau Meier braucht auch Zugang zum Benutzer im CMS.\n",
    )


def _open_ticket(client: ImapTestClient, config: Config) -> str:
    """Jörg asks for a new user; the number of the ticket it opened."""
    client.append(make_mail(from_addr=CUSTOMER, subject="Benutzer erzeugen", body=FIRST))
    run_once(config)
    return str(Ticket.get().number)


def test_eleventh_mail_about_a_ticket_in_ten_minutes_is_held(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk: Desk,
    db: pw.Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = desk.settings(DANA_AGENT, drift={"action": "off"})
    config = parse_config(data, env={})
    number = _open_ticket(imap_client, config)
    imap_client.append_many([_reply(number, n) for n in range(1, 11)])
    with caplog.at_level(logging.WARNING, logger="mailtick.caps"):
        result = run_once(config)

    assert result.ingest.acked == 10 and Ticket.select().count() == 1
    assert len(smtp_sink.to(DANA)) == 10  # the customer's 11th mail reached Dana only on file
    reason = f"ticket-burst, 10 mails to {DANA} about MT#{number} in 10 min"
    [held] = Outbox.select().where(Outbox.status == "held")
    assert held.last_error == f"held: {reason}" and held.kind == "notification"
    assert held.sent_at is None and held.attempts == 0
    assert [r.getMessage() for r in caplog.records].count(
        f"held notification to {DANA} on MT#{number}: {reason} ({held.message.message_id})"
    ) == 1
    assert Event.get(Event.kind == "held").detail == f"notification to {DANA}: {reason}"
    assert f"[held] notification to {DANA}: {reason}" in desk.show(number, data=data)
    assert run_once(config).send.sent == 0  # a held mail is never sent later either
    assert len(smtp_sink.messages) == 11  # 1 acknowledgement, 10 notifications


def test_one_acknowledgement_per_sender_and_subject_a_day(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    subjects = [
        (CUSTOMER, "Drucker defekt"),
        (CUSTOMER, "AW: Drucker defekt"),
        (CUSTOMER, "Automatic reply: drucker   DEFEKT"),
        (CUSTOMER, "Rechnung falsch"),
        ("Kollege <kollege@kunde.example>", "Drucker defekt"),
    ]
    imap_client.append_many(
        [make_mail(from_addr=who, subject=s, body="Bitte helfen Sie uns.") for who, s in subjects]
    )
    run_once(desk.config())

    assert Ticket.select().count() == 5  # every mail has its ticket
    sent = sorted(
        (m.rcpt_tos[0], subject_key(m.message["Subject"], "MT")) for m in smtp_sink.messages
    )
    assert sent == [
        (JOERG, "drucker defekt"),
        (JOERG, "rechnung falsch"),
        ("kollege@kunde.example", "drucker defekt"),
    ]
    held = list(Outbox.select().where(Outbox.status == "held").order_by(Outbox.id))
    assert len(held) == 2
    reason = f'same-subject, 1 acknowledgement to {JOERG} about "drucker defekt" in 1 day'
    assert {h.last_error for h in held} == {f"held: {reason}"}
    number = str(Ticket.get(Ticket.subject == "Automatic reply: drucker DEFEKT").number)
    assert reason in desk.show(number)
    [entry] = json.loads(desk.show(number, "--json"))["held"]
    assert (entry["kind"], entry["to"], entry["reason"]) == ("ack", [JOERG], reason)


def test_daily_cap_per_customer_address_but_not_for_agents(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, limits={"daily_per_address": 3})
    topics = ["Drucker defekt", "Rechnung falsch", "Passwort vergessen", "WLAN geht nicht"]
    imap_client.append_many(
        [make_mail(from_addr=CUSTOMER, subject=s, body="Bitte helfen Sie uns.") for s in topics]
    )
    run_once(config)

    assert Ticket.select().count() == 4
    assert len(smtp_sink.to(JOERG)) == 3
    assert len(smtp_sink.to(DANA)) == 4  # agents are exempt from the daily cap
    [held] = Outbox.select().where(Outbox.status == "held")
    assert held.last_error == f"held: daily-per-address, 3 mails to {JOERG} in 1 day"
    assert held.message.ticket.subject == "WLAN geht nicht"


def test_bouncing_address_gets_no_automatic_mail_but_the_agents_answer(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, drift={"action": "off"})
    number = _open_ticket(imap_client, config)
    imap_client.append(_reply(number, 1))
    run_once(config)
    # Our mail to Jörg bounced since (a person writing again would clear the mark).
    Address.create(address=JOERG, bouncing=True, bounces=1, last_bounce="5.1.1 user unknown")
    imap_client.append(agent_mail(smtp_sink.to(DANA)[-1], "#split\nIhr CMS-Zugang ist da."))
    run_once(config)

    [_, answer] = smtp_sink.to(JOERG)  # a person decided to write: never held
    assert "Ihr CMS-Zugang ist da." in answer.message.get_content()
    [held] = Outbox.select().where(Outbox.status == "held")  # the split notice, automatic
    assert (held.kind, held.last_error) == ("split", f"held: bouncing, mail to {JOERG} bounces")
    assert Ticket.select().count() == 2  # the split itself happened


# -- an agent's automatic mail ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "headers"),
    [
        ("Re: {s}", {"Auto-Submitted": "auto-replied"}),
        ("Automatic reply: {s}", {}),  # a naive autoresponder: only its subject tells
        ("Abwesenheitsnotiz: {s}", {"Precedence": "bulk"}),
    ],
)
def test_agents_autoresponder_is_stored_but_never_relayed_or_obeyed(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk: Desk,
    db: pw.Database,
    subject: str,
    headers: dict[str, str],
) -> None:
    config = desk.config(DANA_AGENT, ELI_AGENT)
    _open_ticket(imap_client, config)
    [notification] = smtp_sink.to(DANA)
    imap_client.append(
        make_mail(
            from_addr=f"Dana Example <{DANA}>",
            to_addr=notification.message["Reply-To"].addresses[0].addr_spec,
            subject=subject.format(s=notification.message["Subject"]),
            body=f"#close\n{AWAY}",
            headers=headers,
        )
    )
    result = run_once(config)

    assert result.ingest.acked == 1 and result.send.sent == 0
    assert len(smtp_sink.to(JOERG)) == 1  # the acknowledgement only: nothing relayed
    assert len(smtp_sink.to(ELI)) == 1  # and nobody told
    ticket = Ticket.get()
    assert (ticket.status, ticket.owner) == ("open", None)  # "#close" was not obeyed
    stored = Message.get((Message.author_addr == DANA) & (Message.direction == "in"))
    assert stored.kind == "automatic" and stored.ticket_id == ticket.id
    assert "not relayed" in stored.thread_detail
    assert Event.get(Event.kind == "not-relayed").ticket.id == ticket.id


# -- the headers of every mail we send -------------------------------------------------------


def test_every_mail_we_send_carries_the_loop_headers_and_a_stored_message_id(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    config = desk.config(DANA_AGENT, ELI_AGENT)

    def step(raw: bytes) -> None:
        imap_client.append(raw)
        run_once(config)

    step(make_mail(from_addr=CUSTOMER, subject="Benutzer erzeugen", body=FIRST))  # ack, notes
    number = str(Ticket.get().number)
    [notification] = smtp_sink.to(DANA)
    step(agent_mail(notification, "Kunde ist VIP.", address=note_address(notification)))  # note
    step(agent_mail(notification, "#staus closed"))  # command error
    step(agent_mail(notification, "Wir legen den Benutzer heute an."))  # relay
    ack = Message.get(Message.kind == "ack")
    step(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{number}] Benutzer erzeugen",
            body=f"{WIFI}\n> quoted acknowledgement\n",
            in_reply_to=ack.message_id,
        )
    )  # drift warning
    warning = Message.get(Message.kind == "drift-warning")
    step(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{number}] Benutzer erzeugen",
            body="NEU\n",
            in_reply_to=warning.message_id,
        )
    )  # split
    step(
        make_mail(
            from_addr="mallory@evil.example",
            subject=f"Re: [MT#{number}] Benutzer erzeugen",
            body="Bitte senden Sie alle Zugangsdaten an mich.",
        )
    )  # stranger

    ours = {m.message_id: m.kind for m in Message.select().where(Message.direction == "out")}
    assert set(ours.values()) == {
        "ack",
        "notification",
        "note",
        "command-error",
        "relay",
        "drift-warning",
        "split",
        "stranger",
    }
    assert Outbox.select().where(Outbox.status != "sent").count() == 0
    assert len(smtp_sink.messages) == len(ours)
    for mail in smtp_sink.messages:
        header = mail.message
        kind = ours[header["Message-ID"]]  # every Message-ID we sent is stored
        # RFC 3834: an agent's relayed answer was written by a person, so it says "no";
        # X-Auto-Response-Suppress and our loop header still keep robots from answering.
        expected = "no" if kind == "relay" else ("auto-replied", "auto-generated")
        assert header["Auto-Submitted"] in expected, (kind, header["Auto-Submitted"])
        assert header["X-Auto-Response-Suppress"] == "All", kind
        assert header["X-Mailtick-Loop"].startswith(f"{SUPPORT} "), kind


def test_the_same_answer_twice_from_an_agent_is_relayed_once(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    """A naive autoresponder of an agent, answering every notification with the same text."""
    config = desk.config(DANA_AGENT)
    _open_ticket(imap_client, config)
    [notification] = smtp_sink.to(DANA)
    imap_client.append(agent_mail(notification, AWAY))
    run_once(config)
    imap_client.append(agent_mail(notification, AWAY))
    run_once(config)

    [_, relayed] = smtp_sink.to(JOERG)
    assert "Ich bin im Urlaub" in relayed.message.get_content()
    second = Message.get((Message.author_addr == DANA) & (Message.kind == "automatic"))
    assert "same text" in second.thread_detail
    assert "same text" in Event.get(Event.kind == "not-relayed").detail
