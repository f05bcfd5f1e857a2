"""Real test servers (Dovecot, SMTP sink) + mail builder; touches temp dirs, processes, 127.0.0.1.

Everything here is plain Python (no pytest), so benchmarks under bench/ can import it too:

    with Dovecot() as imap, SmtpSink() as smtp:
        with imap.client() as c:
            c.append(make_mail(subject="Printer broken"))
        ...  # point mailtick at imap.host/imap.port and smtp.host/smtp.port

Dovecot must run as root here (CI and the dev machines do). Dovecot itself refuses some roles for
root, so the generated config splits them up, see `Dovecot._config`:
  * internal helper processes (auth, config, log, ...) run as root,
  * the pre-login IMAP process runs as `dovenull`
    ("imap-login: Fatal: This process must not be run as root"),
  * the post-login IMAP process, i.e. all mail access, runs as `dovecot`
    ("Mail access not allowed for root"; a passwd-file with UID 0 is rejected as "invalid UID").
Both users come with Debian's dovecot-core package.
"""

from __future__ import annotations

import atexit
import contextlib
import email.policy
import email.utils
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
DEFAULT_USER = "support@example.com"
DEFAULT_PASSWORD = "secret"
DOVECOT_BINARY = "/usr/sbin/dovecot"
OPENSSL_BINARY = "openssl"

# Dovecot 2.3's built-in post-login CAPABILITY list (CAPABILITY_STRING in its source, as sent by
# 2.3.19) plus the two it appends at run time (LITERAL+, NOTIFY). Setting `imap_capability`
# REPLACES the whole list (no "-IDLE" syntax exists), so idle=False / move=False write this list
# minus the dropped word. Dovecot still *executes* IDLE / MOVE when a client sends them anyway;
# use `Dovecot.used_command()` to assert that a client did not send them.
DOVECOT_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY"
)

_START_TIMEOUT = 10.0
_GRACEFUL_STOP_WAIT = 2.0


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it) and that
    this process has never handed out before. Two calls in a row can otherwise get the same
    port from the OS (the first one is not bound yet when the second asks): Dovecot then
    fails with "duplicate listener"."""
    with _handed_out_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no fresh free port on {host} after 1000 tries")


def make_self_signed_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """Write `<name>.crt` / `<name>.key` (EC P-256, valid for 127.0.0.1 and localhost) with
    `openssl req`; returns (cert_path, key_path). The cert is its own CA: trust it with
    `ssl.create_default_context(cafile=cert_path)`."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            OPENSSL_BINARY, "req", "-x509", "-nodes", "-days", "30",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def client_ssl_context(cert_path: Path) -> ssl.SSLContext:
    """A client-side SSL context that trusts exactly the given self-signed certificate."""
    return ssl.create_default_context(cafile=str(cert_path))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


# --------------------------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------------------------

_running_dovecots: set[Dovecot] = set()


@atexit.register
def _close_leftover_dovecots() -> None:
    """Last line of defence: an interpreter that exits (even on Ctrl-C) takes its Dovecots along."""
    for server in list(_running_dovecots):
        server.close()


