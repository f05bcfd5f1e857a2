"""Parsing and classifying incoming mail: the facts later stages rely on."""

from __future__ import annotations

import pytest
from servers import make_mail

from mailtick.ingest.classify import classify
from mailtick.ingest.imap import parse_fetch, uid_set
from mailtick.ingest.parse import parse


def test_headers_are_decoded_and_cleaned() -> None:
    raw = make_mail(
        from_addr="=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <Joerg@Kunde.Example>",
        subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
        body="Hallo zusammen, unsere Webseite ist seit gestern Abend nicht mehr erreichbar.",
        references=["<a@x>", "<b@x>"],
        in_reply_to="<b@x>",
        headers={"Cc": "Team <team@kunde.example>, boss@kunde.example"},
    )
    mail = parse(raw)
    assert (mail.from_name, mail.from_addr, mail.subject) == (
        "Jörg Müller",
        "joerg@kunde.example",
        "Grüße",
    )
    assert mail.references == ("<a@x>", "<b@x>") and mail.in_reply_to == ("<b@x>",)
    assert mail.cc == ("team@kunde.example", "boss@kunde.example")
    assert mail.language == "de" and mail.raw == raw


def test_mail_without_message_id_gets_a_stable_one() -> None:
    raw = make_mail(subject="x").replace(b"Message-ID:", b"X-Old-Id:")
    assert parse(raw).message_id == parse(raw).message_id
    assert parse(raw).message_id.endswith("@no-message-id.mailtick.invalid>")


def test_html_only_mail_becomes_text_and_attachments_keep_their_bytes() -> None:
    raw = make_mail(
        body="",
        html="<p>Our <b>invoice</b> is wrong</p><script>alert(1)</script>",
        attachments=[("rechnung.pdf", "application/pdf", b"%PDF-1.4 binary \x00\x01")],
    )
    mail = parse(raw)
    assert "invoice" in mail.text
    [attachment] = mail.attachments
    assert (attachment.filename, attachment.data) == ("rechnung.pdf", b"%PDF-1.4 binary \x00\x01")


@pytest.mark.parametrize(
    ("headers", "sender", "rule"),
    [
        ({"Auto-Submitted": "auto-replied"}, "a@x.example", "auto-submitted"),
        ({"Precedence": "bulk"}, "a@x.example", "precedence"),
        ({"List-Id": "<list.x.example>"}, "a@x.example", "list-id"),
        ({"X-Mailtick-Loop": "support@example.com 10019"}, "a@x.example", "our-loop-header"),
        ({}, "MAILER-DAEMON@x.example", "robot-sender"),
        ({"Auto-Submitted": "no"}, "a@x.example", "customer"),
    ],
)
def test_automatic_mail_is_recognised(headers: dict[str, str], sender: str, rule: str) -> None:
    mail = parse(make_mail(from_addr=sender, headers=headers))
    disposition = classify(mail, max_bytes=10**7)
    assert disposition.reason == rule and disposition.automatic == (rule != "customer")


def test_uid_sets_are_compact() -> None:
    assert uid_set([9, 1, 2, 3, 7, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"


def test_fetch_answers_are_read_in_either_item_order() -> None:
    lines = [
        b"1 FETCH (UID 7 BODY[] {3}",
        bytearray(b"abc"),
        b")",
        b"2 FETCH (BODY[] {2}",
        bytearray(b"de"),
        b" UID 9)",
        b"Fetch completed.",
    ]
    assert parse_fetch(lines) == [(7, b"abc"), (9, b"de")]
