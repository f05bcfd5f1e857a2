"""Hostile mail against a desk with agents: no hijack through an agent's From, no leaked reply
token, no From read two ways (real Dovecot, aiosmtpd, SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import peewee as pw
import pytest
from harness import DANA, DANA_AGENT, Desk, run_once
from servers import ImapTestClient, ReceivedMail, SmtpSink, make_mail

from mailtick.config import Config
from mailtick.db import Event, Message, Participant, Ticket
from mailtick.ingest.parse import read_from
from mailtick.record.leaks import Cut, cut_leaks

CUSTOMER = "joerg@kunde.example"
MALLORY = "mallory@evil.example"
TOKEN = re.compile(r"support\+[rn]-", re.IGNORECASE)


@pytest.fixture
def config(desk: Desk, db: pw.Database) -> Config:
    """A desk with one agent, Dana; the database open for the test's own queries."""
    return desk.config(DANA_AGENT)


def open_ticket(client: ImapTestClient, sink: SmtpSink, config: Config) -> tuple[Ticket, str]:
    """Jörg writes; returns his ticket and the text of Dana's notification's Reply-To."""
    client.append(
        make_mail(
            from_addr=f"Jörg Beispiel <{CUSTOMER}>",
            subject="Mails kommen nicht an",
            body="Guten Tag,\n\nunsere Mails kommen mit 550 zurück.\n\nViele Grüße\nJörg\n",
        )
    )
    run_once(config)
    [notification] = sink.to(DANA)
    return Ticket.get(), notification.message["Reply-To"].addresses[0].addr_spec


# -- hijack through an agent's From ---------------------------------------------------------


def test_an_agents_from_without_token_cannot_write_into_or_reopen_a_ticket(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config
) -> None:
    ticket, _ = open_ticket(imap_client, smtp_sink, config)
    forged = make_mail(
        from_addr=f"Dana Example <{DANA}>",
        subject=f"Re: [MT#{ticket.number}] Mails kommen nicht an",
        body="Bitte schicken Sie die Zugangsdaten an meine Kollegin.",
        headers={"Cc": MALLORY},
    )
    imap_client.append(forged)
    run_once(config)
    assert (
        Message.select().where((Message.ticket == ticket) & (Message.direction == "in")).count()
        == 1
    )
    assert not Participant.select().where(Participant.address == MALLORY).exists()
    linked = Ticket.get(Ticket.linked_to == ticket)
    assert "claims agent dana" in Message.get(Message.ticket == linked).flag
    told = [m for m in smtp_sink.to(DANA) if f"[MT#{linked.number}]" in m.message.get_content()]
    assert told, "the ticket's agents are told of the linked ticket"

    # Mallory, copied in by the forgery, is nobody's participant: her mail with A's tag
    # opens a ticket of her own.
    imap_client.append(
        make_mail(from_addr=MALLORY, subject=f"Re: [MT#{ticket.number}] Mails kommen nicht an")
    )
    run_once(config)
    assert (
        not Message.select()
        .where((Message.ticket == ticket) & (Message.author_addr == MALLORY))
        .exists()
    )

    # The same kind of mail on a closed ticket does not reopen it.
    Ticket.update(status="closed", closed_at=Ticket.updated_at).where(
        Ticket.id == ticket.id
    ).execute()
    imap_client.append(forged.replace(b"@customer.example>", b"@customer.example.2>", 1))
    run_once(config)
    assert Ticket.get_by_id(ticket.id).status == "closed"
    assert not Event.select().where((Event.ticket == ticket) & (Event.kind == "reopened")).exists()


# -- a reply token leaked through a quote the stripper does not know -------------------------

# Outlook's header block above the quoted notification, in the languages the attack suite
# used and more: (separator, From, Sent, To, Subject).
OUTLOOK_BLOCKS = {
    "es": ("-----Mensaje original-----", "De", "Enviado el", "Para", "Asunto"),
    "nl": ("-----Oorspronkelijk bericht-----", "Van", "Verzonden", "Aan", "Onderwerp"),
    "it": ("-----Messaggio originale-----", "Da", "Inviato", "A", "Oggetto"),
    "pt": ("-----Mensagem original-----", "De", "Enviada em", "Para", "Assunto"),
    "pl": ("-----Wiadomość oryginalna-----", "Od", "Wysłano", "Do", "Temat"),
    "sv": ("-----Ursprungligt meddelande-----", "Från", "Skickat", "Till", "Ämne"),
    "fr": ("-----Message d'origine-----", "De", "Envoyé", "À", "Objet"),
    "da": ("-----Oprindelig meddelelse-----", "Fra", "Sendt", "Til", "Emne"),
    "fi": ("-----Alkuperäinen viesti-----", "Lähettäjä", "Lähetetty", "Vastaanottaja", "Aihe"),
    "cs": ("-----Původní zpráva-----", "Od", "Odesláno", "Komu", "Předmět"),
    "tr": ("-----Orijinal İleti-----", "Kimden", "Gönderildi", "Kime", "Konu"),
    "ru": ("-----Исходное сообщение-----", "От", "Отправлено", "Кому", "Тема"),
    "hu": ("-----Eredeti üzenet-----", "Feladó", "Elküldve", "Címzett", "Tárgy"),
}


