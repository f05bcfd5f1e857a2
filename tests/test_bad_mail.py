"""Bad input end to end: malformed, lying, nested, huge and hostile mail is recorded or
quarantined, never crashes the daemon, never hangs it, never injects headers, never writes files.

Real Dovecot, real SMTP sink, real SQLite. The corpus is CPython's own test_email data
directory plus hypothesis-generated mails; every appended mail must end as a Message row or a
Quarantine row (matched by mailbox UID), or be acknowledged as a duplicate of a recorded
Message-ID (the pipeline's documented dedupe: a second delivery is moved to Processed).
"""

from __future__ import annotations

import base64
import email
import glob
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest
from harness import make_config, run_once
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from servers import Dovecot, ImapTestClient, SmtpSink

from mailtick.app import OnceResult
from mailtick.db import Message, Quarantine, open_database
from mailtick.ingest.parse import parse
from mailtick.ingest.workers import parse_many
from mailtick.mail import ParsedMail
from mailtick.outcomes import Rejected

# Every header an outgoing mailtick mail may carry (no agents are configured here, so only
# acknowledgements go out). Anything else at the sink came from a customer's bytes.
OUR_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Auto-Submitted",
        "X-Auto-Response-Suppress",
        "X-Mailtick-Loop",
        "Content-Language",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    )
)
MAX_MAIL_BYTES = 4_000_000  # the "huge" specimen is above it: quarantined by size
GENERATED = 1000  # hypothesis-generated mails, appended together and handled by one run_once
MARKER = "mtbad"  # in every generated attachment name, to look for files named after one
HANG_GUARD_SECONDS = 120  # a hang fails the test instead of blocking CI
CRLF = b"\r\n"


# -- helpers ---------------------------------------------------------------------------------


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError after `seconds` (SIGALRM; the main thread only)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"no result within {seconds}s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Appended:
    """What Dovecot stored: UID -> the bytes appended; and what it refused, with why."""

    raws: dict[int, bytes] = field(default_factory=dict)
    refused: list[tuple[bytes, str]] = field(default_factory=list)


def append_all(client: ImapTestClient, raws: Sequence[bytes]) -> Appended:
    """APPEND the bytes unchanged (MULTIAPPEND is atomic: a batch with one mail Dovecot
    refuses stores nothing, so then each mail is appended alone and refusals are kept)."""
    appended = Appended()
    try:
        uids = client.append_many(raws)
        appended.raws.update(zip(uids, raws, strict=True))
        return appended
    except AssertionError:
        pass
    for raw in raws:
        try:
            [uid] = client.append_many([raw])
        except AssertionError as refusal:
            appended.refused.append((raw, str(refusal)))
        else:
            appended.raws[uid] = raw
    return appended


@dataclass
class Outcome:
    recorded: set[int]
    quarantined: dict[int, str]  # UID -> reason
    duplicates: set[int]  # acknowledged as a second delivery of a recorded Message-ID
    lost: dict[int, bytes]  # neither: the bug this file is about
    # acknowledged as a delivery report about no mail of ours (record/report.py): acked, not stored
    backscatter: set[int] = field(default_factory=set)


def ignored_by_uid(caplog: pytest.LogCaptureFixture) -> dict[int, tuple[str, str]]:
    """UID -> (Message-ID, reason) of every mail the pipeline acknowledged as "ignored" (its log
    line: outcome, INBOX/uidvalidity/uid, Message-ID, detail). Dovecot may hand out other bytes than
    were appended (line endings), so the daemon's own verdict is the one to check."""
    found: dict[int, tuple[str, str]] = {}
    for record in caplog.records:
        args = record.args
        if record.name == "mailtick.ingest" and isinstance(args, tuple) and len(args) == 4:
            verb, where, message_id, detail = args
            if verb == "ignored" and str(where).startswith("INBOX/"):
                found[int(str(where).rsplit("/", 1)[1])] = (str(message_id), str(detail))
    return found


