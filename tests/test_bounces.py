"""Bounces of our own mail: linked to the outbox row, the address marked, never a ticket.

End to end on real Dovecot, aiosmtpd and SQLite/PostgreSQL: a customer's mail is
acknowledged, the acknowledgement comes back as a delivery report written the way
Postfix, Exim and qmail write them, and the daemon runs once more. Plus the parser on
those shapes and on the older plain-text forms (Exim without MIME, Exchange).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import peewee as pw
import pytest
from harness import SUPPORT, Desk, mailtick, run_once, write_config
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from servers import Dovecot, ImapTestClient, ReceivedMail, SmtpSink, make_mail

from mailtick.db import Address, Event, Message, Outbox, Ticket
from mailtick.ingest.classify import classify
from mailtick.ingest.dsn import ACTIONS, read_report
from mailtick.ingest.parse import parse
from mailtick.outcomes import Rejected

CUSTOMER = "joerg@kunde.example"
BODY = (
    "Guten Tag,\n\nunser Drucker im dritten Stock druckt seit gestern nur noch leere Seiten. "
    "Können Sie bitte jemanden vorbeischicken?\n\nViele Grüße\nJörg\n"
)


def _wire(text: str) -> bytes:
    """A mail as the MTA wrote it, with CRLF line ends."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def _headers(raw: bytes) -> str:
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()


def _as_received(raw: bytes) -> str:
    """Our mail as the receiving MTA saw it: its own Return-Path and Received on top."""
    trace = (
        "Return-Path: <support@example.com>\n"
        "Received: from mail.example.com (mail.example.com [198.51.100.10])\n"
        "\tby mx.kunde.example (Postfix) with ESMTPS id 4TvQ1k2Zb7z9sWn\n"
        "\tfor <joerg@kunde.example>; Tue, 12 Mar 2024 10:15:01 +0100 (CET)\n"
    )
    return trace + raw.replace(b"\r\n", b"\n").decode()


def postfix_dsn(returned: bytes, rcpt: str = CUSTOMER) -> bytes:
    """Postfix 3.x: "Undelivered Mail Returned to Sender", the returned mail's headers only."""
    boundary = "3F2A81C0123.1710234902/mx.kunde.example"
    return _wire(f"""Return-Path: <>
Delivered-To: support@example.com
Received: by mx.kunde.example (Postfix)
\tid 3F2A81C0123; Tue, 12 Mar 2024 10:15:02 +0100 (CET)
Date: Tue, 12 Mar 2024 10:15:02 +0100 (CET)
From: MAILER-DAEMON@mx.kunde.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: support@example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20240312091502.3F2A81C0123@mx.kunde.example>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.kunde.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<{rcpt}>: host mbox.kunde.example[192.0.2.25] said: 550 5.1.1
    <{rcpt}>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.kunde.example
X-Postfix-Queue-ID: 3F2A81C0123
X-Postfix-Sender: rfc822; support@example.com
Arrival-Date: Tue, 12 Mar 2024 10:15:01 +0100 (CET)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mbox.kunde.example
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User
    unknown in virtual mailbox table

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

{_headers(_as_received(returned).encode())}

--{boundary}--
""")


def postfix_delayed(returned: bytes) -> bytes:
    """Postfix's delay warning (delay_warning_time): Action delayed, Status 4.4.1."""
    boundary = "8C1F62A0B4.1710252902/mail.example.com"
    return _wire(f"""Return-Path: <>
Received: by mail.example.com (Postfix)
\tid 8C1F62A0B4; Tue, 12 Mar 2024 15:15:02 +0100 (CET)
Date: Tue, 12 Mar 2024 15:15:02 +0100 (CET)
From: MAILER-DAEMON@mail.example.com (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: support@example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20240312141502.8C1F62A0B4@mail.example.com>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mail.example.com.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than 4 hour(s).
It will be retried until it is 5 day(s) old.

                   The mail system

<{CUSTOMER}>: connect to mx.kunde.example[192.0.2.25]:25: Connection timed out

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.com
X-Postfix-Queue-ID: 8C1F62A0B4
X-Postfix-Sender: rfc822; support@example.com
Arrival-Date: Tue, 12 Mar 2024 10:15:01 +0100 (CET)

Final-Recipient: rfc822; {CUSTOMER}
Original-Recipient: rfc822;{CUSTOMER}
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.kunde.example[192.0.2.25]:25: Connection
    timed out
Will-Retry-Until: Sun, 17 Mar 2024 10:15:01 +0100 (CET)

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

{_headers(returned)}

--{boundary}--
""")


