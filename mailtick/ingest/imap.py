"""Stages `poll` and `ack`: an IMAP connection (aioimaplib), every await bounded. Network.

aioimaplib leaves three gaps this module closes:
- a command whose connection died is never completed: every await here races the
  command against the connection-lost callback and our own timeout;
- there is no STARTTLS: `_starttls` sends the command and upgrades the transport
  with `loop.start_tls`, then asks for the capabilities again;
- its parser recurses once per response line, so a 2000-line answer (a 2000-mail
  EXPUNGE) raises RecursionError: every FETCH, MOVE and EXPUNGE here names at most
  `batch_size` UIDs, which keeps every answer a few hundred lines at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib

from mailtick.config import ImapConfig, TlsSettings
from mailtick.outcomes import Transient

log = logging.getLogger("mailtick.ingest")

T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")
_UNTAGGED_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_FETCH_HEAD = re.compile(rb"^\d+ FETCH \(")
_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
HEADER_BYTES = 65536  # of a mail too big to download, this much of its header is fetched
CLOSE_WAIT = 1.0  # seconds a closing connection may take before it is aborted
_LITERAL = re.compile(rb"\{(\d+)\}$")


class ImapUnavailable(Transient):
    """The server is unreachable, hung up, timed out or answered NO/BAD."""


@dataclass(frozen=True)
class Selected:
    mailbox: str
    uidvalidity: int
    exists: int
    account: str = ""  # account_of(config): with mailbox and uidvalidity, the mailbox identity


def account_of(config: ImapConfig) -> str:
    """The account a mailbox belongs to, "user@host": two accounts' INBOXes may share a
    name and even a UIDVALIDITY (created in the same second), never this."""
    return f"{config.username}@{config.host.lower()}"


def tls_context(settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def uid_set(uids: Iterable[int]) -> str:
    """Compress UIDs into IMAP sequence-set ranges: [1,2,3,7,9,10] -> "1:3,7,9:10"."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid != prev + 1:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = uid
        prev = uid
    parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)


def parse_fetch(lines: Sequence[Any]) -> list[tuple[int, bytes]]:
    """(uid, body) pairs from a `UID FETCH (UID BODY.PEEK[])` answer, items in either order."""
    found: list[tuple[int, bytes]] = []
    uid: int | None = None
    body: bytes | None = None
    for line in lines:
        if isinstance(line, bytearray):
            body = bytes(line)
            continue
        if _FETCH_HEAD.match(line):
            uid, body = None, None
        match = _FETCH_UID.search(line)
        if match and (line.startswith(b")") or _FETCH_HEAD.match(line) or line.startswith(b" ")):
            uid = int(match.group(1))
        if uid is not None and body is not None:
            found.append((uid, body))
            uid, body = None, None
    return found


