"""The config loader as a user meets it: the example file, the error messages, secrets, paths."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mailtick.config import (
    REQUIRED,
    SCHEMA,
    AgentConfig,
    Config,
    ConfigError,
    ImapConfig,
    Key,
    Many,
    QueueConfig,
    RoutingRule,
    Section,
    SecurityConfig,
    SmtpConfig,
    TlsSettings,
    describe,
    field_default,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.toml"
EXAMPLE_ENV = {"MAILTICK_IMAP_PASSWORD": "imap-secret", "MAILTICK_SMTP_PASSWORD": "smtp-secret"}
SECRET_CHOICES = "give one of password, password_file, password_env"


def example_text(tmp_path: Path) -> str:
    """config.toml with its reply-token secret file in tmp_path (`mailtick init` writes it)."""
    secret = tmp_path / "reply-secret"
    secret.write_text("cd" * 32 + "\n")
    return EXAMPLE.read_text().replace('"/var/lib/mailtick/reply-secret"', f'"{secret}"')


def minimal() -> dict[str, Any]:
    return {
        "imap": {"host": "mail.example.com", "username": "support", "password": "imap-secret"},
        "smtp": {"host": "mail.example.com", "from_address": "Support <support@example.com>"},
        "database": {"url": "sqlite:///:memory:"},
    }


def changed(section: str, **keys: object) -> dict[str, Any]:
    data = minimal()
    data.setdefault(section, {}).update(keys)
    return data


def parse(data: Mapping[str, object], env: Mapping[str, str] | None = None, **kw: Any) -> Config:
    return parse_config(data, env or {}, **kw)


def problems(
    data: Mapping[str, object], env: Mapping[str, str] | None = None, **kw: Any
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {}, **kw)
    return info.value.problems


def schema_keys(section: Section = SCHEMA, prefix: str = "") -> Iterator[tuple[str, Key]]:
    for name, spec in section.keys.items():
        if isinstance(spec, Many):
            yield from schema_keys(spec.section, f"{prefix}{name}.")
        elif isinstance(spec, Section):
            yield from schema_keys(spec, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", spec


def example_key_lines() -> Iterator[tuple[str, str]]:
    """(dotted key, line) for every key line of config.toml, commented-out alternatives too."""
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        bare = line.lstrip("# ")
        if header := re.match(r"\[\[?([\w.]+)\]", bare):
            section = header[1]
        elif key := re.match(r"(\w+)\s*=", bare):
            yield f"{section}.{key[1]}", bare


# --- the documented example --------------------------------------------------------------------


def test_example_loads_with_both_password_variables_set(tmp_path: Path) -> None:
    secret = tmp_path / "reply-secret"
    secret.write_text("ab" * 32 + "\n")
    data = tomllib.loads(EXAMPLE.read_text())
    data["security"]["secret_file"] = str(secret)  # `mailtick init` writes it on a real host
    config = parse_config(data, env=EXAMPLE_ENV, source=EXAMPLE)
    assert config.security.secret == b"\xab" * 32
    assert [(a.name, a.addresses, a.display_name) for a in config.agents] == [
        ("dana", ("dana@example.com",), "Dana Example")
    ]
    assert (config.imap.host, config.imap.port, config.imap.security) == ("127.0.0.1", 993, "tls")
    assert config.imap.password == "imap-secret"
    assert config.smtp.password == "smtp-secret"
    assert config.smtp.from_address == "Example Support <support@example.com>"
    assert config.database.url == "sqlite:////var/lib/mailtick/mailtick.db"
    assert config.source == EXAMPLE


def test_example_without_the_variables_names_both() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE, env={})
    assert info.value.problems == [
        "imap.password_env: environment variable MAILTICK_IMAP_PASSWORD is not set",
        "smtp.password_env: environment variable MAILTICK_SMTP_PASSWORD is not set",
        "security.secret_file: cannot read /var/lib/mailtick/reply-secret: No such file or "
        f'directory (run "mailtick init -c {EXAMPLE}" to create it)',
    ]


def test_every_accepted_key_is_documented_and_every_documented_key_accepted() -> None:
    accepted = {dotted for dotted, _ in schema_keys()}
    documented = {dotted for dotted, _ in example_key_lines()}
    assert accepted - documented == set(), "keys missing from config.toml"
    assert documented - accepted == set(), "config.toml documents keys the loader rejects"


def test_every_documented_key_has_a_comment() -> None:
    uncommented = [line for _, line in example_key_lines() if "#" not in line]
    assert uncommented == []


def test_example_shows_the_defaults() -> None:
    """A key set to another value than its default says so: `# default "": ...`."""
    example = tomllib.loads(EXAMPLE.read_text())
    lines = dict(example_key_lines())
    for dotted, key in schema_keys():
        if key.default is REQUIRED or key.default is None:
            continue
        table = example
        *sections, name = dotted.split(".")
        for section in sections:
            table = table[section]
            table = table[0] if isinstance(table, list) else table  # [[agents]]: the first
        default = list(key.default) if isinstance(key.default, tuple) else key.default
        default = str(default) if isinstance(default, Path) else default  # as TOML writes it
        stated = f"# default {json.dumps(default)}" in lines[dotted]
        assert table[name] == default or stated, dotted


# --- one source for every default: the section dataclasses ------------------------------------

SECRET_ENV = {**EXAMPLE_ENV, "MAILTICK_REPLY_SECRET": "ab" * 32}
DANA = {"name": "dana", "addresses": ["dana@example.com"]}
PASSWORD_SOURCES = ("password", "password_file", "password_env")


def loaded_example() -> Config:
    """config.toml through the loader; the reply key from a variable, so that the documented
    secret_file (kept as it is) needs no file."""
    data = tomllib.loads(EXAMPLE.read_text())
    data["security"]["secret_env"] = "MAILTICK_REPLY_SECRET"
    return parse_config(data, env=SECRET_ENV, source=EXAMPLE)


def loaded_defaults(security: str = "tls") -> Config:
    """Only the required keys and one agent: every other value is the code's default."""
    data = {**minimal(), "agents": [DANA], "security": {"secret_env": "MAILTICK_REPLY_SECRET"}}
    for section in ("imap", "smtp"):
        data[section] = {**data[section], "security": security}
        if security == "none":
            data[section]["host"] = "127.0.0.1"
    return parse_config(data, env=SECRET_ENV)