def exim_dsn(returned: bytes) -> bytes:
    """Exim 4.9x: "Mail delivery failed", X-Failed-Recipients, the whole mail returned."""
    boundary = "1710234902-eximdsn-1804289383"
    references = ""
    for line in _headers(returned).splitlines():
        if line.lower().startswith("message-id:"):
            references = line.split(":", 1)[1].strip()
    return _wire(f"""Return-path: <>
Envelope-to: support@example.com
Delivery-date: Tue, 12 Mar 2024 10:15:02 +0100
Received: from Debian-exim by mx.kunde.example with local (Exim 4.96)
\tid 1rk0Xe-0004Qa-2B
\tfor support@example.com;
\tTue, 12 Mar 2024 10:15:02 +0100
X-Failed-Recipients: {CUSTOMER}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx.kunde.example>
To: support@example.com
References: {references}
Content-Type: multipart/report; report-type=delivery-status; boundary={boundary}
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1rk0Xe-0004Qa-2B@mx.kunde.example>
Date: Tue, 12 Mar 2024 10:15:02 +0100

--{boundary}
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {CUSTOMER}
    host mbox.kunde.example [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<{CUSTOMER}>:
    552 5.2.2 Mailbox full

--{boundary}
Content-type: message/delivery-status

Reporting-MTA: dns; mx.kunde.example

Action: failed
Final-Recipient: rfc822;{CUSTOMER}
Status: 5.2.2
Remote-MTA: dns; mbox.kunde.example
Diagnostic-Code: smtp; 552 5.2.2 Mailbox full

--{boundary}
Content-type: message/rfc822

{_as_received(returned)}
--{boundary}--
""")


def qmail_bounce(returned: bytes) -> bytes:
    """qmail-send: plain text, no Message-ID of its own, the whole mail below a line."""
    return _wire(f"""Return-Path: <>
Received: (qmail 10000 invoked for bounce); 12 Mar 2024 09:15:02 -0000
Date: 12 Mar 2024 09:15:02 -0000
From: MAILER-DAEMON@mx.kunde.example
To: support@example.com
Subject: failure notice

Hi. This is the qmail-send program at mx.kunde.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{CUSTOMER}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{_as_received(returned)}""")


def exim_plain_bounce(returned: bytes) -> bytes:
    """Exim before 4.8x: no MIME, two failed addresses, X-Failed-Recipients."""
    return _wire(f"""Return-Path: <>
Received: from mail by mx.kunde.example with local (Exim 4.72)
\tid 1X58pT-0004bZ-Co
\tfor support@example.com; Thu, 10 Jul 2014 16:31:43 +0900
Date: Thu, 10 Jul 2014 16:31:43 +0900
Message-Id: <E1X58pT-0004bZ-Co@mx.kunde.example>
X-Failed-Recipients: {CUSTOMER},
  petra@kunde.example
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx.kunde.example>
To: support@example.com
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {CUSTOMER}
    SMTP error from remote mail server after RCPT TO:<{CUSTOMER}>:
    host mbox.kunde.example [192.0.2.153]: 550 5.1.1 <{CUSTOMER}>... User Unknown
  petra@kunde.example
    SMTP error from remote mail server after RCPT TO:<petra@kunde.example>:
    host mbox.kunde.example [192.0.2.153]: 550 5.2.1 <petra@kunde.example>... Disabled

------ This is a copy of the message, including all the headers. ------

{_as_received(returned)}""")


def exchange_plain_bounce(returned: bytes) -> bytes:
    """An Exchange 2003-style non-delivery report: plain text, the original's headers."""
    return _wire(f"""Return-Path: <>
From: postmaster@kunde.example
To: support@example.com
Subject: Undeliverable: Ihr Anliegen
Date: Tue, 12 Mar 2024 10:15:02 +0100
Message-ID: <ndr-4711@EX01.kunde.example>
MIME-Version: 1.0
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

{CUSTOMER}
The e-mail address you entered couldn't be found. Please check the recipient's
e-mail address and try to resend the message.

Diagnostic information for administrators:

Generating server: EX01.kunde.example

{CUSTOMER}
#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##

Original message headers:

{_headers(returned)}
""")


# -- the parser on its own ------------------------------------------------------------------