class ImapConnection:
    """A logged-in IMAP session. Every method raises ImapUnavailable on trouble."""

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self._client: aioimaplib.IMAP4 | None = None
        self._lost: asyncio.Future[None] | None = None
        self.news = False  # the server announced new mail (EXISTS) since this was cleared

    # -- plumbing --------------------------------------------------------------

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ImapUnavailable("not connected")
        return self._client

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def call(self, awaitable: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await one IMAP step, bounded by the timeout and by the connection dying."""
        task = asyncio.ensure_future(awaitable)
        lost = self._lost
        waiters: set[asyncio.Future[Any]] = {task} if lost is None else {task, lost}
        done, _ = await asyncio.wait(
            waiters, timeout=timeout or self.config.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task not in done:
            task.cancel()
            reason = "connection lost" if lost is not None and lost.done() else "timed out"
            raise ImapUnavailable(f"IMAP {what}: {reason}")
        try:
            return task.result()
        except (TimeoutError, aioimaplib.AioImapException, OSError, ssl.SSLError) as exc:
            raise ImapUnavailable(f"IMAP {what}: {type(exc).__name__}: {exc}") from exc

    async def command(self, awaitable: Awaitable[Any], what: str) -> Any:
        """Like `call`, and a NO/BAD answer is an error too."""
        response = await self.call(awaitable, what)
        if response.result != "OK":
            text = b" ".join(bytes(x) for x in response.lines[-1:]).decode(errors="replace")
            raise ImapUnavailable(f"IMAP {what}: {response.result} {text}")
        return response

    def has(self, capability: str) -> bool:
        return bool(self.client.has_capability(capability))

    # -- session ---------------------------------------------------------------

    async def open(self) -> None:
        cfg = self.config
        self._lost = asyncio.get_running_loop().create_future()
        context = tls_context(cfg.tls) if cfg.security == "tls" else None
        self._client = aioimaplib.IMAP4(
            host=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            conn_lost_cb=self._connection_lost,
            ssl_context=context,
        )
        self._watch_exists()
        await self.call(self.client.wait_hello_from_server(), "connect")
        if cfg.security == "starttls":
            await self._starttls()
        await self.command(self.client.login(cfg.username, cfg.password), "LOGIN")
        await self.call(self.client.protocol.capability(), "CAPABILITY")

    def _watch_exists(self) -> None:
        """Note every untagged EXISTS. aioimaplib drops one that arrives during an
        asynchronous command (FETCH, UID, SEARCH) when no NOOP is pending, so a mail
        delivered mid-catch-up would otherwise wait for the next IDLE timeout."""
        protocol = self.client.protocol
        original = protocol._untagged_response

        def spy(line: bytes) -> Any:
            if _UNTAGGED_EXISTS.match(line):
                self.news = True
            return original(line)

        protocol._untagged_response = spy

    async def _starttls(self) -> None:
        protocol = self.client.protocol
        await self.call(protocol.capability(), "CAPABILITY")
        if "STARTTLS" not in protocol.capabilities:
            raise ImapUnavailable("IMAP server does not offer STARTTLS (imap.security)")
        starttls = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        await self.command(protocol.execute(starttls), "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await self.call(
            loop.start_tls(
                protocol.transport,
                protocol,
                tls_context(self.config.tls),
                server_hostname=self.config.host,
            ),
            "TLS handshake",
        )
        protocol.transport = transport
        protocol.capabilities = set()
        await self.call(protocol.capability(), "CAPABILITY")  # RFC 3501: ask again after TLS

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self._lost is not None and not self._lost.done():
                await asyncio.wait_for(client.logout(), timeout=5)
        except Exception as exc:  # closing a dead session: nothing left to save
            log.debug("IMAP logout failed: %s", exc)
        finally:
            await self._release(client.protocol.transport)

    async def _release(self, transport: asyncio.BaseTransport | None) -> None:
        """Close the connection and wait (briefly) until it is gone. A TLS transport closes
        with a close_notify exchange that needs the event loop: if the loop ended first
        (`run --once`), the socket under it was never closed. Whatever is left is aborted."""
        if transport is None:
            return
        transport.close()
        lost = self._lost
        if lost is not None and not lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lost), timeout=CLOSE_WAIT)
        if isinstance(transport, asyncio.Transport):
            transport.abort()  # a no-op once it is closed

    # -- mailbox operations -----------------------------------------------------

    async def ensure_mailbox(self, name: str) -> None:
        """CREATE the mailbox unless LIST shows it (aioimaplib strips "* LIST" from the lines)."""
        listed = await self.command(self.client.list('""', quote(name)), "LIST")
        if len(listed.lines) > 1:  # one line per mailbox found, then the OK text
            return
        created = await self.call(self.client.create(quote(name)), f"CREATE {name}")
        text = b" ".join(bytes(x) for x in created.lines)
        if created.result == "OK":
            log.info("created mailbox %s", name)
        elif b"ALREADYEXISTS" not in text:  # another instance may have just created it
            raise ImapUnavailable(
                f"IMAP CREATE {name}: {created.result} {text.decode(errors='replace')}"
            )

    async def select(self, mailbox: str) -> Selected:
        response = await self.command(self.client.select(quote(mailbox)), f"SELECT {mailbox}")
        uidvalidity, exists = 0, 0
        for line in response.lines:
            data = bytes(line)
            if match := _UIDVALIDITY.search(data):
                uidvalidity = int(match.group(1))
            if match := _EXISTS.match(data):
                exists = int(match.group(1))
        if not uidvalidity:
            raise ImapUnavailable(f"IMAP SELECT {mailbox}: no UIDVALIDITY in the answer")
        return Selected(mailbox, uidvalidity, exists, account_of(self.config))

    async def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid`, ascending. ("n:*" always names the last mail; filter it.)"""
        return [uid for uid in await self.search(f"UID {last_uid + 1}:*") if uid > last_uid]

    async def search(self, *criteria: str) -> list[int]:
        """UID SEARCH in the selected mailbox; the UIDs, ascending."""
        response = await self.command(self.client.uid_search(*criteria, charset=None), "UID SEARCH")
        uids: list[int] = []
        for line in response.lines[:-1]:  # the last line is the tagged OK's text
            data = bytes(line).removeprefix(b"SEARCH")  # aioimaplib may strip "SEARCH"
            uids.extend(int(x) for x in data.split() if x.isdigit())
        return sorted(uids)

    async def append(self, data: bytes, mailbox: str) -> None:
        await self.command(self.client.append(data, mailbox=quote(mailbox)), f"APPEND {mailbox}")

    async def fetch(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        response = await self.command(
            self.client.uid("FETCH", uid_set(uids), "(UID BODY.PEEK[])"), "UID FETCH"
        )
        return parse_fetch(response.lines)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """uid -> RFC822.SIZE, so a mail too big for us is never downloaded."""
        response = await self.command(
            self.client.uid("FETCH", uid_set(uids), "(UID RFC822.SIZE)"), "UID FETCH SIZE"
        )
        found: dict[int, int] = {}
        for line in response.lines:
            data = bytes(line)
            uid, size = _FETCH_UID.search(data), _FETCH_SIZE.search(data)
            if uid and size:
                found[int(uid.group(1))] = int(size.group(1))
        return found

    async def fetch_headers(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        """The first HEADER_BYTES of each mail's header (for a mail we will not download)."""
        part = f"(UID BODY.PEEK[HEADER]<0.{HEADER_BYTES}>)"
        response = await self.command(
            self.client.uid("FETCH", uid_set(uids), part), "UID FETCH HEADER"
        )
        return parse_fetch(response.lines)

    async def move(self, uids: Sequence[int], target: str) -> None:
        """Move mails to `target` in batches; COPY + \\Deleted + UID EXPUNGE without MOVE."""
        batch = self.config.batch_size
        for start in range(0, len(uids), batch):
            chunk = uid_set(uids[start : start + batch])
            if self.has("MOVE"):
                await self.command(self.client.uid("MOVE", chunk, quote(target)), "UID MOVE")
                continue
            await self.command(self.client.uid("COPY", chunk, quote(target)), "UID COPY")
            await self.command(
                self.client.uid("STORE", chunk, "+FLAGS.SILENT", "(\\Deleted)"), "UID STORE"
            )
            if self.has("UIDPLUS"):
                await self.command(self.client.uid("EXPUNGE", chunk), "UID EXPUNGE")
            # Without UIDPLUS the copies stay flagged \Deleted for the owner's client to
            # expunge: a plain EXPUNGE could remove mail someone else flagged.

    async def idle(self, timeout: float, stop: asyncio.Event) -> bool:
        """IDLE until the server reports news, `timeout` passes or `stop` is set.
        True when the server pushed something (new mail, most likely)."""
        client = self.client
        idle_task = await self.call(client.idle_start(timeout=timeout), "IDLE")
        stopper = asyncio.ensure_future(stop.wait())
        try:
            push = asyncio.ensure_future(client.wait_server_push(timeout=timeout + 5))
            waiters: set[asyncio.Future[Any]] = {push, stopper}
            if self._lost is not None:
                waiters.add(self._lost)  # a server that hangs up never answers the IDLE
            done, _ = await asyncio.wait(
                waiters, timeout=timeout + 10, return_when=asyncio.FIRST_COMPLETED
            )
            if self._lost is not None and self._lost.done():
                push.cancel()
                idle_task.cancel()
                raise ImapUnavailable("IMAP IDLE: connection lost")
            news = (
                push in done
                and not push.exception()
                and push.result() != aioimaplib.STOP_WAIT_SERVER_PUSH
            )
            if push not in done:
                push.cancel()
        finally:
            stopper.cancel()
            if client.has_pending_idle():
                client.idle_done()
        await self.call(idle_task, "IDLE DONE")
        return bool(news)


def quote(name: str) -> str:
    """An IMAP quoted string for a mailbox name (no literals: names are from our config)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