# Arrays of tables, and a block of each with nothing but its required keys.
BLOCKS: dict[str, object] = {
    "agents": AgentConfig(name="x", addresses=("x@example.com",)),
    "queues": QueueConfig(name="x"),
    "routing": RoutingRule(),
}


def value_at(config: Config, dotted: str) -> object:
    """The loaded value of a documented key: "imap.tls.verify", "log.level", "agents.name"."""
    if dotted == "log.level":
        return config.log_level
    found: object = config
    for part in dotted.split("."):
        found = getattr(found, part)
        if part in BLOCKS and isinstance(found, tuple):  # an array of tables: its first block
            found = found[0] if found else BLOCKS[part]  # none given: the block's defaults
    return found


def documented_keys() -> Iterator[tuple[str, str]]:
    """(dotted key, its comment) for every key config.toml sets, not the commented-out ones."""
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if header := re.match(r"\[\[?([\w.]+)\]", line):
            section = header[1]
        elif key := re.match(r"(\w+)\s*=.*?#\s*(.*)$", line):
            yield f"{section}.{key[1]}", key[2]


def test_example_values_are_the_loaded_defaults_unless_it_says_otherwise() -> None:
    """Every key config.toml sets either has the value the loader uses when the key is absent,
    or states that default ("# default ..."), or is marked "(required)" and has none."""
    example, defaults, schema = loaded_example(), loaded_defaults(), dict(schema_keys())
    for dotted, comment in documented_keys():
        default = schema[dotted].default
        if comment.startswith("(required)"):
            assert default is REQUIRED, f"{dotted}: documented as required"
        elif stated := re.match(r'default (".*?"|\S+?)[:;,]?(?:\s|$)', comment):
            found = value_at(defaults, dotted)
            found = list(found) if isinstance(found, tuple) else found  # as JSON writes it
            assert found == json.loads(stated[1]), dotted
        elif default is not None:  # None: absent means "not given" (a password source)
            assert value_at(example, dotted) == value_at(defaults, dotted), dotted
    required = {dotted for dotted, key in schema.items() if key.default is REQUIRED}
    marked = {dotted for dotted, comment in documented_keys() if comment.startswith("(required)")}
    assert required == marked


