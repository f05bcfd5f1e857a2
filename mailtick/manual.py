"""`mailtick new`: a ticket opened on a customer's behalf (a phone call, seed 001). DB + SMTP.

The call becomes an ordinary mail from the customer to the support address, built
here and recorded through the same stage as mail from IMAP, so it gets a number,
an acknowledgement to the customer and a notification to the agents; what is due
is then sent at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

from mailtick.answers import address_header, text_header
from mailtick.app import Daemon
from mailtick.config import Config
from mailtick.ingest.classify import Disposition
from mailtick.ingest.parse import parse
from mailtick.record.intake import Intake, Recorded
from mailtick.record.stage import record


def phone_mail(config: Config, customer: str, subject: str, body: str) -> bytes:
    """The call as a mail from the customer; `address_header` refuses a bad address."""
    support = Daemon.support_address(config)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = str(address_header(customer.strip().lower(), ""))
    msg["To"] = support
    msg["Subject"] = str(text_header(subject))
    msg["Date"] = format_datetime(datetime.now(UTC), usegmt=True)
    msg["Message-ID"] = make_msgid(idstring="phone", domain=support.rpartition("@")[2])
    msg["X-Mailtick-Source"] = "phone"
    msg.set_content(body)
    return msg.as_bytes()


async def open_for_customer(config: Config, customer: str, subject: str, body: str) -> Recorded:
    daemon = Daemon(config)
    await daemon.open()
    try:
        mail = parse(phone_mail(config, customer, subject, body), config.tickets.default_language)
        phoned = Disposition(automatic=False, reason="phone")
        intake = Intake.of(None, mail, phoned, daemon.pipeline.settings)
        recorded = await daemon.store.run(record, daemon.store.db, intake)
        await daemon.sender.drain()
        return recorded
    finally:
        await daemon.close()