def outlook_reply(notification: ReceivedMail, reply_to: str, language: str) -> bytes:
    separator, sender, sent, recipient, subject = OUTLOOK_BLOCKS[language]
    quoted = notification.message.get_content()
    body = (
        "Sehr geehrter Herr Beispiel,\n\nbitte prüfen Sie den SPF-Eintrag Ihrer Domain.\n\n"
        f"{separator}\n{sender}: Jörg Beispiel via Example Support <support@example.com>\n"
        f"{sent}: Montag, 23. November 2026 09:12\n{recipient}: Dana Example <{DANA}>\n"
        f"{subject}: {notification.message['Subject']}\n\n{quoted}\n"
    )
    return make_mail(
        from_addr=f"Dana Example <{DANA}>",
        to_addr=reply_to,
        subject="AW: " + str(notification.message["Subject"]),
        body=body,
        in_reply_to=notification.message["Message-ID"],
    )


@pytest.mark.parametrize("language", sorted(OUTLOOK_BLOCKS))
def test_a_relay_never_carries_our_reply_addresses_or_the_agents_address(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config, language: str
) -> None:
    ticket, reply_to = open_ticket(imap_client, smtp_sink, config)
    [notification] = smtp_sink.to(DANA)
    assert TOKEN.search(notification.message.get_content())  # the quote carries a token
    imap_client.append(outlook_reply(notification, reply_to, language))
    run_once(config)
    [_, relay] = smtp_sink.to(CUSTOMER)
    text = relay.message.get_content()
    assert "bitte prüfen Sie den SPF-Eintrag" in text
    assert not TOKEN.search(relay.raw.decode("utf-8", "replace"))
    assert DANA not in relay.raw.decode("utf-8", "replace")
    _, sender, sent, recipient, _ = OUTLOOK_BLOCKS[language]
    for header in (sender, sent, recipient):  # the whole header block went with it
        assert f"\n{header}: " not in text
    assert Ticket.get_by_id(ticket.id).status == "answered"


# -- a From that reads two ways --------------------------------------------------------------


def test_a_from_read_two_ways_never_acts_even_with_a_leaked_token(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config
) -> None:
    """`From: dana@example.com <mallory@evil.example>`: Python's parseaddr reads Dana, the
    MTA (DMARC header.from=evil.example) and mail clients read Mallory."""
    ticket, reply_to = open_ticket(imap_client, smtp_sink, config)
    raw = make_mail(
        from_addr="placeholder@example.net",
        to_addr=reply_to,
        subject=f"Re: [MT#{ticket.number}] Mails kommen nicht an",
        body="#close\n#priority low\nErledigt.",
        headers={"Authentication-Results": "mx.example.com; dmarc=pass header.from=evil.example"},
    )
    imap_client.append(raw.replace(b"placeholder@example.net", f"{DANA} <{MALLORY}>".encode(), 1))
    run_once(config)
    after = Ticket.get_by_id(ticket.id)
    assert (after.status, after.priority) == ("open", "normal")
    assert len(smtp_sink.to(CUSTOMER)) == 1  # the acknowledgement only: nothing relayed
    stored = Message.get(Message.author_addr == MALLORY)
    assert "ambiguous From" in stored.flag and stored.ticket_id != ticket.id


# -- the pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "address", "problem"),
    [
        ("Dana Example <dana@example.com>", DANA, ""),
        ("dana@example.com", DANA, ""),
        ('"dana@example.com" <dana@example.com>', DANA, ""),  # a name that is the same address
        ("dana@example.com <mallory@evil.example>", MALLORY, "several"),
        ('"dana@example.com" <mallory@evil.example>', MALLORY, "display name"),
        ("=?utf-8?q?dana=40example.com?= <mallory@evil.example>", MALLORY, "display name"),
        ("dana@example.com, mallory@evil.example", DANA, "several"),
        ("Dana <dana@example.com> <mallory@evil.example>", DANA, "several"),
        ("mallory@evil.example (dana@example.com)", MALLORY, "display name"),
    ],
)
def test_read_from_takes_the_angled_address_and_names_every_second_reading(
    header: str, address: str, problem: str
) -> None:
    _, addr, found = read_from([header])
    assert addr == address
    assert (problem in found) if problem else found == ""


def test_two_from_headers_are_a_problem() -> None:
    assert read_from([DANA, MALLORY])[2] == "2 From headers"