OURS = make_mail(
    from_addr=f"Example Support <{SUPPORT}>",
    to_addr=f"Jörg <{CUSTOMER}>",
    subject="[MT#10019] Drucker druckt leere Seiten",
    message_id="<171023490112.4242.1234567890123456789.MT10019@example.com>",
    in_reply_to="<customer-1@kunde.example>",
    references=["<customer-1@kunde.example>"],
    headers={"Auto-Submitted": "auto-replied"},
)
OUR_ID = "<171023490112.4242.1234567890123456789.MT10019@example.com>"


@pytest.mark.parametrize(
    ("shape", "form", "status", "diagnostic"),
    [
        (postfix_dsn, "rfc3464", "5.1.1", "smtp; 550 5.1.1 <joerg@kunde.example>: Recipient"),
        (exim_dsn, "rfc3464", "5.2.2", "smtp; 552 5.2.2 Mailbox full"),
        (qmail_bounce, "qmail", "5.1.1", "Sorry, no mailbox here by that name. (#5.1.1)"),
        (exim_plain_bounce, "not-delivered", "5.1.1", "SMTP error from remote mail server"),
        (exchange_plain_bounce, "undeliverable", "5.1.1", "#550 5.1.1 RESOLVER.ADR"),
    ],
)
def test_each_shape_names_our_mail_the_address_and_the_status(
    shape: Callable[[bytes], bytes], form: str, status: str, diagnostic: str
) -> None:
    mail = parse(shape(OURS))
    assert classify(mail, 10**7).automatic
    report = read_report(mail)
    assert report is not None and report.form == form and report.action == "failed"
    assert report.message_ids[0] == OUR_ID
    first = report.recipients[0]
    assert (first.address, first.action, first.status) == (CUSTOMER, "failed", status)
    assert first.diagnostic.startswith(diagnostic) and first.permanent


def test_exim_plain_bounce_lists_every_failed_address_with_its_reason() -> None:
    report = read_report(parse(exim_plain_bounce(OURS)))
    assert report is not None
    assert [(r.address, r.status) for r in report.recipients] == [
        (CUSTOMER, "5.1.1"),
        ("petra@kunde.example", "5.2.1"),
    ]
    assert report.recipients[1].diagnostic.endswith("<petra@kunde.example>... Disabled")


def test_delay_warning_is_not_a_failure() -> None:
    report = read_report(parse(postfix_delayed(OURS)))
    assert report is not None and report.action == "delayed"
    [recipient] = report.recipients
    assert (recipient.status, recipient.permanent) == ("4.4.1", False)
    assert recipient.diagnostic == (
        "X-Postfix; connect to mx.kunde.example[192.0.2.25]:25: Connection timed out"
    )
    assert report.reporter == "mail.example.com"


@pytest.mark.parametrize(
    ("sender", "headers", "body"),
    [  # automatic mail that is no delivery report: recorded as before, not read as a bounce
        ("ooo@kunde.example", {"Auto-Submitted": "auto-replied"}, "I am out of office."),
        ("MAILER-DAEMON@kunde.example", {}, "Your mailbox is almost full (95 %)."),
        ("jane@kunde.example", {"Return-Path": "<>"}, "Vacation until Monday."),
    ],
)
def test_other_automatic_mail_is_no_delivery_report(
    sender: str, headers: dict[str, str], body: str
) -> None:
    assert read_report(parse(make_mail(from_addr=sender, headers=headers, body=body))) is None


@pytest.mark.parametrize(
    ("sender", "headers", "rule"),
    [
        ("bounce@kunde.example", {"Return-Path": "< >"}, "null-return-path"),
        ("bounce@kunde.example", {"Return-Path": "<MAILER-DAEMON>"}, "null-return-path"),
        ("Mail Delivery Subsystem <MailerDaemon@kunde.example>", {}, "robot-sender"),
        ("relay@kunde.example", {"X-Failed-Recipients": CUSTOMER}, "x-failed-recipients"),
    ],
)
def test_every_bounce_signal_makes_a_mail_automatic(
    sender: str, headers: dict[str, str], rule: str
) -> None:
    assert classify(parse(make_mail(from_addr=sender, headers=headers)), 10**7).reason == rule


