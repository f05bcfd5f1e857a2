"""Agents work by mail: notifications, relayed answers, notes, commands; forgeries do nothing."""

from __future__ import annotations

from typing import Any

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, ELI, ELI_AGENT, Desk, agent_mail, note_address, run_once
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import ImapTestClient, ReceivedMail, SmtpSink, make_mail

from mailtick.config import Config
from mailtick.db import Event, Message, Ticket, Wish

CUSTOMER = "Jörg Beispiel <joerg@kunde.example>"
REQUEST = (
    "Guten Tag,\n\nseit heute Morgen kommen unsere Mails an Kunden nicht mehr an. "
    "Jede Mail kommt mit 550 5.7.1 zurück.\n\nViele Grüße\nJörg\n"
)


@pytest.fixture
def desk_config(desk: Desk) -> Config:
    """Dana and Eli answer the German desk's mail."""
    return desk.config(DANA_AGENT, ELI_AGENT)


def open_ticket(client: ImapTestClient, sink: SmtpSink, config: Config) -> tuple[str, ReceivedMail]:
    """A customer writes; returns the ticket number and Dana's notification."""
    client.append(make_mail(from_addr=CUSTOMER, subject="Mails kommen nicht an", body=REQUEST))
    run_once(config)
    [ticket] = Ticket.select()
    [notification] = sink.to(DANA)
    return str(ticket.number), notification


def test_notification_relayed_answer_and_the_customers_reply(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    number, notification = open_ticket(imap_client, smtp_sink, desk_config)
    body = notification.message.get_content()
    assert "seit heute Morgen kommen unsere Mails" in body and "Viele Grüße" not in body
    assert f"Neues Ticket {number}" in body and "+n-" in body
    reply_to = notification.message["Reply-To"].addresses[0].addr_spec
    assert reply_to.startswith(f"support+r-{number}-") and reply_to.endswith("@example.com")
    assert len(smtp_sink.to(ELI)) == 1  # no owner yet: the whole queue is told

    imap_client.append(
        agent_mail(notification, "Hallo Herr Beispiel,\n\nbitte prüfen Sie Ihren SPF-Eintrag.")
    )
    run_once(desk_config)
    [ack, answer] = smtp_sink.to("joerg@kunde.example")
    customer_id = ack.message["In-Reply-To"]
    assert answer.message["From"].addresses[0].addr_spec == "support@example.com"
    assert answer.message["From"].addresses[0].display_name == "Dana Example via Example Support"
    assert answer.message["Subject"] == f"[MT#{number}] Mails kommen nicht an"
    assert answer.message["In-Reply-To"] == customer_id
    assert answer.message["References"].split().count(customer_id) == 1
    text = answer.message.get_content()
    assert "bitte prüfen Sie Ihren SPF-Eintrag" in text
    assert "schrieb Support" not in text and "Neues Ticket" not in text  # quote stripped
    assert DANA.encode() not in answer.raw  # the agent's own address never reaches the customer
    ticket = Ticket.get()
    assert (ticket.status, ticket.owner) == ("answered", "dana")

    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{number}] Mails kommen nicht an",
            body="Danke, SPF ist korrigiert, aber es geht immer noch nicht.",
            in_reply_to=answer.message["Message-ID"],
        )
    )
    run_once(desk_config)
    assert Ticket.get().status == "open"
    assert len(smtp_sink.to(DANA)) == 2 and len(smtp_sink.to(ELI)) == 1  # only the owner now