@pytest.mark.parametrize("section", ["imap", "smtp"])
def test_example_states_the_default_ports(section: str) -> None:
    """`port = 993  # default: 993 for "tls", 143 for "starttls" and "none"` is what happens."""
    [comment] = [c for dotted, c in documented_keys() if dotted == f"{section}.port"]
    stated = re.findall(r'(\d+) for ((?:"\w+"(?: and )?)+)', comment)
    modes = {mode: int(port) for port, modes in stated for mode in re.findall(r'"(\w+)"', modes)}
    assert sorted(modes) == ["none", "starttls", "tls"]
    for mode, port in modes.items():
        assert getattr(loaded_defaults(mode), section).port == port, mode


def test_schema_defaults_are_the_dataclass_field_defaults() -> None:
    """No default is written in the schema table: each comes from its section's dataclass."""

    def sections(section: Section) -> Iterator[Section]:
        yield section
        for spec in section.keys.values():
            if isinstance(spec, Section | Many):
                yield from sections(spec if isinstance(spec, Section) else spec.section)

    for section in sections(SCHEMA):
        make: Any = section.make
        if make is None:
            continue
        fields = {f.name for f in dataclasses.fields(make)}
        for name, key in section.keys.items():
            if not isinstance(key, Key) or name not in fields or name in PASSWORD_SOURCES:
                continue  # a password source's None means "not given", not a default
            field = field_default(make, name)
            derived = field is REQUIRED and key.default is None  # a port follows security
            assert key.default == field or derived, f"{make.__name__}.{name}"
    log = SCHEMA.keys["log"]
    level = log.keys["level"] if isinstance(log, Section) else None
    assert isinstance(level, Key) and level.default == field_default(Config, "log_level")


def test_a_config_with_only_the_required_keys_is_the_dataclass_defaults() -> None:
    config = loaded_defaults()
    for section in (config.tickets, config.quarantine, config.limits, config.drift):
        assert section == type(section)()
    for tls in (config.imap.tls, config.smtp.tls):
        assert tls == TlsSettings()
    assert config.agents == (AgentConfig(name="dana", addresses=("dana@example.com",)),)
    no_secret = dataclasses.replace(config.security, secret_env=None, secret=b"")
    assert no_secret == SecurityConfig()
    imap, smtp = config.imap, config.smtp
    assert imap == ImapConfig(
        host=imap.host, port=993, username=imap.username, password="imap-secret"
    )
    assert smtp == SmtpConfig(host=smtp.host, port=465, from_address=smtp.from_address)
    assert config.log_level == Config.log_level


# --- problems: one line per bad key, all of them ----------------------------------------------

CLEAR = "allowed only for a loopback host, got host"
ONE_ADDRESS = 'expected one address such as "Support <support@example.com>"'
PREFIX_RULE = "expected 1 to 10 letters and digits, starting with a letter"