def test_a_report_from_an_ordinary_looking_address_is_automatic_by_its_content_type() -> None:
    """Exchange Online sends its reports from MicrosoftExchange<hex>@ without Auto-Submitted."""
    raw = postfix_dsn(OURS).replace(
        b"MAILER-DAEMON@mx.kunde.example (Mail Delivery System)",
        b"Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@kunde.example>",
    )
    raw = raw.replace(b"Return-Path: <>\r\n", b"").replace(b"Auto-Submitted: auto-replied\r\n", b"")
    mail = parse(raw)
    assert classify(mail, 10**7).reason == "delivery-report"
    report = read_report(mail)
    assert report is not None and report.message_ids[0] == OUR_ID


def test_a_customer_forwarding_a_bounce_is_no_delivery_report() -> None:
    """A person asking about a bounce they got is a customer with a question."""
    text = "Hallo, ich bekomme diese Meldung:\n\nUndelivered Mail Returned to Sender\n550 5.1.1"
    mail = parse(make_mail(from_addr=CUSTOMER, subject="Fwd: Undelivered Mail", body=text))
    assert not classify(mail, 10**7).automatic and read_report(mail) is None


# -- end to end -----------------------------------------------------------------------------


def _acknowledged(desk: Desk, client: ImapTestClient) -> ReceivedMail:
    """A customer's mail opens a ticket; returns the acknowledgement the sink received."""
    client.append(make_mail(from_addr=f"Jörg Beispiel <{CUSTOMER}>", subject="Drucker", body=BODY))
    run_once(desk.config())
    [ack] = desk.sink.wait_for(1)
    return ack


@pytest.mark.parametrize("shape", [postfix_dsn, exim_dsn, qmail_bounce])
def test_bounce_of_our_acknowledgement_marks_row_and_address_and_opens_no_ticket(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk: Desk,
    db: pw.Database,
    caplog: pytest.LogCaptureFixture,
    shape: Callable[[bytes], bytes],
) -> None:
    ack = _acknowledged(desk, imap_client)
    ack_id = ack.message["Message-ID"]
    [ticket] = Ticket.select()

    imap_client.append(shape(ack.raw))
    with caplog.at_level(logging.INFO, logger="mailtick.ingest"):
        result = run_once(desk.config())

    assert (result.ingest.fetched, result.ingest.acked, result.send.sent) == (1, 1, 0)
    assert Ticket.select().count() == 1 and len(smtp_sink.messages) == 1  # no answer to it
    assert imap_client.count("INBOX") == 0 and imap_client.count("Processed") == 2
    sent = Message.get(Message.message_id == ack_id)
    row = Outbox.get(Outbox.message == sent)
    assert row.status == "bounced" and row.last_error.startswith("bounced: 5.")
    address = Address.get_by_id(CUSTOMER)
    assert address.bouncing and address.bounces == 1
    assert address.last_bounce == row.last_error.removeprefix("bounced: ")
    bounce = Message.get(Message.kind == "bounce")
    assert bounce.ticket_id == ticket.id and bounce.direction == "in"
    assert bounce.thread_rule == "bounce" and ack_id in bounce.thread_detail
    [event] = Event.select().where(Event.kind == "bounced")
    assert event.ticket.id == ticket.id and ack_id in event.detail and CUSTOMER in event.detail
    [line] = [r.getMessage() for r in caplog.records if bounce.message_id in r.getMessage()]
    assert line.startswith("bounce INBOX/")
    assert f"MT#{ticket.number} (bounce: ack to {CUSTOMER} failed 5." in line
    assert "address marked bouncing" in line

    shown = desk.show(ticket.number)
    assert f"!! mail to {CUSTOMER} bounces: 1 bounce(s)" in shown
    assert f"[bounced] our ack {ack_id} to {CUSTOMER} bounced: 5." in shown
    assert f"to {CUSTOMER}: bounced after 1 attempt(s) bounced: 5." in shown
    assert "(bounce, threaded by bounce)" in shown

    # The customer writes again: the address works, the mark goes; it is on the ticket.
    imap_client.append(
        make_mail(
            from_addr=CUSTOMER,
            subject=f"AW: [MT#{ticket.number}] Drucker",
            body="Mein Postfach war voll, jetzt geht es wieder.",
        )
    )
    run_once(desk.config())
    assert not Address.get_by_id(CUSTOMER).bouncing and Ticket.select().count() == 1
    shown = desk.show(ticket.number)
    assert "!! mail to" not in shown
    assert f"[reachable] {CUSTOMER} wrote again" in shown


