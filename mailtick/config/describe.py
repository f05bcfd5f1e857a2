"""Config: a short human summary for `mailtick check-config`; never a secret. Touches nothing."""

from __future__ import annotations

from mailtick.config.checks import num, show
from mailtick.config.sections import Config, ImapConfig, Security, SmtpConfig, TlsSettings, mask_url


def _tls_text(security: Security, tls: TlsSettings) -> str:
    if security == "none":
        return "no TLS (loopback only)"
    checked = "certificate verified" if tls.verify else "certificate NOT verified"
    extra = f", CA file {tls.ca_file}" if tls.ca_file is not None else ""
    return f"{security}, {checked}{extra}"


def _server_text(host: str, port: int, security: Security, tls: TlsSettings) -> str:
    address = f"[{host}]" if ":" in host else host
    return f"{address}:{port}, {_tls_text(security, tls)}"


def _login_text(username: str) -> str:
    return f"login {username}, password set" if username else "no AUTH"


def _describe_imap(imap: ImapConfig) -> list[str]:
    wait = f"IDLE renewed every {num(imap.idle_timeout)} s" if imap.idle else "IDLE off"
    return [
        f"imap:      {_server_text(imap.host, imap.port, imap.security, imap.tls)}",
        f"           {_login_text(imap.username)}",
        f"           mailbox {show(imap.mailbox)} -> {show(imap.processed_mailbox)}, "
        f"quarantine {show(imap.quarantine_mailbox)}",
        f"           {wait}, poll every {num(imap.poll_interval)} s, batches of {imap.batch_size}",
    ]


def _describe_smtp(smtp: SmtpConfig) -> list[str]:
    return [
        f"smtp:      {_server_text(smtp.host, smtp.port, smtp.security, smtp.tls)}",
        f"           {_login_text(smtp.username)}",
        f"           from {smtp.from_address}, up to {smtp.max_attempts} attempts",
    ]


def describe(config: Config) -> str:
    """A short human summary for `mailtick check-config`; never prints a secret."""
    tickets = config.tickets
    lines = [
        f"config:    {config.source if config.source is not None else '(not from a file)'}",
        *_describe_imap(config.imap),
        *_describe_smtp(config.smtp),
        f"database:  {mask_url(config.database.url)}",
        f"tickets:   [{tickets.prefix}#...], reopen within {tickets.reopen_days} days, "
        f"default language {tickets.default_language}",
        f"log level: {config.log_level}",
    ]
    return "\n".join(lines)