@pytest.mark.parametrize(
    ("section", "keys", "expected"),
    [
        ("imap", {"port": "abc"}, 'imap.port: expected an integer, got "abc"'),
        ("imap", {"port": True}, "imap.port: expected an integer, got a boolean"),
        ("imap", {"port": 993.0}, "imap.port: expected an integer, got 993"),
        ("imap", {"port": 0}, "imap.port: expected 1..65535, got 0"),
        (
            "imap",
            {"security": "ssl"},
            'imap.security: expected one of "tls", "starttls", "none", got "ssl"',
        ),
        ("imap", {"colour": "red"}, "imap.colour: unknown key"),
        ("imap", {"prot": 993}, 'imap.prot: unknown key (did you mean "port"?)'),
        (
            "imap",
            {"tls": {"verfiy": False}},
            'imap.tls.verfiy: unknown key (did you mean "verify"?)',
        ),
        ("imap", {"tls": {"verify": "no"}}, 'imap.tls.verify: expected a boolean, got "no"'),
        ("imap", {"tls": True}, "imap.tls: expected a table, got a boolean"),
        (
            "imap",
            {"security": "none"},
            f'imap.security: "none" sends the password in clear; {CLEAR} "mail.example.com"',
        ),
        (
            "imap",
            {"host": "mail.example.com:993"},
            'imap.host: expected a host name or IP address, got "mail.example.com:993"',
        ),
        ("imap", {"mailbox": ""}, 'imap.mailbox: expected a non-empty string, got ""'),
        (
            "imap",
            {"processed_mailbox": "inbox"},
            'imap.processed_mailbox: expected a mailbox other than imap.mailbox, got "inbox"',
        ),
        ("imap", {"batch_size": 501}, "imap.batch_size: expected 1..500, got 501"),
        ("imap", {"idle_timeout": 1800}, "imap.idle_timeout: expected 10..1680, got 1800"),
        ("imap", {"timeout": 0}, "imap.timeout: expected > 0, got 0"),
        ("imap", {"timeout": "60s"}, 'imap.timeout: expected a number, got "60s"'),
        (
            "imap",
            {"reconnect_min": 500},
            "imap.reconnect_min: expected <= imap.reconnect_max (300), got 500",
        ),
        ("imap", {"password": 12345}, "imap.password: expected a string, got an integer"),
        (
            "smtp",
            {"security": "none"},
            f'smtp.security: "none" sends mail in clear; {CLEAR} "mail.example.com"',
        ),
        (
            "smtp",
            {"retry_min": 7200},
            "smtp.retry_min: expected <= smtp.retry_max (3600), got 7200",
        ),
        ("smtp", {"max_attempts": 0}, "smtp.max_attempts: expected >= 1, got 0"),
        (
            "smtp",
            {"from_address": "a@example.com, b@example.com"},
            f'smtp.from_address: {ONE_ADDRESS}, got "a@example.com, b@example.com"',
        ),
        (
            "smtp",
            {"from_address": "support"},
            f'smtp.from_address: {ONE_ADDRESS}, got "support"',
        ),
        (
            "smtp",
            {"from_address": "a@example.com\r\nBcc: all@example.com"},
            "smtp.from_address: expected a single-line string, "
            'got "a@example.com\\r\\nBcc: all@example.com"',
        ),
        (
            "database",
            {"url": "mysql://u:hunter2@db/mt"},
            'database.url: expected a sqlite:/// or postgresql:// URL, got "mysql://u:***@db/mt"',
        ),
        (
            "database",
            {"url": "sqlite://mailtick.db"},
            "database.url: expected sqlite:///relative.db, sqlite:////absolute.db "
            'or sqlite:///:memory:, got "sqlite://mailtick.db"',
        ),
        (
            "database",
            {"url": "postgresql://db.example.com/"},
            "database.url: expected a database name, as in postgresql://user@host/dbname, "
            'got "postgresql://db.example.com/"',
        ),
        ("tickets", {"prefix": "M-T"}, f'tickets.prefix: {PREFIX_RULE}, got "M-T"'),
        ("tickets", {"prefix": "ABCDEFGHIJK"}, f'tickets.prefix: {PREFIX_RULE}, got "ABCDEFGHIJK"'),
        ("tickets", {"reopen_days": -1}, "tickets.reopen_days: expected >= 0, got -1"),
        (
            "tickets",
            {"default_language": "fr"},
            'tickets.default_language: expected one of "de", "en", got "fr"',
        ),
        (
            "log",
            {"level": "verbose"},
            'log.level: expected one of "DEBUG", "INFO", "WARNING", "ERROR", got "verbose"',
        ),
    ],
)
def test_problem_message(section: str, keys: dict[str, object], expected: str) -> None:
    assert problems(changed(section, **keys)) == [expected]


def test_missing_keys_and_sections() -> None:
    assert problems({"imap": {"port": 993}}) == [
        "imap.host: missing (required)",
        "imap.username: missing (required)",
        f"imap.password: missing (required; {SECRET_CHOICES})",
        "smtp: missing (required)",
        "database: missing (required)",
    ]


