"""Our outgoing mail: what the customer's client shows, and that input cannot forge headers."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace

import pytest

from mailtick.answers import Composer, Reply

COMPOSER = Composer("Example Support <support@example.com>", "MT", "en")
REPLY = Reply(  # Jörg's ticket; each test changes what it is about
    number="10019",
    title="Mails kommen nicht an",
    language="de",
    to_addr="joerg@kunde.example",
    to_name="Jörg Beispiel",
    in_reply_to="<a@kunde.example>",
    references=("<z@kunde.example>",),
)


def _parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_acknowledgement_headers_read_back_as_written() -> None:
    out = COMPOSER.acknowledgement(replace(REPLY, title="Grüße " * 30))
    msg = _parsed(out.raw)
    assert msg["To"].addresses[0].display_name == "Jörg Beispiel"
    assert msg["Subject"] == "[MT#10019] " + ("Grüße " * 30).strip()  # long, encoded, folded
    assert msg["References"] == "<z@kunde.example> <a@kunde.example>"
    assert msg["Message-ID"] == out.message_id and msg["Content-Language"] == "de"
    assert "Jörg Beispiel" in msg.get_content() and all(
        len(line) <= 998 for line in out.raw.split(b"\r\n")
    )


@pytest.mark.parametrize(
    "evil", ["x\r\nBcc: victim@evil.example", "x\nBcc: victim@evil.example", "x\rBcc: v@e.example"]
)
def test_line_breaks_from_input_never_start_a_header(evil: str) -> None:
    out = COMPOSER.acknowledgement(replace(REPLY, to_name=evil, title=evil))
    msg = _parsed(out.raw)
    to_headers = msg.get_all("To")
    assert msg["Bcc"] is None and to_headers is not None and len(to_headers) == 1
    assert msg["To"].addresses[0].addr_spec == "joerg@kunde.example"


@pytest.mark.parametrize(
    "addr", ["a@b.example>, evil@x.example", "a b@c.example", "<a@b.example>", "a@b\r\n.example"]
)
def test_an_unusable_address_is_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="not a usable mail address"):
        COMPOSER.acknowledgement(replace(REPLY, to_addr=addr))