def outcome(db_url: str, appended: Appended, ignored: dict[int, tuple[str, str]]) -> Outcome:
    """Where each appended UID ended, looked up in the database."""
    uids = list(appended.raws)
    database = open_database(db_url)
    try:
        recorded = {
            row.uid
            for row in Message.select(Message.uid).where(
                (Message.mailbox == "INBOX") & Message.uid.in_(uids)
            )
            if row.uid is not None  # always: NULL is in no list; the column type allows it
        }
        quarantined = {
            int(row.uid): str(row.reason)
            for row in Quarantine.select(Quarantine.uid, Quarantine.reason).where(
                (Quarantine.mailbox == "INBOX") & Quarantine.uid.in_(uids)
            )
        }
        stored_ids = {
            str(row.message_id)
            for row in Message.select(Message.message_id).where(
                Message.message_id.in_([message_id for message_id, _ in ignored.values()])
            )
        }
    finally:
        database.close()
    duplicates = {uid for uid, (message_id, _) in ignored.items() if message_id in stored_ids}
    backscatter = {
        uid
        for uid, (_, reason) in ignored.items()
        if reason.startswith("delivery report for no mail of ours")
    }
    accounted = recorded | set(quarantined) | duplicates | backscatter
    lost = {uid: raw for uid, raw in appended.raws.items() if uid not in accounted}
    return Outcome(recorded, quarantined, duplicates, lost, backscatter)


def reason_group(reason: str) -> str:
    """A quarantine reason without its mail-specific details, for the summary."""
    return reason.split(":")[0] if ":" in reason else " ".join([*reason.split()[:1], "..."])


def save_lost(lost: dict[int, bytes], name: str) -> Path:
    """Keep the mails that went missing for reproduction; returns the directory."""
    directory = Path("/tmp/badmail") / name
    directory.mkdir(parents=True, exist_ok=True)
    for uid, raw in lost.items():
        (directory / f"uid-{uid}.eml").write_bytes(raw)
    return directory


def assert_all_accounted(
    name: str,
    result: OnceResult,
    client: ImapTestClient,
    db_url: str,
    appended: Appended,
    caplog: pytest.LogCaptureFixture,
) -> Outcome:
    assert client.count("INBOX") == 0, f"{client.count('INBOX')} mail(s) left in the INBOX"
    assert result.ingest.retry == 0, f"{result.ingest.retry} mail(s) left for retry"
    where = outcome(db_url, appended, ignored_by_uid(caplog))
    if where.lost:
        directory = save_lost(where.lost, name)
        pytest.fail(
            f"{len(where.lost)} mail(s) neither recorded nor quarantined, saved in {directory}: "
            f"UIDs {sorted(where.lost)}"
        )
    return where


def report(name: str, appended: Appended, where: Outcome) -> None:
    """The figures, printed for `pytest -s` and the run's log."""
    groups = Counter(reason_group(reason) for reason in where.quarantined.values())
    print(
        f"\n[{name}] appended {len(appended.raws)}, refused by Dovecot {len(appended.refused)}, "
        f"recorded {len(where.recorded)}, quarantined {len(where.quarantined)}, "
        f"duplicates acknowledged {len(where.duplicates)}, bounces of no mail of ours ignored "
        f"{len(where.backscatter)}; reasons {dict(groups)}; "
        f"refusals {Counter(text.rsplit('NO', 1)[-1][:60] for _raw, text in appended.refused)}",
        file=sys.stderr,
    )


def files_under(*roots: Path) -> set[Path]:
    """Every file below the roots, skipping tool caches and the virtualenv."""
    skip = {".venv", ".git", ".hypothesis", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
    found: set[Path] = set()
    for root in roots:
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in skip and d != "__pycache__"]
            found.update(Path(directory) / name for name in names)
    return found