def test_unknown_and_malformed_sections() -> None:
    data: dict[str, Any] = {**minimal(), "imap": 5, "imapp": {}}
    assert problems(data) == [
        "imap: expected a table, got 5",
        'imapp: unknown key (did you mean "imap"?)',
    ]


def test_all_problems_are_reported_at_once() -> None:
    data = minimal()
    data["imap"].update(port="abc", security="ssl", colour="red")
    data["smtp"].update(timeout=-1)
    data["tickets"] = {"default_language": "fr"}
    del data["database"]
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.problems == [
        'imap.port: expected an integer, got "abc"',
        'imap.security: expected one of "tls", "starttls", "none", got "ssl"',
        "imap.colour: unknown key",
        "smtp.timeout: expected > 0, got -1",
        'tickets.default_language: expected one of "de", "en", got "fr"',
        "database: missing (required)",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


# --- values and defaults -----------------------------------------------------------------------


def test_defaults_fill_optional_keys_and_sections() -> None:
    config = parse(minimal())
    assert (config.imap.port, config.imap.mailbox, config.imap.tls.verify) == (993, "INBOX", True)
    assert (config.smtp.port, config.smtp.username, config.smtp.password) == (465, "", "")
    assert (config.tickets.prefix, config.log_level) == ("MT", "INFO")


def test_default_port_follows_security() -> None:
    data = minimal()
    data["imap"]["security"] = "starttls"
    data["smtp"]["security"] = "starttls"
    config = parse(data)
    assert (config.imap.port, config.smtp.port) == (143, 587)


def test_floats_accept_integers_and_log_level_any_case() -> None:
    data = changed("imap", timeout=5)
    data["log"] = {"level": "debug"}
    config = parse(data)
    assert config.imap.timeout == 5.0
    assert isinstance(config.imap.timeout, float)
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "::1"])
def test_cleartext_is_allowed_on_loopback(host: str) -> None:
    config = parse(changed("imap", host=host, security="none"))
    assert (config.imap.security, config.imap.port) == ("none", 143)


# --- secrets -----------------------------------------------------------------------------------


def test_password_inline_from_env_and_from_relative_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "smtp.password").write_text("file secret\n")
    data = minimal()
    del data["imap"]["password"]
    data["imap"]["password_env"] = "IMAP_PW"
    data["smtp"].update(username="support", password_file="secrets/smtp.password")
    config = parse(data, {"IMAP_PW": "env secret"}, source=tmp_path / "config.toml")
    assert config.imap.password == "env secret"
    assert config.smtp.password == "file secret"
    assert parse(minimal()).imap.password == "imap-secret"


def test_two_password_sources_conflict() -> None:
    data = changed("imap", password_env="IMAP_PW")
    assert problems(data, {"IMAP_PW": "x"}) == [
        "imap.password_env: conflicts with imap.password "
        "(give only one of password, password_file, password_env)"
    ]


def test_unreadable_password_file_and_empty_variable(tmp_path: Path) -> None:
    data = changed("imap", password_env="IMAP_PW")
    del data["imap"]["password"]
    data["smtp"].update(username="support", password_file="nope")
    assert problems(data, {"IMAP_PW": ""}, source=tmp_path / "config.toml") == [
        "imap.password_env: environment variable IMAP_PW is empty",
        f"smtp.password_file: cannot read {tmp_path / 'nope'}: No such file or directory",
    ]


def test_smtp_needs_a_password_exactly_when_it_has_a_username() -> None:
    assert problems(changed("smtp", username="support")) == [
        f"smtp.password: missing (required because smtp.username is set; {SECRET_CHOICES})"
    ]
    assert problems(changed("smtp", password="x")) == [
        "smtp.password: given, but smtp.username is empty (no AUTH)"
    ]


