"""`mailtick parse FILE.eml`: how a mail is seen, and where it would thread, without writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from servers import make_mail

from mailtick.answers import Composer
from mailtick.config import DriftConfig, LimitsConfig, TicketsConfig
from mailtick.db import Message, Ticket, open_database
from mailtick.ingest.classify import classify
from mailtick.ingest.parse import parse
from mailtick.inspect import describe_mail, parse_command
from mailtick.record.intake import Intake, Settings
from mailtick.record.stage import record

OUTLOOK_DE = """\
Hallo Frau Schneider,

vielen Dank für die schnelle Rückmeldung. Die MX-Einträge habe ich angepasst, allerdings
kommen Mails von t-online.de weiterhin nicht an. Im Anhang finden Sie den Bounce.

Mit freundlichen Grüßen

Thomas Berger
Berger & Klein Steuerberatung
Tel. +49 89 3838 2710

-----Ursprüngliche Nachricht-----
Von: Hostwerk Support <support@hostwerk.example>
Gesendet: Montag, 4. November 2024 09:12
An: Thomas Berger <t.berger@berger-klein.example>
Betreff: [MT#10017] Mails kommen nicht an

Guten Tag Herr Berger,

bitte prüfen Sie die MX-Einträge Ihrer Domain.
"""


def outlook_reply(
    subject: str = "AW: [MT#10017] Mails kommen nicht an", in_reply_to: str | None = None
) -> bytes:
    return make_mail(
        from_addr="Thomas Berger <t.berger@berger-klein.example>",
        to_addr="Hostwerk Support <support@hostwerk.example>",
        subject=subject,
        body=OUTLOOK_DE,
        in_reply_to=in_reply_to,
        headers={"Authentication-Results": "mx.hostwerk.example; spf=pass"},
        attachments=[("bounce.pdf", "application/pdf", b"%PDF-1.4 bounce")],
    )


def test_german_outlook_reply_is_split_and_described() -> None:
    report = describe_mail(outlook_reply(), "en")
    assert report["visible"] == (
        "Hallo Frau Schneider,\n\n"
        "vielen Dank für die schnelle Rückmeldung. Die MX-Einträge habe ich angepasst, allerdings\n"
        "kommen Mails von t-online.de weiterhin nicht an. Im Anhang finden Sie den Bounce."
    )
    assert report["signature"] == (
        "Mit freundlichen Grüßen\n\nThomas Berger\nBerger & Klein Steuerberatung\n"
        "Tel. +49 89 3838 2710"
    )
    assert report["quoted"].startswith("-----Ursprüngliche Nachricht-----\nVon: Hostwerk")
    assert report["quoted"].endswith("bitte prüfen Sie die MX-Einträge Ihrer Domain.")
    assert (report["quote_rule"], report["signature_rule"]) == ("original-message-de", "sign-off")
    assert report["language"] == "de"
    assert (report["automatic"], report["automatic_rule"]) == (False, "customer")
    assert report["from"] == {"name": "Thomas Berger", "address": "t.berger@berger-klein.example"}
    assert report["headers"]["Subject"] == "AW: [MT#10017] Mails kommen nicht an"
    assert report["headers"]["Authentication-Results"] == "mx.hostwerk.example; spf=pass"
    assert report["headers"]["Auto-Submitted"] is None
    assert report["attachments"] == [{"name": "bounce.pdf", "type": "application/pdf", "size": 15}]
    json.dumps(report)  # the --json form needs nothing special


def test_auto_reply_is_automatic_with_its_rule() -> None:
    raw = make_mail(
        subject="Abwesenheitsnotiz: [MT#10017] Mails kommen nicht an",
        body="Ich bin bis zum 11.11. nicht im Büro und lese meine Mails nicht.",
        headers={"Auto-Submitted": "auto-replied"},
    )
    report = describe_mail(raw, "en")
    assert (report["automatic"], report["automatic_rule"]) == (True, "auto-replied")
    assert report["answer"] is False
    assert report["headers"]["Auto-Submitted"] == "auto-replied"


def test_size_limit_is_reported_not_raised() -> None:
    report = describe_mail(outlook_reply(), "en", max_bytes=100)
    assert report["too_big"] and report["automatic_rule"] == "customer"


# --- would-thread --------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> tuple[str, Ticket, str]:
    """A SQLite database holding one ticket; returns its URL, the ticket and the first mail's id."""
    url = f"sqlite:///{tmp_path}/x.db"
    db = open_database(url)
    first = parse(make_mail(subject="Mails kommen nicht an", body="Seit heute kommt nichts an."))
    composer = Composer("Support <support@example.com>", "MT", "de")
    settings = Settings(TicketsConfig(), DriftConfig(), LimitsConfig(), composer)
    recorded = record(db, Intake.of(None, first, classify(first, 10**7), settings))
    ticket = Ticket.get(Ticket.number == recorded.ticket_number)
    db.close()
    return url, ticket, first.message_id


def run(capsys: pytest.CaptureFixture[str], eml: Path, url: str | None, as_json: bool) -> str:
    assert parse_command(eml, as_json, url, "MT") == 0
    return capsys.readouterr().out


def test_reply_would_thread_by_in_reply_to_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: tuple[str, Ticket, str]
) -> None:
    url, ticket, first_id = database
    eml = tmp_path / "reply.eml"
    eml.write_bytes(outlook_reply(subject="AW: Mails kommen nicht an", in_reply_to=first_id))
    before = (Message.select().count(), Ticket.select().count())
    report = json.loads(run(capsys, eml, url, as_json=True))
    assert report["thread"] == {
        "ticket": ticket.number,
        "rule": "in-reply-to",
        "detail": first_id,
        "reopen": False,
        "link_to": None,
        "already_stored": False,
    }
    open_database(url)
    assert (Message.select().count(), Ticket.select().count()) == before


def test_subject_tag_threads_and_the_text_form_names_ticket_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: tuple[str, Ticket, str]
) -> None:
    url, ticket, _first_id = database
    eml = tmp_path / "tagged.eml"
    eml.write_bytes(outlook_reply(subject=f"AW: [MT#{ticket.number}] Mails kommen nicht an"))
    text = run(capsys, eml, url, as_json=False)
    assert f"Would thread:           MT#{ticket.number} by subject-tag ({ticket.number})" in text
    assert "Automatic:              no (customer)" in text
    assert "--- quoted (original-message-de) ---" in text


def test_unknown_mail_would_open_a_new_ticket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: tuple[str, Ticket, str]
) -> None:
    url, _ticket, _first_id = database
    eml = tmp_path / "new.eml"
    eml.write_bytes(make_mail(subject="WLAN im Lager", body="Das WLAN im Lager ist weg."))
    report = json.loads(run(capsys, eml, url, as_json=True))
    assert (report["thread"]["ticket"], report["thread"]["rule"]) == (None, "new")


def test_without_database_no_thread_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = tmp_path / "reply.eml"
    eml.write_bytes(outlook_reply())
    report = json.loads(run(capsys, eml, None, as_json=True))
    assert "thread" not in report and report["language"] == "de"


def test_missing_sqlite_file_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = tmp_path / "reply.eml"
    eml.write_bytes(outlook_reply())
    missing = tmp_path / "none.db"
    assert parse_command(eml, True, f"sqlite:///{missing}", "MT") == 1
    assert not missing.exists()
    assert "no database at" in capsys.readouterr().err


def test_unreadable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_command(tmp_path / "absent.eml", False, None, "MT") == 1
    assert "absent.eml" in capsys.readouterr().err