# -- the CPython corpus ----------------------------------------------------------------------


def cpython_email_corpus() -> Path:
    """CPython's test/test_email/data; fails (never skips) when this interpreter lacks it."""
    candidates = [Path(email.__file__).parent.parent / "test" / "test_email" / "data"]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/python3*/test/test_email/data"))]
    for candidate in candidates:
        if sorted(candidate.glob("msg_*.txt")):
            return candidate
    pytest.fail(
        "CPython's test_email data directory is missing (looked in "
        f"{[str(c) for c in candidates]}); install the interpreter's test package "
        "(e.g. Debian's libpython3-testsuite) or use a pyenv build.",
        pytrace=False,
    )


def corpus_mails(directory: Path) -> dict[str, bytes]:
    """Every mail in the directory: the msg_*.txt files, plus any other text file that starts
    like a header block (the images and sound samples there are not mail)."""
    mails: dict[str, bytes] = {}
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        looks_like_mail = path.name.startswith("msg_") or (
            path.suffix in (".txt", ".eml", ".msg") and b":" in data.split(b"\n", 1)[0]
        )
        if path.is_file() and looks_like_mail:
            mails[path.name] = data
    return mails


def test_cpython_email_corpus_is_recorded_or_quarantined(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailtick.ingest")
    mails = corpus_mails(cpython_email_corpus())
    assert len(mails) >= 40, sorted(mails)
    appended = append_all(imap_client, list(mails.values()))  # bytes unchanged, bare LF too
    assert appended.raws, appended.refused

    with hang_guard(HANG_GUARD_SECONDS):
        result = run_once(make_config(dovecot, smtp_sink, sqlite_url))

    where = assert_all_accounted("corpus", result, imap_client, sqlite_url, appended, caplog)
    assert result.ingest.fetched == len(appended.raws)
    assert result.ingest.quarantined == len(where.quarantined)
    assert imap_client.count("Quarantine") == len(where.quarantined)
    acked = len(where.recorded) + len(where.duplicates) + len(where.backscatter)
    assert imap_client.count("Processed") == acked
    report(f"corpus of {len(mails)} files", appended, where)


# -- hypothesis: hostile mails -----------------------------------------------------------------

CHARSETS = (
    "utf-8",
    "us-ascii",
    "iso-8859-1",
    "x-unknown",
    "utf-16",
    "utf-7",
    "iso-2022-jp",
    "",
    "utf-8\x00",
    '"broken',
    "cp1252;;;",
    "a" * 300,
)
ENCODINGS = ("7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus", "")
DANGEROUS_NAMES = (
    "../../etc/passwd",
    "/etc/passwd",
    "..\\..\\windows\\system32\\evil.dll",
    "C:\\evil.exe",
    "\u202egnp.exe",
    "con",
    "aux.txt",
    "nul",
    ".",
    "..",
    "",
    " ",
    "name\r\nBcc: victim@evil.example",
    "name\x00.pdf",
    "x" * 5000,
    "ü" * 300,
)
HEADER_NAMES = (
    "To",
    "Cc",
    "Reply-To",
    "Date",
    "In-Reply-To",
    "References",
    "Return-Path",
    "Received",
    "Auto-Submitted",
    "Precedence",
    "List-Id",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
    "Message-ID",
    "Subject",
    "From",
    "X-Mailtick-Loop",
    "Bcc",
)
INJECTION = b"Eve\r\nBcc: victim@evil.example\r\nX-Injected: yes"


def _encoded_word(charset: str, how: str, data: bytes) -> bytes:
    if how in "Bb":
        payload = base64.b64encode(data)
    else:
        payload = b"".join(
            b"=%02X" % byte if not chr(byte).isalnum() else bytes([byte]) for byte in data
        )
    return b"=?" + charset.encode("utf-8", "replace") + b"?" + how.encode() + b"?" + payload + b"?="


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


small_text = st.text(max_size=60)
small_bytes = st.binary(max_size=120)

encoded_words = st.builds(
    _encoded_word,
    st.sampled_from(CHARSETS),
    st.sampled_from(["B", "Q", "b", "q", "X", ""]),
    st.one_of(small_bytes, st.just(INJECTION), st.just("Ünïcödé".encode("latin-1"))),
)
rfc2047_garbage = st.sampled_from(
    [
        b"=?utf-8?B?!!!not base64!!!?=",
        b"=?x-unknown?Q?abc?=",
        b"=?utf-8?Q?=ZZ=0?=",
        b"=?=?=?=?",
        b"=?utf-8?b?" + base64.b64encode(b"\xff\xfe\xfd") + b"?=",
        b"=?utf-8?q?Eve=0D=0ABcc=3A_victim=40evil.example?=",
        b"=?" + b"x" * 500 + b"?B?AAAA?=",
    ]
)
header_text = st.one_of(
    small_text.map(_text),
    small_bytes,
    encoded_words,
    rfc2047_garbage,
    st.just(INJECTION),
    st.just(b"a\x00b\x00c"),
    st.just(b"folded\r\n continued\r\n\tand again"),
    st.just(b"bare\rcr and bare\nlf"),
)
addresses = st.one_of(
    st.from_regex(r"[a-z]{1,12}@customer\.example", fullmatch=True).map(str.encode),
    st.sampled_from(
        [b"<>", b"@@@", b"no-at-sign", b"a@", b"@b", b"mailer-daemon@x.example", b'"q"@x.example']
    ),
)
from_headers = st.one_of(
    addresses,
    st.builds(lambda name, addr: name + b" <" + addr + b">", header_text, addresses),
    st.builds(lambda addr: INJECTION + b" <" + addr + b">", addresses),
    st.builds(lambda addr: _encoded_word("utf-8", "B", INJECTION) + b" <" + addr + b">", addresses),
)
message_ids = st.one_of(
    st.builds(lambda n: b"<gen-%d@customer.example>" % n, st.integers(0, 10**12)),
    st.builds(lambda n: b"<dup-%d@customer.example>" % n, st.integers(0, 3)),  # duplicates
    st.just(b"no-angle-brackets@customer.example"),
    st.just(b"<with space@customer.example>"),
    st.just(b"<missing-close@customer.example"),
    st.just(b"<" + b"l" * 400 + b"@customer.example>"),
    st.just(b""),
    small_bytes,
)
dates = st.one_of(
    st.just(b"Mon, 1 Jan 2024 10:00:00 +0000"),
    st.builds(
        lambda d, y, h, z: b"Mon, %d Jan %d %d:00:00 %s" % (d, y, h, z),
        st.integers(-(10**20), 10**20),
        st.integers(-(10**30), 10**30),
        st.integers(-99, 10**25),
        st.sampled_from([b"+0000", b"+9999", b"-2400", b"+99999999999999999999", b"GMT", b"ZZZ"]),
    ),
    small_bytes,
)


@st.composite
def leaf_part(draw: st.DrawFn) -> bytes:
    """A text part with a charset that may lie and a transfer encoding that may be broken."""
    charset = draw(st.sampled_from(CHARSETS))
    encoding = draw(st.sampled_from(ENCODINGS))
    body: bytes = draw(
        st.one_of(
            small_bytes,
            small_text.map(_text),
            st.just("Grüße aus Köln, bitte helfen Sie mir schnell".encode("latin-1")),
            st.just(b"!!!! not base64 at all ===="),
            st.just(b"=ZZ=\r\n=0"),
            st.just(b""),
        )
    )
    subtype = draw(st.sampled_from([b"plain", b"html", b"rtf", b"x-unknown"]))
    return (
        b"Content-Type: text/" + subtype + b"; charset=" + _text(charset) + CRLF
        + b"Content-Transfer-Encoding: " + encoding.encode() + CRLF
        + CRLF
        + body
    )  # fmt: skip


@st.composite
def attachment_part(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(DANGEROUS_NAMES))
    number = draw(st.integers(0, 10**6))
    filename = f"{name}{MARKER}{number}" if name else ""
    how = draw(st.sampled_from(["plain", "quoted", "rfc2231", "encoded-word"]))
    if how == "plain":
        param = b"filename=" + _text(filename)
    elif how == "quoted":
        param = b'filename="' + _text(filename) + b'"'
    elif how == "rfc2231":
        quoted = "".join(c if c.isalnum() else f"%{b:02X}" for c in filename for b in _text(c))
        param = b"filename*=utf-8''" + quoted.encode()
    else:
        param = b'filename="' + _encoded_word("utf-8", "B", _text(filename)) + b'"'
    payload = draw(
        st.one_of(
            small_bytes.map(base64.b64encode),
            st.just(b"%%%% base64 garbage ****\r\n===="),
            small_bytes,
        )
    )
    content_type = draw(
        st.sampled_from([b"application/octet-stream", b"application/x-msdownload", b"bogus", b""])
    )
    return (
        b"Content-Type: " + content_type + b"; name=\"" + _text(filename) + b"\"" + CRLF
        + b"Content-Disposition: attachment; " + param + CRLF
        + b"Content-Transfer-Encoding: base64" + CRLF
        + CRLF
        + payload
    )  # fmt: skip


def multipart(boundary: bytes, parts: Sequence[bytes], style: str) -> bytes:
    """A multipart entity; `style` breaks the boundaries on purpose."""
    declared = {"ok": boundary, "undeclared": b"", "unused": boundary + b"-other"}.get(
        style, boundary
    )
    head = b'Content-Type: multipart/mixed; boundary="' + declared + b'"' + CRLF + CRLF
    body = b"".join(b"--" + boundary + CRLF + part + CRLF for part in parts)
    close = b"" if style == "unterminated" else b"--" + boundary + b"--" + CRLF
    return head + b"preamble" + CRLF + body + close


@st.composite
def body_entity(draw: st.DrawFn) -> bytes:
    """The MIME entity after the top-level headers: its own headers, a blank line, a body."""
    kind = draw(st.sampled_from(["empty", "leaf", "attachments", "nested", "broken-multipart"]))
    if kind == "empty":
        return CRLF
    if kind == "leaf":
        return draw(leaf_part())
    style = draw(st.sampled_from(["ok", "undeclared", "unused", "unterminated"]))
    if kind == "attachments":
        parts = [draw(leaf_part()), *draw(st.lists(attachment_part(), min_size=1, max_size=3))]
        return multipart(b"att-b", parts, "ok" if draw(st.booleans()) else style)
    if kind == "nested":
        entity = draw(st.one_of(leaf_part(), attachment_part()))
        for level in range(draw(st.integers(1, 60))):
            entity = multipart(b"nest-%d" % level, [entity], "ok")
        return entity
    return multipart(b"broken", draw(st.lists(leaf_part(), max_size=3)), style)


@st.composite
def hostile_mail(draw: st.DrawFn) -> bytes:
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):  # mostly present, sometimes missing
        headers.append((b"From", draw(from_headers)))
    headers += [(b"To", b"support@example.com"), (b"Subject", draw(header_text))]
    if draw(st.integers(0, 5)):
        headers.append((b"Message-ID", draw(message_ids)))
    headers.append((b"Date", draw(dates)))
    names = st.one_of(
        st.sampled_from(HEADER_NAMES).map(str.encode),
        st.from_regex(rb"[!-9;-~]{1,40}", fullmatch=True),
    )
    headers += draw(st.lists(st.tuples(names, header_text), max_size=5))
    if draw(st.booleans()):
        headers.append((b"MIME-Version", b"1.0"))
    lines = [name + b": " + value for name, value in headers]
    if draw(st.integers(0, 9)) == 0:
        lines.append(b"a header line without a colon")
    mail = CRLF.join(lines) + CRLF + draw(body_entity())
    ending = draw(st.sampled_from(["crlf", "crlf", "crlf", "lf", "cr", "nul"]))
    if ending == "lf":
        mail = mail.replace(CRLF, b"\n")
    elif ending == "cr":
        mail = mail.replace(CRLF, b"\r")
    elif ending == "nul":
        mail = mail.replace(CRLF, b"\x00" + CRLF, 3)
    return mail