def test_secrets_stay_out_of_describe_and_repr() -> None:
    data = changed("smtp", username="support", password="smtp-secret")
    data["database"]["url"] = "postgresql://mailtick:db-secret@db.example.com:5432/mailtick"
    config = parse(data)
    summary = describe(config)
    assert "mail.example.com:993, tls, certificate verified" in summary
    assert "postgresql://mailtick:***@db.example.com:5432/mailtick" in summary
    for text in (summary, repr(config)):
        for secret in ("imap-secret", "smtp-secret", "db-secret"):
            assert secret not in text


# --- paths -------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("")
    data = changed("imap", tls={"ca_file": "certs/ca.pem"})
    data["database"]["url"] = "sqlite:///data/mailtick.db?timeout=5"
    config = parse(data, source=tmp_path / "config.toml")
    assert config.imap.tls.ca_file == tmp_path / "certs" / "ca.pem"
    assert config.database.url == f"sqlite:///{tmp_path}/data/mailtick.db?timeout=5"


def test_relative_config_path_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text(
        example_text(tmp_path).replace("////var/lib/", "///")
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/config.toml"), env=EXAMPLE_ENV)
    assert config.database.url == f"sqlite:///{tmp_path}/etc/mailtick/mailtick.db"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////var/lib/mailtick/mailtick.db", "sqlite:///:memory:", "postgres://mt@db/mailtick"],
)
def test_absolute_and_server_database_urls_are_kept(url: str) -> None:
    assert parse(changed("database", url=url)).database.url == url


def test_missing_ca_file(tmp_path: Path) -> None:
    data = changed("smtp", tls={"ca_file": "ca.pem"})
    assert problems(data, source=tmp_path / "config.toml") == [
        f"smtp.tls.ca_file: cannot read {tmp_path / 'ca.pem'}: No such file or directory"
    ]


# --- reading the file --------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[imap]\nhost = "mail.example.com"\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [f"{path}: line 3: Invalid value (column 8)"]


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [f"cannot read {path}: No such file or directory"]


def test_values_from_a_toml_file_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(example_text(tmp_path).replace("port = 993", "port = true"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env=EXAMPLE_ENV)
    assert info.value.problems == ["imap.port: expected an integer, got a boolean"]


# --- agents and the reply-token secret ---------------------------------------------------------


def with_agents(
    tmp_path: Path, *agents: dict[str, object], secret: str = "ab" * 32
) -> dict[str, Any]:
    (tmp_path / "secret").write_text(secret)
    data = minimal()
    data["security"] = {"secret_file": str(tmp_path / "secret")}
    data["agents"] = list(agents)
    return data


def test_agents_are_read_with_their_secret(tmp_path: Path) -> None:
    config = parse(with_agents(tmp_path, {"name": "dana", "addresses": ["Dana@Example.com"]}))
    [agent] = config.agents
    assert (agent.name, agent.addresses, agent.queues) == (
        "dana",
        ("dana@example.com",),
        ("default",),
    )
    assert config.security.secret == b"\xab" * 32 and config.security.token_days == 90


def test_without_agents_no_secret_is_needed() -> None:
    assert parse(minimal()).agents == ()


def test_agent_problems_name_the_entry(tmp_path: Path) -> None:
    data = with_agents(
        tmp_path,
        {"name": "dana", "addresses": ["dana@example.com"]},
        {"name": "dana", "addresses": ["DANA@example.com", "not an address"]},
        {"name": "Eli Smith", "addresses": []},
        secret="short",
    )
    found = problems(data)
    assert (
        "agents[1].addresses: expected plain addresses such as "
        '"dana@example.com", got "not an address"' in found
    )
    assert any(p.startswith("agents[2].name: expected a short lower-case name") for p in found)
    assert "agents[2].addresses: expected a non-empty array of strings, got an array" in found
    assert 'agents[1].name: "dana" is used by another agent' in found
    assert "security: the reply-token secret has 5 bytes, needs 32" in found


def test_drift_threshold_default_is_the_one_the_data_set_was_measured_with() -> None:
    from mailtick.threading.drift import DEFAULT_THRESHOLD

    assert parse(minimal()).drift.threshold == DEFAULT_THRESHOLD
    assert tomllib.loads(EXAMPLE.read_text())["drift"]["threshold"] == DEFAULT_THRESHOLD
