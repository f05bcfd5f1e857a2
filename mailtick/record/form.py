"""Stage `record`, step `contact-form`: a web form's mail is the visitor's. Nothing.

A contact form sends from the website's own address (`tickets.form_senders`) with
the visitor in Reply-To. That visitor is the requester: they get the
acknowledgement and every answer, and their replies thread as a participant's. A
Reply-To that reads two ways, or none, leaves the mail the website's. A form never
speaks for an agent, whatever its Reply-To says.
"""

from __future__ import annotations

from mailtick.answers import usable_address
from mailtick.ingest.parse import read_from
from mailtick.record.intake import Intake


def take_form_visitor(intake: Intake) -> Intake | None:
    """The intake with the visitor as sender; None (pass) for any other mail."""
    mail = intake.mail
    if mail.from_addr not in intake.settings.tickets.form_senders:
        return None
    reply_to = mail.header_values("Reply-To")
    if not reply_to:
        return None
    name, addr, problem = read_from(reply_to)
    if problem or not usable_address(addr):
        return None
    return intake.from_visitor(addr, name)