def nested_mail(depth: int) -> bytes:
    """`depth` multiparts inside each other around one text part."""
    entity = b"Content-Type: text/plain; charset=utf-8" + CRLF + CRLF + b"the leaf at the bottom"
    for level in range(depth):
        entity = multipart(b"deep-%d" % level, [entity], "ok")
    return b"From: deep@customer.example\r\nSubject: deep\r\nMessage-ID: <deep@x>\r\n" + entity


def long_header_mail(length: int) -> bytes:
    return (
        b"From: long@customer.example\r\nMessage-ID: <long@x>\r\nSubject: "
        + b"A" * length
        + b"\r\nX-Long: "
        + b"word " * (length // 5)
        + b"\r\n\r\nA mail with a header line of a megabyte.\r\n"
    )


# Mails no random draw would hit often: each extreme once, in the first batch.
SPECIMENS = (
    long_header_mail(1 << 20),
    nested_mail(60),
    nested_mail(300),
    b"",  # Dovecot refuses a zero-byte mail; parse() is tested with it below
    CRLF,
    b"\x00" * 64,
    b"From: huge@customer.example\r\nMessage-ID: <huge@x>\r\n\r\n" + b"Z" * (5 * 1024 * 1024),
    b"From: base64@customer.example\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b"%" * 1000,
    b"From: " + INJECTION + b" <inject@customer.example>\r\nSubject: " + INJECTION + b"\r\n\r\nx",
)


def generated_mails(count: int) -> list[bytes]:
    """`count` mails from hostile_mail(), one hypothesis example each: independent draws, so
    they differ (a list strategy of 1,000 would outgrow hypothesis' per-example budget)."""
    mails: list[bytes] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,  # the same fresh draws every run: no replays from earlier failures
        phases=(Phase.generate,),  # collecting only: nothing to shrink here
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    )
    @given(hostile_mail())
    def collect(mail: bytes) -> None:
        mails.append(mail)

    collect()
    return mails