def test_cut_leaks_keeps_text_without_our_addresses() -> None:
    text = "Hallo,\n\nSchreiben Sie an support@example.com.\n"
    assert cut_leaks(text, "support@example.com", [DANA]) == Cut(text, "")


def test_cut_leaks_cuts_before_the_quote_header_block_and_its_separator() -> None:
    text = (
        "Antwort.\n\n________________________________\nVon: X via Support <support@example.com>\n"
        f"An: Dana <{DANA}>\nBetreff: Hallo\n\nNotiz an support+n-10019-1-abc@example.com\n"
    )
    cut = cut_leaks(text, "support@example.com", [DANA])
    assert cut.text == "Antwort.\n" and "agent's address in line 5" in cut.reason


# -- headers we write stay within the line limit (RFC 5321: 998 octets) ---------------------


def test_a_long_japanese_name_and_a_long_umlaut_file_name_still_reach_everyone(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config
) -> None:
    """aiosmtpd refuses a line over 1,001 octets with "500 Line too long", as Postfix does."""
    name = "山田太郎" * 40  # 160 characters
    filename = "ä" * 190 + ".pdf"  # 1,140 octets percent-encoded
    imap_client.append(
        make_mail(
            from_addr=f'"{name}" <taro@kunde.example>',
            subject="Rechnung fehlt",
            attachments=[(filename, "application/pdf", b"%PDF-1.4 x")],
        )
    )
    run_once(config)
    [ack] = smtp_sink.to("taro@kunde.example")
    [notification] = smtp_sink.to(DANA)
    for mail in (ack, notification):
        assert max(len(line) for line in mail.raw.splitlines()) <= 998
    shown = notification.message["From"].addresses[0].display_name
    assert shown.startswith("山田太郎山田") and len(shown) < 100  # a long name is cut, not refused
    [attachment] = list(notification.message.iter_attachments())
    assert attachment.get_filename() == filename


# -- active and disguised attachments ---------------------------------------------------------

SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
)
HTML = b"<html><body><p>Rechnung</p><script>steal()</script></body></html>"


def test_active_and_disguised_attachments_reach_agents_and_customers_inert(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config
) -> None:
    imap_client.append(
        make_mail(
            from_addr=f"Jörg Beispiel <{CUSTOMER}>",
            subject="Anhänge",
            attachments=[
                ("image.svg", "image/svg+xml", SVG),
                ("page.html.", "application/octet-stream", HTML),
                ("rechnung\u202efdp.exe", "application/pdf", b"MZ\x90\x00"),
                ("scan.pdf", "application/pdf", HTML),  # HTML that calls itself a PDF
            ],
        )
    )
    run_once(config)
    [notification] = smtp_sink.to(DANA)
    got = {a.get_filename(): a for a in notification.message.iter_attachments()}
    assert set(got) == {"image.svg.txt", "page.html", "rechnungfdp.exe", "scan.pdf"}
    assert got["image.svg.txt"].get_content_type() == "application/octet-stream"
    for name in ("page.html", "scan.pdf"):
        assert got[name].get_content_type() == "text/html"
        assert b"<script" not in got[name].get_payload(decode=True)

    reply_to = notification.message["Reply-To"].addresses[0].addr_spec
    imap_client.append(
        make_mail(
            from_addr=f"Dana Example <{DANA}>",
            to_addr=reply_to,
            subject="Re: " + str(notification.message["Subject"]),
            body="Unser Logo anbei.",
            attachments=[("logo.svg", "image/svg+xml", SVG)],
        )
    )
    run_once(config)
    relay = smtp_sink.to(CUSTOMER)[-1]
    [logo] = list(relay.message.iter_attachments())
    assert (logo.get_filename(), logo.get_content_type()) == (
        "logo.svg.txt",
        "application/octet-stream",
    )


# -- backscatter ----------------------------------------------------------------------------


def test_an_acknowledgement_repeats_no_link_and_little_of_a_forged_senders_text(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, config: Config
) -> None:
    """A spammer forging a stranger's From makes us acknowledge to the stranger: the
    acknowledgement must not carry the spammer's link or their long text."""
    spam = "Gewinn! Jetzt klicken: http://cheap-pills.example/buy?id=1 oder www.spam.example " * 3
    imap_client.append(
        make_mail(from_addr='"Visit cheap-pills.example" <victim@kunde.example>', subject=spam)
    )
    run_once(config)
    [ack] = smtp_sink.to("victim@kunde.example")
    sent = ack.message.get_content() + str(ack.message["Subject"]) + str(ack.message["To"])
    for link in ("http://", "cheap-pills.example", "www.spam.example"):
        assert link not in sent
    assert len(str(ack.message["Subject"])) <= len("[MT#10019] ") + 60
    assert "cheap-pills[.]example" in str(ack.message["Subject"])  # still readable