def test_delay_warning_only_adds_an_event(
    imap_client: ImapTestClient, smtp_sink: SmtpSink, desk: Desk, db: pw.Database
) -> None:
    ack = _acknowledged(desk, imap_client)
    [ticket] = Ticket.select()
    imap_client.append(postfix_delayed(ack.raw))
    result = run_once(desk.config())

    assert result.ingest.acked == 1 and len(smtp_sink.messages) == 1
    assert Ticket.select().count() == 1
    row = Outbox.get(Outbox.message == Message.get(Message.message_id == ack.message["Message-ID"]))
    assert row.status == "sent" and Address.get_or_none(Address.address == CUSTOMER) is None
    assert Message.get(Message.kind == "bounce").ticket_id == ticket.id
    shown = desk.show(ticket.number)
    assert "[delivery-delayed] our ack" in shown and "4.4.1" in shown
    assert "!! mail to" not in shown


def test_delivery_report_about_no_mail_of_ours_is_acked_and_opens_nothing(
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    desk: Desk,
    db: pw.Database,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Backscatter: a forged mail in our name bounced somewhere and came back to us."""
    forged = make_mail(
        from_addr=SUPPORT,
        to_addr="nobody@elsewhere.example",
        subject="Cheap watches",
        message_id="<forged-1@spam.example>",
    )
    imap_client.append(postfix_dsn(forged, rcpt="nobody@elsewhere.example"))
    with caplog.at_level(logging.INFO, logger="mailtick.ingest"):
        result = run_once(desk.config())

    assert (result.ingest.fetched, result.ingest.acked, result.send.sent) == (1, 1, 0)
    assert Ticket.select().count() == 0 and Message.select().count() == 0
    assert Address.select().count() == 0 and smtp_sink.messages == []
    assert imap_client.count("INBOX") == 0 and imap_client.count("Processed") == 1
    [line] = [r.getMessage() for r in caplog.records if "20240312091502" in r.getMessage()]
    assert (
        line.startswith("ignored ")
        and (
            "delivery report for no mail of ours (Final-Recipient nobody@elsewhere.example, "
            "about <forged-1@spam.example>"
        )
        in line
    )


def test_show_json_lists_the_bouncing_address(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    desk = Desk(dovecot, smtp_sink, sqlite_url, tmp_path)
    ack = _acknowledged(desk, imap_client)
    imap_client.append(postfix_dsn(ack.raw))
    run_once(desk.config())
    config = write_config(tmp_path / "config.toml", desk.settings())
    number = json.loads(mailtick("tickets", "--json", "-c", str(config)).stdout)[0]["number"]
    shown = json.loads(mailtick("show", number, "--json", "-c", str(config)).stdout)
    [bouncing] = shown["bouncing"]
    assert (bouncing["address"], bouncing["bounces"]) == (CUSTOMER, 1)
    assert bouncing["last_bounce"].startswith("5.1.1 smtp; 550 5.1.1")
    kinds = [(m["direction"], m["kind"]) for m in shown["thread"]]
    assert kinds == [("in", "customer"), ("out", "ack"), ("in", "bounce")]
    assert shown["thread"][1]["delivery"]["status"] == "bounced"


TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


@examples(max_examples=150, deadline=None)
@given(
    status=st.text(TEXT, max_size=80),
    charset=st.sampled_from(["utf-8", "x-unknown", "utf-8\x00", '"broken', "utf-16", ""]),
    body=st.text(TEXT, max_size=400),
    encoding=st.sampled_from(["7bit", "base64", "quoted-printable", "bogus"]),
)
def test_hostile_reports_are_read_without_error(
    status: str, charset: str, body: str, encoding: str
) -> None:
    """Whatever a report holds, reading it never raises: the mail is recorded or ignored."""
    raw = _wire(f"""From: MAILER-DAEMON@mx.kunde.example
Return-Path: <>
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain; charset="{charset}"
Content-Transfer-Encoding: {encoding}

{body}
--b
Content-Type: message/delivery-status
Content-Transfer-Encoding: {encoding}

Reporting-MTA: dns; {status}

Final-Recipient: {status}
Action: {status}
Status: {status}

--b
Content-Type: text/rfc822-headers; charset="{charset}"

Message-ID: {status}
--b--
""")
    for variant in (raw, raw.replace(b"multipart/report", b"text/plain")):
        try:
            mail = parse(variant)
        except Rejected:  # mail-parser gave up: quarantined before the record stage
            continue
        report = read_report(mail)
        assert report is None or all(r.action in ACTIONS for r in report.recipients)