def test_hypothesis_hostile_mails_are_recorded_or_quarantined(
    dovecot: Dovecot,
    imap_client: ImapTestClient,
    smtp_sink: SmtpSink,
    sqlite_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailtick.ingest")
    before = files_under(tmp_path, Path.cwd())
    mails = generated_mails(GENERATED)
    assert len(mails) >= GENERATED, len(mails)
    appended = append_all(imap_client, [*SPECIMENS, *mails])

    with hang_guard(HANG_GUARD_SECONDS):
        result = run_once(
            make_config(dovecot, smtp_sink, sqlite_url, tickets={"max_mail_bytes": MAX_MAIL_BYTES})
        )

    where = assert_all_accounted("hypothesis", result, imap_client, sqlite_url, appended, caplog)
    report(f"{len(mails)} generated + {len(SPECIMENS)} specimens", appended, where)
    assert result.ingest.fetched == len(appended.raws)
    assert result.send.failed == 0 and len(smtp_sink.messages) == result.send.sent
    assert_no_foreign_headers(smtp_sink)
    created = files_under(tmp_path, Path.cwd()) - before
    assert {path.name for path in created} <= database_files(sqlite_url), sorted(created)
    near = (Path("/"), Path("/etc"), Path("/tmp"), Path.cwd().parent, Path.cwd().parent.parent)
    named = [p for d in near for p in d.iterdir() if MARKER in p.name]
    assert not named + [p for p in created if MARKER in p.name], named


def assert_no_foreign_headers(sink: SmtpSink) -> None:
    """Every header of every outgoing mail is one mailtick writes itself: nothing a customer
    put in a name, subject or attachment name became a header of its own."""
    foreign = Counter(
        name
        for received in sink.messages
        for name in (key.lower() for key in received.message)
        if name not in OUR_HEADERS
    )
    assert not foreign, foreign
    for received in sink.messages:
        assert received.message["Bcc"] is None and received.message["X-Injected"] is None


def database_files(url: str) -> set[str]:
    name = Path(url.removeprefix("sqlite:///")).name
    # .lock: the one-instance lock file (mailtick/leader.py)
    return {name, f"{name}-wal", f"{name}-shm", f"{name}-journal", f"{name}.lock"}


# -- parse() alone: bounded time on the extremes -------------------------------------------------


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("1 MB header line", lambda: long_header_mail(1 << 20)),
        ("60-deep nesting", lambda: nested_mail(60)),
        ("300-deep nesting", lambda: nested_mail(300)),
        ("empty mail", lambda: b""),
        ("NUL bytes only", lambda: b"\x00" * 1000),
    ],
)
def test_parse_finishes_on_extremes(what: str, make: Callable[[], bytes]) -> None:
    raw = make()
    with hang_guard(30):
        [result] = parse_many([raw], "en")  # Rejected comes back as a value, never raised
    if isinstance(result, Rejected):
        assert result.reason, what
        return
    assert isinstance(result, ParsedMail), result  # parsing inline never times out (Transient)
    assert result.raw == raw and result.message_id.startswith("<")
    assert "\r" not in result.subject and "\n" not in result.subject
    if what == "1 MB header line":
        assert result.subject == "A" * (1 << 20)
    if what == "60-deep nesting":
        assert "the leaf at the bottom" in result.text