class Dovecot:
    """A private Dovecot 2.3 (IMAP only) in a temp dir, run in the foreground as a child process.

    Ports and the temp dir are chosen at construction and kept across stop()/start()/restart(),
    so a client configured once can reconnect to the "same" server with the same mail store.
    `close()` (or leaving the `with` block) stops it and deletes the temp dir.

    Listens on 127.0.0.1: `port` (plain IMAP, STARTTLS offered, plaintext LOGIN allowed) and
    `tls_port` (implicit TLS). Every IMAP command run after login is written to the log
    (see `commands()`).
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        idle: bool = True,
        move: bool = True,
        auto_create: Sequence[str] = (),
        binary: str = DOVECOT_BINARY,
    ) -> None:
        """users: name -> password (default: support@example.com / secret).
        idle / move: False removes IDLE / MOVE from the advertised capabilities.
        auto_create: mailboxes Dovecot creates by itself at login (e.g. ["Processed"]);
        by default none, so the client has to CREATE them."""
        if os.geteuid() != 0:
            raise RuntimeError("tests.servers.Dovecot runs Dovecot as root; run the tests as root")
        self.binary = binary
        self.idle = idle
        self.move = move
        self.auto_create = tuple(auto_create)
        self.host = HOST
        self.port = free_port()
        self.tls_port = free_port()
        self._mail_user = _system_user("dovecot")
        self._login_user = _system_user("dovenull")
        self._users: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self.root = Path(tempfile.mkdtemp(prefix="mailtick-dovecot-"))
        try:
            # The mail processes (uid dovecot) must be able to walk into the temp dir.
            self.root.chmod(0o711)
            self.mail_dir.mkdir()
            os.chown(self.mail_dir, self._mail_user.pw_uid, self._mail_user.pw_gid)
            self.cert_path, self.key_path = make_self_signed_cert(self.root)
            for name, password in (users or {DEFAULT_USER: DEFAULT_PASSWORD}).items():
                self.add_user(name, password)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        """Dovecot's own log (logins, errors, one "Command finished" line per IMAP command)."""
        return self.root / "dovecot.log"

    @property
    def stderr_path(self) -> Path:
        """What the dovecot master printed on stdout/stderr (startup warnings, fatal errors)."""
        return self.root / "dovecot.stderr"

    @property
    def mail_dir(self) -> Path:
        """Maildirs live in mail_dir/<user>/ (created by Dovecot on first login)."""
        return self.root / "mail"

    @property
    def users(self) -> dict[str, str]:
        return dict(self._users)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- users -----------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a login. Works while running: Dovecot re-reads the passwd-file."""
        for value in (name, password):
            if not value or any(c in value for c in ":\n\r"):
                raise ValueError(f"passwd-file names/passwords cannot contain ':': {value!r}")
        self._users[name] = password
        lines = [f"{user}:{{PLAIN}}{pw}::::::\n" for user, pw in self._users.items()]
        tmp = self.root / "users.tmp"
        tmp.write_text("".join(lines))
        tmp.replace(self.root / "users")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start Dovecot and wait until both ports greet (at most ~10 s, else RuntimeError)."""
        if self.running:
            raise RuntimeError("Dovecot is already running")
        # state_dir only holds Dovecot's instance registry. A master killed while rewriting it
        # leaves a stale instances.lock, and the next master would wait on it for minutes.
        shutil.rmtree(self.root / "state", ignore_errors=True)
        self.config_path.write_text(self._config())
        with self.stderr_path.open("ab") as out:
            self._process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill every child at once
            )
        _running_dovecots.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(graceful=False)
            raise

    def stop(self, graceful: bool = True) -> None:
        """Stop Dovecot and every process it started. Idempotent.

        graceful=True: SIGTERM to all Dovecot processes, like a machine shutting down; every
        open IMAP session gets "* BYE Server shutting down." and is closed (~10-50 ms).
        (SIGTERM to the master alone is no good: open sessions outlive the master, and the
        master itself needs 1-6 s.)
        graceful=False: SIGKILL to all of them (~10 ms); clients just see the connection drop,
        as after a crash. Either way nothing of this Dovecot is left running afterwards."""
        process = self._process
        if process is None:
            return
        if graceful and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            # Wait until the IMAP session processes have said BYE and exited. The master (and
            # an idle imap-login) would linger in their own shutdown for 1-6 s for nothing.
            deadline = time.monotonic() + _GRACEFUL_STOP_WAIT
            while process.poll() is None and time.monotonic() < deadline:
                if not _imap_sessions_in_group(process.pid):
                    break
                time.sleep(0.01)
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        _wait_group_gone(process.pid)
        self._process = None
        _running_dovecots.discard(self)

    def restart(self, graceful: bool = True) -> None:
        """stop() then start(): same ports, same certificate, same users, same mail."""
        self.stop(graceful=graceful)
        self.start()

    def close(self) -> None:
        """Stop (fast) and delete the temp dir with mail, log and config."""
        self.stop(graceful=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inspection ------------------------------------------------------------------------

    def client(self, user: str = DEFAULT_USER, password: str | None = None) -> ImapTestClient:
        """A logged-in ImapTestClient on the plain port (password looked up if not given)."""
        return ImapTestClient(
            self.host, self.port, user, self._users[user] if password is None else password
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Client SSL context trusting this server's certificate (for tls_port and STARTTLS)."""
        return client_ssl_context(self.cert_path)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def commands(self, user: str | None = None) -> list[str]:
        """Every IMAP command run after login so far, as logged: "UID MOVE 1:3 Processed",
        "IDLE", "APPEND "INBOX" <1178 byte literal>", ... (oldest first; optionally of one user).
        LOGIN/STARTTLS/AUTHENTICATE happen before login and are not included.

        The log line is written just after Dovecot answers, so it can lag a few ms behind the
        client: use wait_for_command() to assert a command was sent, used_command() for both."""
        result = []
        for match in _COMMAND_LINE.finditer(self.log_text()):
            if user is None or match["user"] == user:
                result.append(match["command"].rstrip())
        return result

    def wait_for_command(self, name: str, user: str | None = None, timeout: float = 5.0) -> str:
        """Wait until a client sent command `name` ("MOVE" also matches "UID MOVE ...");
        returns the logged command line, AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = _find_command(self.commands(user), name)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {name} command within {timeout}s; commands: {self.commands(user)}"
                )
            time.sleep(0.02)

    def used_command(self, name: str, user: str | None = None, settle: float = 0.5) -> bool:
        """Whether a client sent command `name` ("MOVE" also matches "UID MOVE ...").

        For "was never sent" assertions: first waits until Dovecot has logged the end of
        every IMAP session, but at most `settle` seconds. So after the client under test has
        disconnected (e.g. the daemon was stopped) the answer is exact and immediate; with
        sessions still open it is as of `settle` seconds from now."""
        deadline = time.monotonic() + settle
        while self.open_sessions() and time.monotonic() < deadline:
            time.sleep(0.02)
        return _find_command(self.commands(user), name) is not None

    def open_sessions(self) -> set[str]:
        """Dovecot session ids of logins whose disconnect is not logged (yet)."""
        log = self.log_text()
        started = set(_LOGIN_LINE.findall(log))
        return started - set(_DISCONNECT_LINE.findall(log))

    # -- administration (doveadm, the mail store) -------------------------------------------

    def doveadm(self, *args: str) -> str:
        """`doveadm -c <this server's config> <args>`; its stdout, RuntimeError on failure.
        E.g. doveadm("mailbox", "status", "-u", user, "messages", "INBOX")."""
        result = subprocess.run(
            ["doveadm", "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {result.returncode} {result.stderr}")
        return result.stdout

    def mailbox_status(self, mailbox: str = "INBOX", user: str = DEFAULT_USER) -> dict[str, int]:
        """{"messages": .., "uidnext": .., "uidvalidity": ..} as the server has them now."""
        fields = "messages uidnext uidvalidity"
        line = self.doveadm("mailbox", "status", "-u", user, fields, mailbox).strip()
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}

    def set_uidvalidity(self, value: int, mailbox: str = "INBOX", user: str = DEFAULT_USER) -> None:
        """Give the mailbox a new UIDVALIDITY (the mails keep their UIDs), as an admin would
        with `doveadm mailbox update --uid-validity`."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), mailbox)

    def forget_uids(self, user: str = DEFAULT_USER) -> None:
        """INBOX as after a restore of its mail files without Dovecot's index: stop, delete
        INBOX's dovecot-uidlist and indexes, start. Dovecot rescans the files and numbers
        them from UID 1 under a new UIDVALIDITY; no mail is lost. (Maildir: INBOX lives
        in the user's root directory, other mailboxes in ".Name" below it, untouched.)"""
        home = self.mail_dir / user
        self.stop()
        for path in home.iterdir():
            if path.name == "dovecot-uidlist" or path.name.startswith(
                ("dovecot.index", "dovecot.list.index")
            ):
                path.unlink()
        self.start()

    # -- internals -------------------------------------------------------------------------

    def _capability_setting(self) -> str:
        dropped = set()
        if not self.idle:
            dropped.add("IDLE")
        if not self.move:
            dropped.add("MOVE")
        if not dropped:
            return ""  # Dovecot's default list
        kept = " ".join(c for c in DOVECOT_CAPABILITIES.split() if c not in dropped)
        return f"imap_capability = {kept}\n"

    def _config(self) -> str:
        root = self.root
        auto_create = "".join(
            f'  mailbox "{name}" {{\n    auto = create\n  }}\n' for name in self.auto_create
        )
        return f"""\
# Generated by tests/servers.py for one test run; see the Dovecot class.
protocols = imap
listen = {self.host}
instance_name = mailtick-test-{self.port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
# One "Debug: Command finished: <command>" line per IMAP command, read by Dovecot.commands().
log_debug = event=imap_command_finished

# Dovecot refuses root for login and mail processes (see the module docstring).
default_internal_user = root
default_internal_group = root
default_login_user = {self._login_user.pw_name}
mail_uid = {self._mail_user.pw_name}
mail_gid = {self._mail_user.pw_gid}
first_valid_uid = {self._mail_user.pw_uid}
first_valid_gid = 0

ssl = yes
ssl_cert = <{self.cert_path}
ssl_key = <{self.key_path}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_max_userip_connections = 100

passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}

mail_location = maildir:{self.mail_dir}/%u
mail_fsync = never
namespace inbox {{
  inbox = yes
{auto_create}}}
{self._capability_setting()}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(self._failure(f"dovecot exited with {self._process.returncode}"))
            try:
                # A greeting proves more than an open port: imap-login is forked per
                # connection, and a misconfigured one only fails at that point.
                with socket.create_connection((self.host, self.port), timeout=2) as plain:
                    greeting = plain.recv(1024)
                    if not greeting.startswith(b"* OK"):
                        raise RuntimeError(self._failure(f"unexpected greeting {greeting!r}"))
                    plain.sendall(b"r LOGOUT\r\n")
                with socket.create_connection((self.host, self.tls_port), timeout=2):
                    pass
                return
            except OSError as error:
                last_error = error
                time.sleep(0.02)
        raise RuntimeError(self._failure(f"no greeting within {_START_TIMEOUT}s ({last_error})"))

    def _failure(self, what: str) -> str:
        return (
            f"Dovecot did not come up: {what}\n"
            f"--- {self.stderr_path} ---\n{_tail(self.stderr_path)}\n"
            f"--- {self.log_path} ---\n{_tail(self.log_path)}"
        )


_COMMAND_LINE = re.compile(
    r"imap\((?P<user>[^)]*)\)<[^>]*><[^>]*>: Debug: Command finished: (?P<command>.*)$",
    re.MULTILINE,
)


_LOGIN_LINE = re.compile(r"imap-login: Info: Login: .*session=<([^>]+)>", re.MULTILINE)
_DISCONNECT_LINE = re.compile(r"imap\([^)]*\)<[^>]*><([^>]+)>: Info: Disconnected", re.MULTILINE)


def _find_command(commands: list[str], name: str) -> str | None:
    name = name.upper()
    for command in commands:
        words = command.upper().split()
        if words[:1] == [name] or words[:2] == ["UID", name]:
            return command
    return None


def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"system user {name!r} missing; it comes with Debian's dovecot-core "
            "(apt-get install dovecot-imapd)"
        ) from None


def _signal_group(pgid: int, signal_number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal_number)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of group `pgid` is alive. Children orphaned by the master's exit
    may linger as zombies until init reaps them; a zombie runs nothing, so it counts as gone."""
    deadline = time.monotonic() + timeout
    while _alive_in_group(pgid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {pgid} survived SIGKILL: pids {_alive_in_group(pgid)}")
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.01)


def _alive_in_group(pgid: int) -> list[int]:
    return sorted(_group_processes(pgid))


def _imap_sessions_in_group(pgid: int) -> list[int]:
    """Post-login IMAP processes; their title is "dovecot-<instance_name>/imap"."""
    return [pid for pid, title in _group_processes(pgid).items() if title.endswith("/imap")]


def _group_processes(pgid: int) -> dict[int, str]:
    """Live (not zombie) processes of process group `pgid`: pid -> process title."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue  # exited meanwhile
        # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found[int(entry)] = title
    return found


# --------------------------------------------------------------------------------------------
# IMAP test client
# --------------------------------------------------------------------------------------------


class ImapTestClient:
    """A small synchronous IMAP client (stdlib imaplib) for test set-up and assertions.

    Logs in at construction; use as a context manager (or call close()). Mailbox names are
    quoted for you. `imap` is the underlying imaplib.IMAP4 for anything else. Note: imaplib
    turns bare LF into CRLF in append(); append_many() sends the bytes unchanged.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        """ssl_context given: implicit TLS (connect to the TLS port); otherwise plain IMAP."""
        self.imap: imaplib.IMAP4 = (
            imaplib.IMAP4_SSL(host, port, ssl_context=ssl_context, timeout=timeout)
            if ssl_context is not None
            else imaplib.IMAP4(host, port, timeout=timeout)
        )
        try:
            self.imap.login(user, password)
        except BaseException:
            self.imap.shutdown()  # a refused login leaves no socket open
            raise
        self._tags = 0

    def close(self) -> None:
        try:
            self.imap.logout()
        except (imaplib.IMAP4.abort, OSError):
            # The server is already gone (a test stopped it): logout() raised before it closed
            # the socket, so close it here.
            with contextlib.suppress(OSError):
                self.imap.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def create(self, mailbox: str) -> None:
        _check(self.imap.create(_quote(mailbox)), f"CREATE {mailbox}")

    def append(self, raw: bytes, mailbox: str = "INBOX", flags: str = "") -> int:
        """APPEND one message; returns its UID. flags e.g. "\\Seen" (space separated)."""
        result = self.imap.append(_quote(mailbox), f"({flags})" if flags else None, None, raw)
        _check(result, f"APPEND to {mailbox}")
        return _appenduid(result[1][0])

    def append_many(self, raws: Iterable[bytes], mailbox: str = "INBOX") -> list[int]:
        """APPEND many messages fast; returns their UIDs in order. Bytes are sent unchanged.

        Sends MULTIAPPEND (RFC 3502) with LITERAL+ literals, 500 messages per command: Dovecot
        then saves a whole batch in one transaction. 2000 mails take ~0.5 s instead of ~3.5 s
        with one APPEND per message (the time is spent in Dovecot, not on the wire)."""
        uids: list[int] = []
        batch: list[bytes] = []
        for raw in raws:
            batch.append(raw)
            if len(batch) == 500:
                uids += self._multiappend(batch, mailbox)
                batch = []
        if batch:
            uids += self._multiappend(batch, mailbox)
        return uids

    def _multiappend(self, raws: list[bytes], mailbox: str) -> list[int]:
        self._tags += 1
        tag = f"M{self._tags:05d}".encode()
        command = [tag + b" APPEND " + _quote(mailbox).encode()]
        for raw in raws:
            command.append(b" {%d+}\r\n" % len(raw) + raw)
        command.append(b"\r\n")
        self.imap.send(b"".join(command))
        while True:  # skip untagged lines such as "* 12 EXISTS"
            line = self.imap.readline()
            if not line:
                raise imaplib.IMAP4.abort("connection closed during APPEND")
            if line.startswith(tag + b" "):
                break
        match = re.match(rb"\S+ OK \[APPENDUID \d+ ([\d:,]+)\]", line)
        if match is None:
            raise AssertionError(f"APPEND of {len(raws)} mails to {mailbox} failed: {line!r}")
        uids = _uid_set(match[1].decode())
        assert len(uids) == len(raws), line
        return uids

    # -- reading ---------------------------------------------------------------------------

    def mailboxes(self) -> list[str]:
        """Names of all mailboxes (INBOX, Processed, ...)."""
        typ, data = self.imap.list()
        _check((typ, data), "LIST")
        names = []
        for item in data:
            if isinstance(item, bytes):
                # b'(\\HasNoChildren) "." "Processed"' or b'(...) "." INBOX'
                name = item.rsplit(b" ", 1)[-1].decode()
                names.append(name.strip('"'))
        return names

    def count(self, mailbox: str = "INBOX") -> int:
        """Number of messages in the mailbox (STATUS, no SELECT)."""
        typ, data = self.imap.status(_quote(mailbox), "(MESSAGES)")
        _check((typ, data), f"STATUS {mailbox}")
        match = re.search(rb"MESSAGES (\d+)", _first_bytes(data))
        assert match is not None, data
        return int(match[1])

    def uids(self, mailbox: str = "INBOX") -> list[int]:
        """UIDs of all messages in the mailbox, ascending."""
        self._examine(mailbox)
        typ, data = self.imap.uid("SEARCH", "ALL")
        _check((typ, data), f"UID SEARCH in {mailbox}")
        return sorted(int(uid) for uid in _first_bytes(data).split())

    def fetch_all(self, mailbox: str = "INBOX") -> list[bytes]:
        """Raw bytes of every message, in UID order (BODY.PEEK: \\Seen is not set)."""
        return [raw for _uid, raw in self._fetch(mailbox, "BODY.PEEK[]")]

    def message_ids(self, mailbox: str = "INBOX") -> list[str]:
        """The Message-ID header of every message in UID order ("<...>", "" if missing)."""
        parser = BytesParser(policy=email.policy.default)
        result = []
        for _uid, header in self._fetch(mailbox, "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"):
            value = parser.parsebytes(header, headersonly=True)["Message-ID"]
            result.append(str(value).strip() if value is not None else "")
        return result

    def flags(self, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags, e.g. {1: {"\\Seen"}, 2: set()}."""
        self._examine(mailbox)
        typ, data = self.imap.uid("FETCH", "1:*", "(UID FLAGS)")
        _check((typ, data), f"FETCH FLAGS in {mailbox}")
        result = {}
        for item in data:
            if isinstance(item, bytes):
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", item)
                if match:
                    result[int(match[1])] = set(match[2].decode().split())
        return result

    def _examine(self, mailbox: str) -> None:
        typ, data = self.imap.select(_quote(mailbox), readonly=True)
        if typ != "OK":
            raise AssertionError(f"EXAMINE {mailbox} failed: {data!r}")

    def _fetch(self, mailbox: str, item: str) -> list[tuple[int, bytes]]:
        self._examine(mailbox)
        typ, data = self.imap.uid("FETCH", "1:*", f"(UID {item})")
        _check((typ, data), f"FETCH in {mailbox}")
        result = []
        for part in data:
            # Each message is a tuple (b'1 (UID 7 BODY[] {123}', b'<literal>'), then b')'.
            if isinstance(part, tuple):
                match = re.search(rb"UID (\d+)", part[0])
                assert match is not None, part[0]
                result.append((int(match[1]), part[1]))
        return sorted(result)


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, object], what: str) -> None:
    if result[0] != "OK":
        raise AssertionError(f"{what} failed: {result[1]!r}")


def _first_bytes(data: Sequence[object]) -> bytes:
    first = data[0] if data else b""
    return first if isinstance(first, bytes) else b""


def _uid_set(text: str) -> list[int]:
    """IMAP UID set "3:5,9" -> [3, 4, 5, 9]."""
    uids: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        uids += range(int(first), int(last or first) + 1)
    return uids


def _appenduid(response: object) -> int:
    match = re.search(rb"\[APPENDUID \d+ (\d+)\]", response if isinstance(response, bytes) else b"")
    if match is None:
        raise AssertionError(f"no APPENDUID in {response!r}")
    return int(match[1])


# --------------------------------------------------------------------------------------------
# SMTP sink
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedMail:
    """One message the SmtpSink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: EmailMessage  # parsed with email.policy.default
    auth_user: str | None  # the AUTH login used, if any


SmtpSecurity = Literal["none", "tls", "starttls"]


class SmtpSink:
    """A real SMTP server (aiosmtpd, in its own thread) on 127.0.0.1 that keeps what it gets.

    fail_next(n, code, text) makes the next n DATA commands answer with an error instead of
    accepting; `attempts` counts every DATA command, refused ones included.
    security: "none" (plain), "tls" (implicit TLS) or "starttls"; the certificate is generated
    unless cert_path/key_path are given. auth=(user, password) makes AUTH mandatory.
    """

    def __init__(
        self,
        *,
        security: SmtpSecurity = "none",
        cert_path: Path | None = None,
        key_path: Path | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.host = HOST
        self.port = free_port()
        self.security = security
        self.auth = auth
        self._tmp: Path | None = None
        self.cert_path: Path | None = cert_path
        self.key_path: Path | None = key_path
        if security != "none" and (cert_path is None or key_path is None):
            self._tmp = Path(tempfile.mkdtemp(prefix="mailtick-smtp-"))
            self.cert_path, self.key_path = make_self_signed_cert(self._tmp)
        self._lock = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self._failures: list[str] = []
        self._attempts = 0
        self._controller: Controller | None = None

    # -- control ---------------------------------------------------------------------------

    def fail_next(self, n: int = 1, code: int = 451, text: str = "4.3.0 try again later") -> None:
        """Answer the next n DATA commands with "<code> <text>" (451: retry later, 550: never)."""
        with self._lock:
            self._failures += [f"{code} {text}"] * n

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of every accepted message, oldest first."""
        with self._lock:
            return list(self._messages)

    def to(self, addr: str) -> list[ReceivedMail]:
        """The accepted messages with `addr` among their envelope recipients, oldest first."""
        return [m for m in self.messages if addr in m.rcpt_tos]

    @property
    def attempts(self) -> int:
        """DATA commands seen so far, refused ones included."""
        with self._lock:
            return self._attempts

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """Block until at least `count` messages were accepted; AssertionError on timeout."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                got = [(m.mail_from, m.rcpt_tos, m.message["Subject"]) for m in self._messages]
                raise AssertionError(
                    f"expected {count} mail(s) within {timeout}s, got {len(got)} "
                    f"after {self._attempts} DATA attempt(s): {got}"
                )
            return list(self._messages)

    def ssl_context(self) -> ssl.SSLContext:
        """Client SSL context trusting this sink's certificate."""
        assert self.cert_path is not None, "SmtpSink has no certificate (security='none')"
        return client_ssl_context(self.cert_path)

    def start(self) -> None:
        server_ctx: ssl.SSLContext | None = None
        if self.security != "none":
            assert self.cert_path is not None and self.key_path is not None
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(self.cert_path, self.key_path)
        smtp_kwargs: dict[str, Any] = {"enable_SMTPUTF8": True}
        if self.security == "starttls":
            smtp_kwargs["tls_context"] = server_ctx
            smtp_kwargs["require_starttls"] = True
        if self.auth is not None:
            smtp_kwargs["authenticator"] = self._authenticate
            smtp_kwargs["auth_required"] = True
            # aiosmtpd only counts STARTTLS as "TLS"; implicit TLS and plain test runs
            # must be allowed to AUTH as they are.
            smtp_kwargs["auth_require_tls"] = self.security == "starttls"
        self._controller = Controller(
            _SinkHandler(self),
            hostname=self.host,
            port=self.port,
            ssl_context=server_ctx if self.security == "tls" else None,
            server_hostname="localhost",
            **smtp_kwargs,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- called from the aiosmtpd thread ---------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        assert self.auth is not None
        ok = (
            isinstance(data, LoginPassword)
            and (data.login.decode(), data.password.decode()) == self.auth
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _on_data(self, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self._attempts += 1
            if self._failures:
                return self._failures.pop(0)
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        login = session.auth_data
        received = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            raw=raw,
            message=parse_mail(raw),
            auth_user=login.login.decode() if isinstance(login, LoginPassword) else None,
        )
        with self._lock:
            self._messages.append(received)
            self._lock.notify_all()
        return "250 2.0.0 OK: queued"


class _SinkHandler:
    """aiosmtpd handler object: aiosmtpd looks up `handle_DATA` by name."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self._sink._on_data(session, envelope)


def parse_mail(raw: bytes) -> EmailMessage:
    """Parse raw mail bytes the way mailtick tests expect (email.policy.default)."""
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


# --------------------------------------------------------------------------------------------
# Mail builder
# --------------------------------------------------------------------------------------------


def make_mail(
    *,
    from_addr: str = "Alice Customer <alice@customer.example>",
    to_addr: str = DEFAULT_USER,
    subject: str = "Printer on floor 3 is broken",
    body: str = "Hello,\n\nthe printer on floor 3 jams on every page.\n\nRegards,\nAlice\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    date: datetime | str | None = None,
    headers: Mapping[str, str] | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    html: str | None = None,
) -> bytes:
    """A realistic RFC 5322 mail as bytes with CRLF line endings.

    message_id: "<...>" (generated "<...@customer.example>" if None). date: now if None.
    headers: extra or replacing headers, e.g. {"Auto-Submitted": "auto-replied", "Cc": "..."}.
    attachments: (filename, "type/subtype", data). html: adds a text/html alternative.
    """
    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = from_addr
    msg["To"] = to_addr
    msg["Subject"] = subject
    if isinstance(date, datetime):
        date = email.utils.format_datetime(date)
    msg["Date"] = date or email.utils.format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="customer.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for name, value in (headers or {}).items():
        if name in msg:
            msg.replace_header(name, value)
        else:
            msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=email.policy.SMTP)


def slow_mail(parts: int = 40_000) -> bytes:
    """A real mail that mail-parser needs seconds for (40,000 MIME parts, about 4 MB)."""
    body = "".join(
        f"--b\r\nContent-Type: text/plain\r\n"
        f'Content-Disposition: attachment; filename="f{i}.txt"\r\n\r\nx{i}\r\n'
        for i in range(parts)
    )
    head = (
        "From: slow@customer.example\r\nTo: support@example.com\r\nSubject: Many parts\r\n"
        "Message-ID: <slow@customer.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    )
    return (head + body + "--b--\r\n").encode()


# -- PostgreSQL: a throw-away database per test or benchmark run ------------------------------

PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DATABASE = "127.0.0.1", 5432, "postgres", "test"


class PostgresUnreachable(RuntimeError):
    """The PostgreSQL that tests and benchmarks need (trust auth on 127.0.0.1) is not there."""


@contextlib.contextmanager
def postgres_database(prefix: str = "mt_test") -> Iterator[str]:
    """CREATE a fresh database, yield its URL, DROP it afterwards (closing what the code
    under test forgot to close, which would block the DROP)."""
    import psycopg2
    from psycopg2 import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DATABASE, connect_timeout=5
        )
    except psycopg2.OperationalError as error:
        raise PostgresUnreachable(
            f"PostgreSQL at {PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DATABASE} is unreachable "
            f"({error}). The tests need it; start it (see .ci/run)."
        ) from error
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, as systemd stops a service; SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def terminate_backends(url: str, allow_connections: bool = True) -> int:
    """pg_terminate_backend for every connection to the database of `url`, as a PostgreSQL
    restart or a failover does to the daemon's connections. allow_connections=False
    also refuses new connections (until a call with True): a database that stays away."""
    import psycopg2
    from psycopg2 import sql

    name = urlsplit(url).path.lstrip("/")
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_ADMIN_DATABASE)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            allow = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allow_connections else "false")
            )
            cur.execute(allow)
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            row = cur.fetchone()
            return int(row[0]) if row else 0
    finally:
        admin.close()