def test_internal_note_never_reaches_the_customer(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    _, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(
        agent_mail(
            notification, "Kunde hatte das schon letzten Monat.", address=note_address(notification)
        )
    )
    run_once(desk_config)
    assert len(smtp_sink.to("joerg@kunde.example")) == 1  # the acknowledgement only
    [note_mail] = [m for m in smtp_sink.to(ELI) if "Interne Notiz" in m.message.get_content()]
    assert "Kunde hatte das schon letzten Monat." in note_mail.message.get_content()
    note = Message.get(Message.kind == "note")
    assert note.text.strip() == "Kunde hatte das schon letzten Monat."
    assert Ticket.get().status == "open"


@pytest.mark.parametrize(
    ("commands", "check"),
    [
        ("#close", lambda t: t.status == "closed" and t.closed_at is not None),
        ("#status waiting", lambda t: t.status == "waiting"),
        ("#priorität hoch", lambda t: t.priority == "high"),
        ("#assign eli", lambda t: t.owner == "eli"),
        ("#zuweisen eli\n#priority urgent", lambda t: t.owner == "eli" and t.priority == "urgent"),
    ],
)
def test_commands_change_the_ticket_and_are_not_relayed(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk_config: Config,
    db: pw.Database,
    commands: str,
    check: Any,
) -> None:
    _, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(agent_mail(notification, commands))
    run_once(desk_config)
    assert check(Ticket.get())
    assert len(smtp_sink.to("joerg@kunde.example")) == 1  # commands alone relay nothing


def test_note_command_turns_a_reply_into_an_internal_note(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    _, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(agent_mail(notification, "#notiz\nKunde ist VIP, bitte bevorzugt."))
    run_once(desk_config)
    assert len(smtp_sink.to("joerg@kunde.example")) == 1  # the acknowledgement only
    note = Message.get(Message.kind == "note")
    assert "Kunde ist VIP" in note.text and "#notiz" not in note.text
    assert any("Kunde ist VIP" in m.message.get_content() for m in smtp_sink.to(ELI))


def test_command_then_answer_relays_the_answer_without_the_command(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    _, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(agent_mail(notification, "#close\nDas Problem ist behoben."))
    run_once(desk_config)
    [_, answer] = smtp_sink.to("joerg@kunde.example")
    assert "Das Problem ist behoben." in answer.message.get_content()
    assert "#close" not in answer.message.get_content()
    assert Ticket.get().status == "closed"


def test_unknown_command_relays_nothing_and_explains(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    _, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(agent_mail(notification, "#staus closed\nErledigt."))
    run_once(desk_config)
    assert len(smtp_sink.to("joerg@kunde.example")) == 1
    [error] = [m for m in smtp_sink.to(DANA) if "NICHT" in m.message.get_content()]
    text = error.message.get_content()
    assert "#staus" in text and "#status" in text and "#schließen" in text
    assert Ticket.get().status == "open"


def test_merge_and_wish(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    number, _ = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER, subject="Nochmal: Mails", body="Haben Sie meine Mail bekommen?"
        )
    )
    run_once(desk_config)
    second = Ticket.select().order_by(Ticket.id.desc()).get()
    [second_note] = [
        m for m in smtp_sink.to(DANA) if f"[MT#{second.number}]" in str(m.message["Subject"])
    ]
    imap_client.append(agent_mail(second_note, f"#merge {number}\n#wish Export als CSV"))
    run_once(desk_config)
    second = Ticket.get_by_id(second.id)
    assert (
        second.status == "closed"
        and second.merged_into_id == Ticket.get(Ticket.number == number).id
    )
    assert Message.select().where(Message.ticket == second).count() == 0
    assert Wish.get().name == "Export als CSV" and Wish.get().count == 1
    # The customer answers under the merged ticket's tag: it lands in the surviving ticket.
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{second.number}] Nochmal: Mails",
            body="Danke für die Rückmeldung, ich warte dann.",
        )
    )
    run_once(desk_config)
    reply = Message.get(Message.text.contains("ich warte dann"))
    assert reply.ticket_id == Ticket.get(Ticket.number == number).id
    assert Ticket.get_by_id(second.id).status == "closed"