HOSTILE_HEADERS = (
    b"Date: Mon, 1 Jan 99999999999999999999 00:00:00 +0000",  # OverflowError in parsedate
    b"Date: 1 Jan 2020 00:00:00 +99999999999999999999",
    b"Date: Mon, 1 Jan 2020 99:99:99 +9999",
    b"Date: 1 Jan 10000 00:00:00 +0000",
    b"Subject: =?utf-8?B?!!!not base64!!!?=",  # HeaderParseError in decode_header
    "Subject: =?utf-8é?q?abc?=".encode(),  # CharsetError in make_header
    b"From: =?utf-8?B?!!!?= <a@customer.example>",
    b"To: =?x-unknown?Q?abc?= <b@customer.example>",
)


@pytest.mark.parametrize("header", HOSTILE_HEADERS, ids=lambda h: h.decode(errors="replace"))
def test_parse_returns_or_rejects_on_hostile_headers(header: bytes) -> None:
    """parse() reads Date, From, To and Subject itself: whatever they hold, the answer is a
    ParsedMail or Rejected, never another exception (which would stop the daemon)."""
    raw = b"From: a@customer.example\r\nMessage-ID: <h@x>\r\n" + header + b"\r\n\r\nbody\r\n"
    with hang_guard(30):
        try:
            mail = parse(raw)
        except Rejected as rejected:
            assert rejected.reason
            return
    assert mail.message_id == "<h@x>" and "\n" not in mail.subject


def test_encoded_display_name_cannot_change_the_sender_address() -> None:
    """The address is the one in angle brackets; an encoded-word in the display name that
    decodes to an address (or to CR LF and a Bcc line) must stay part of the name."""
    raw = (
        b"From: =?utf-8?q?boss=40example.com?= <attacker@evil.example>\r\n"
        b"Message-ID: <spoof@x>\r\n\r\nbody\r\n"
    )
    assert parse(raw).from_addr == "attacker@evil.example"
