"""Value types that flow through the pipeline (RawMail -> ParsedMail). Touches nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class RawMail:
    """One mail as fetched from the server: where it lives and its exact bytes."""

    mailbox: str
    uidvalidity: int
    uid: int
    data: bytes
    server_size: int = 0  # RFC822.SIZE; above tickets.max_mail_bytes only the header is fetched
    account: str = ""  # whose mailbox: "user@host" (imap.account_of); "" outside IMAP

    @property
    def where(self) -> str:
        return f"{self.mailbox}/{self.uidvalidity}/{self.uid}"

    @property
    def size(self) -> int:
        return self.server_size or len(self.data)

    @property
    def complete(self) -> bool:
        """False when only the header was fetched (the mail is too big to download)."""
        return len(self.data) >= self.size


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class ParsedMail:
    """What the later stages need of a mail; `raw` keeps the original bytes."""

    raw: bytes
    message_id: str  # with angle brackets; synthesised from a hash when the mail has none
    subject: str
    from_name: str
    from_addr: str  # lower-cased addr-spec: the one in angle brackets, as mail clients show it
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: datetime | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]  # oldest first, as in the header
    text: str  # the plain-text body (HTML converted when there is no text part)
    language: str  # "de" | "en" | ...
    attachments: tuple[Attachment, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased name -> first value
    defects: tuple[str, ...] = ()
    header_list: tuple[tuple[str, str], ...] = ()  # every (lower-cased name, value), in order
    from_problem: str = (
        ""  # why the From can be read two ways ("": it cannot); such a From never acts
    )

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def header_values(self, name: str) -> list[str]:
        """Every value of a header, topmost (added last on the way in) first."""
        wanted = name.lower()
        return [value for key, value in self.header_list if key == wanted]