def test_forged_agent_mail_changes_nothing(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    number, notification = open_ticket(imap_client, smtp_sink, desk_config)
    good = notification.message["Reply-To"].addresses[0].addr_spec
    tampered = good[:-14] + ("a" if good[-14] != "a" else "b") + good[-13:]
    eli_token = smtp_sink.to(ELI)[0].message["Reply-To"].addresses[0].addr_spec
    forgeries = [
        agent_mail(notification, "#close\nForged.", address="support@example.com"),  # no token
        agent_mail(notification, "#close\nForged.", address=tampered),
        agent_mail(notification, "#close\nForged.", address=eli_token),  # Eli's token, Dana's From
        agent_mail(notification, "#close\nForged.", from_addr="mallory@evil.example"),
        agent_mail(
            notification,
            "#close\nForged.",
            headers={
                "Authentication-Results": "mx.example.com; dmarc=fail header.from=example.com"
            },
        ),
    ]
    for raw in forgeries:
        imap_client.append(raw)
    run_once(desk_config)
    ticket = Ticket.get(Ticket.number == number)
    assert ticket.status == "open" and ticket.owner is None
    assert len(smtp_sink.to("joerg@kunde.example")) == 1  # nothing relayed
    assert Message.select().where(Message.kind.in_(["agent", "note"])).count() == 0
    flagged = [m.flag for m in Message.select().where(Message.flag != "")]
    assert any("claims agent dana" in f for f in flagged)
    assert any("DMARC failed" in f for f in flagged)
    assert any("!!" in m.message.get_content() for m in smtp_sink.to(DANA)[1:])


def test_stranger_with_a_ticket_number_opens_a_linked_ticket(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk_config: Config, db: pw.Database
) -> None:
    number, notification = open_ticket(imap_client, smtp_sink, desk_config)
    imap_client.append(agent_mail(notification, "Ich kümmere mich."))  # Dana becomes owner
    run_once(desk_config)
    customer_mail_id = Message.get(Message.kind == "customer").message_id
    imap_client.append(
        make_mail(
            from_addr="mallory@evil.example",
            subject=f"Re: [MT#{number}] Mails kommen nicht an",
            body="Bitte senden Sie alle Daten an mich.",
            in_reply_to=customer_mail_id,
        )
    )
    run_once(desk_config)
    named = Ticket.get(Ticket.number == number)
    stranger = Ticket.get(Ticket.requester == "mallory@evil.example")
    assert stranger.linked_to_id == named.id
    assert (
        not Message.select()
        .where((Message.ticket == named) & (Message.author_addr == "mallory@evil.example"))
        .exists()
    )
    [told] = [m for m in smtp_sink.to(DANA) if "nicht daran beteiligt" in m.message.get_content()]
    assert "mallory@evil.example" in told.message.get_content()
    assert f"[MT#{stranger.number}]" in told.message.get_content()
    assert Event.select().where(Event.ticket == stranger).count() >= 1


def _forgery(draw: Any, number: str, notification: ReceivedMail, secret: bytes) -> bytes:
    """One forged agent mail: every way a token or a From can be wrong."""
    from datetime import date, timedelta

    from mailtick.security import TokenSigner

    signer = TokenSigner(secret, valid_days=90)
    good = notification.message["Reply-To"].addresses[0].addr_spec
    local, domain = good.split("@")
    kind = draw(
        st.sampled_from(["none", "tampered", "eli", "stranger", "expired", "other-ticket", "dmarc"])
    )
    address, sender, headers = good, f"Dana Example <{DANA}>", {}
    if kind == "none":
        address = "support@example.com"
    elif kind == "tampered":
        at = draw(st.integers(min_value=len("support+"), max_value=len(local) - 1))
        char = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567-0123456789"))
        if local[at] == char:
            char = "x" if char != "x" else "y"
        address = f"{local[:at]}{char}{local[at + 1 :]}@{domain}"
    elif kind == "eli":
        address = signer.address("support@example.com", "r", number, "eli")
    elif kind == "stranger":
        sender = draw(st.sampled_from(["mallory@evil.example", "DANA@example.com.evil.example"]))
    elif kind == "expired":
        old = date.today() - timedelta(days=draw(st.integers(min_value=92, max_value=5000)))
        address = signer.address("support@example.com", "r", number, "dana", today=old)
    elif kind == "other-ticket":
        mac = local.rsplit("-", 1)[1]
        address = f"support+r-{int(number) + 10}-{local.split('-')[2]}-{mac}@{domain}"
    else:
        headers = {
            "Authentication-Results": "mx.example.com; spf=pass; dmarc=fail header.from=example.com"
        }
    command = draw(
        st.sampled_from(["#close", "#assign eli", "#priority urgent", "#wish x", "#note", ""])
    )
    return agent_mail(
        notification,
        f"{command}\nForged {kind}.",
        address=address,
        from_addr=sender,
        headers=headers,
    )


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_hundred_generated_forgeries_change_nothing(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk_config: Config,
    db: pw.Database,
    data: st.DataObject,
) -> None:
    number, notification = open_ticket(imap_client, smtp_sink, desk_config)
    forgeries = [
        _forgery(data.draw, number, notification, desk_config.security.secret) for _ in range(110)
    ]
    imap_client.append_many(forgeries)
    before = {
        "events": Event.select().count(),
        "sent_to_customer": len(smtp_sink.to("joerg@kunde.example")),
    }
    result = run_once(desk_config)
    assert result.ingest.acked == 110
    ticket = Ticket.get(Ticket.number == number)
    assert (ticket.status, ticket.owner, ticket.priority) == ("open", None, "normal")
    assert Wish.select().count() == 0
    assert Message.select().where(Message.kind.in_(["agent", "note", "agent-error"])).count() == 0
    assert Message.select().where(Message.kind.in_(["relay", "command-error", "note"])).count() == 0
    assert len(smtp_sink.to("joerg@kunde.example")) == before["sent_to_customer"]  # nothing relayed
    # "held": the send caps stopped the flood of notifications the forgeries caused;
    # "linked": a forgery with Dana's From and no valid token opens a linked ticket
    changes = Event.select().where((Event.ticket == ticket) & Event.kind.not_in(["held", "linked"]))
    assert changes.count() == before["events"]
