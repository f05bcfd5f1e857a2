"""Commands atop an agent's reply (#close, #status ...). Touches nothing: no I/O, no database."""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mailtick.numbers import is_valid

ArgKind = Literal["none", "status", "priority", "agent", "ticket", "text"]


@dataclass(frozen=True)
class Command:
    name: str  # canonical English: "close", "status", "assign", "priority", "note", "merge", ...
    arg: str  # canonical argument (status, priority, agent name, ticket number, wish) or ""


@dataclass(frozen=True)
class CommandParse:
    commands: tuple[Command, ...]
    body: str  # the text without the command lines (leading blank lines dropped)
    errors: tuple[str, ...]  # one line per problem; any error means: relay nothing


@dataclass(frozen=True)
class CommandSpec:
    english: tuple[str, ...]  # names without "#"; the first is the canonical name
    german: tuple[str, ...]
    arg: ArgKind
    help_en: str
    help_de: str
    group: str  # at most one command of a group per mail; "" may repeat


COMMANDS: dict[str, CommandSpec] = {
    "close": CommandSpec(
        ("close",),
        ("schließen", "schliessen", "erledigt"),
        "none",
        "close the ticket",
        "Ticket schließen",
        "status",
    ),
    "status": CommandSpec(("status",), (), "status", "set the status", "Status setzen", "status"),
    "assign": CommandSpec(
        ("assign",),
        ("zuweisen", "zuordnen"),
        "agent",
        "give the ticket to another agent",
        "Ticket einem anderen Bearbeiter geben",
        "assign",
    ),
    "priority": CommandSpec(
        ("priority",),
        ("priorität", "prioritaet"),
        "priority",
        "set the priority",
        "Priorität setzen",
        "priority",
    ),
    "note": CommandSpec(
        ("note",),
        ("notiz", "intern"),
        "none",
        "the whole mail becomes an internal note, the customer sees nothing",
        "die ganze Mail wird eine interne Notiz, der Kunde sieht nichts",
        "note",
    ),
    "merge": CommandSpec(
        ("merge",),
        ("zusammenführen", "zusammenfuehren"),
        "ticket",
        "merge this ticket into the ticket with that number",
        "dieses Ticket in das Ticket mit dieser Nummer zusammenführen",
        "merge",
    ),
    "wish": CommandSpec(
        ("wish",),
        ("wunsch",),
        "text",
        "record a feature wish",
        "Funktionswunsch festhalten",
        "",
    ),
    "split": CommandSpec(
        ("split",),
        ("teilen", "trennen"),
        "none",
        "the last customer message becomes a new linked ticket",
        "die letzte Kundennachricht wird ein neues, verknüpftes Ticket",
        "split",
    ),
}

# canonical value -> German aliases (the first is the one shown in German help)
STATUSES: dict[str, tuple[str, ...]] = {
    "open": ("offen",),
    "in-progress": ("in-bearbeitung", "bearbeitung"),
    "waiting": ("wartend", "warten"),
    "answered": ("beantwortet",),
    "closed": ("geschlossen",),
}
PRIORITIES: dict[str, tuple[str, ...]] = {
    "urgent": ("dringend",),
    "high": ("hoch",),
    "normal": ("normal",),
    "low": ("niedrig",),
}
CHOICES: dict[ArgKind, dict[str, tuple[str, ...]]] = {"status": STATUSES, "priority": PRIORITIES}
PLACEHOLDERS: dict[ArgKind, tuple[str, str]] = {  # (English, German) for help_text
    "agent": ("<agent>", "<Bearbeiter>"),
    "ticket": ("<number>", "<Nummer>"),
    "text": ("<name>", "<Name>"),
}
MAX_WISH = 200
MAX_REFERENCE = 40  # "[Support#10019]" and the like

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"
# "#" then a letter: "#1 ist das Problem", "#!" and "# Titel" are text and end the commands
_COMMAND = re.compile(r"#([^\W\d_][\w-]*)\s*:?\s*(.*)", re.DOTALL)
# "10019", "#10019", "MT#10019", "[MT#10019]", "Ticket 10019", "MT-10019"
_TICKET_REF = re.compile(r"\[?\s*(?:[^\W\d_]+\s*)?[#:-]?\s*([0-9]+)\s*\]?")


def _fold(text: str) -> str:
    """Case- and form-insensitive key: "#Schließen" and "#SCHLIESSEN" fold alike."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


_ALIASES: dict[str, tuple[str, str, bool]] = {  # folded alias -> (canonical, as written, German)
    _fold(alias): (name, alias, german)
    for name, spec in COMMANDS.items()
    for german, aliases in ((False, spec.english), (True, spec.german))
    for alias in aliases
}


@dataclass(frozen=True)
class _Request:
    spec: CommandSpec
    typed: str  # the command as the agent wrote it, with "#"
    arg: str
    german: bool  # written with a German alias: list German values in errors
    agents: Sequence[str]


def parse_commands(text: str, agent_names: Sequence[str]) -> CommandParse:
    """Command lines at the top of `text` (blank lines between them allowed), and the rest."""
    lines = _LINE.findall(text)
    commands: list[Command] = []
    errors: list[str] = []
    groups: dict[str, str] = {}  # group -> the command that took it
    start = 0
    for line in lines:
        content = line.strip().strip(_INVISIBLE).strip()
        match = _COMMAND.fullmatch(unicodedata.normalize("NFC", content)) if content else None
        if content and match is None:
            break
        start += 1
        if match is None:
            continue
        command, error = _parse_line(match[1], match[2].strip(), agent_names)
        error = error or _conflict(command, match[1], groups)
        if error:
            errors.append(error)
        elif command is not None:
            commands.append(command)
    return CommandParse(tuple(commands), "".join(lines[start:]), tuple(errors))


def _parse_line(typed: str, arg: str, agents: Sequence[str]) -> tuple[Command | None, str]:
    known = _ALIASES.get(_fold(typed))
    if known is None:
        return None, _unknown(typed)
    name, _, german = known
    spec = COMMANDS[name]
    value, error = _ARGUMENTS[spec.arg](_Request(spec, f"#{typed}", arg, german, agents))
    return (None, error) if error else (Command(name, value), "")


def _conflict(command: Command | None, typed: str, groups: dict[str, str]) -> str:
    if command is None:
        return ""
    group = COMMANDS[command.name].group
    if not group:
        return ""
    if group in groups:
        return f'"#{_show(typed)}" conflicts with "{groups[group]}": one {group} command per mail'
    groups[group] = f"#{_show(typed)}"
    return ""


def _unknown(typed: str) -> str:
    close = difflib.get_close_matches(_fold(typed), list(_ALIASES), n=1, cutoff=0.6)
    hint = f' (did you mean "#{_ALIASES[close[0]][1]}"?)' if close else ""
    return f'unknown command "#{_show(typed)}"{hint}'


# --- arguments: each returns (canonical value, error) ------------------------------------------


def _no_argument(req: _Request) -> tuple[str, str]:
    if req.arg:
        return "", f'{req.typed} takes no argument; got "{_show(req.arg)}"'
    return "", ""


def _choice(req: _Request) -> tuple[str, str]:
    table = CHOICES[req.spec.arg]
    spellings = {_fold(v): v for v in table} | {
        _fold(alias): value for value, aliases in table.items() for alias in aliases
    }
    key = re.sub(r"[\s_]+", "-", _fold(req.arg))
    if key in spellings:
        return spellings[key], ""
    shown = [aliases[0] for aliases in table.values()] if req.german else list(table)
    close = difflib.get_close_matches(key, list(spellings), n=1, cutoff=0.6) if key else []
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    got = f'"{_show(req.arg)}"' if req.arg else "nothing"
    return "", f"{req.typed} needs one of {', '.join(shown)}; got {got}{hint}"


def _agent(req: _Request) -> tuple[str, str]:
    known = ", ".join(req.agents) or "none configured"
    if not req.arg:
        return "", f"{req.typed} needs an agent name (agents: {known})"
    for agent in req.agents:
        if _fold(agent) == _fold(req.arg):
            return agent, ""
    return "", f'{req.typed}: no agent called "{_show(req.arg)}" (agents: {known})'


def _ticket(req: _Request) -> tuple[str, str]:
    reference = " ".join(req.arg.split())  # single spaces: the regex never rescans a long run
    match = _TICKET_REF.fullmatch(reference) if len(reference) <= MAX_REFERENCE else None
    if match is None:
        got = f'"{_show(req.arg)}"' if req.arg else "nothing"
        return "", f"{req.typed} needs a ticket number such as 10019; got {got}"
    if not is_valid(match[1]):
        return "", f'{req.typed}: "{match[1]}" is not a valid ticket number (check digit)'
    return match[1], ""


def _text(req: _Request) -> tuple[str, str]:
    wish = " ".join(req.arg.split())
    if not wish:
        return "", f"{req.typed} needs a name for the wish"
    if len(wish) > MAX_WISH:
        return "", f"{req.typed}: the name has {len(wish)} characters, at most {MAX_WISH}"
    return wish, ""


_ARGUMENTS: dict[ArgKind, Callable[[_Request], tuple[str, str]]] = {
    "none": _no_argument,
    "status": _choice,
    "priority": _choice,
    "agent": _agent,
    "ticket": _ticket,
    "text": _text,
}


def _show(text: str, limit: int = 60) -> str:
    """User text fit for one line of an error mail: printable, short."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


# --- help ------------------------------------------------------------------------------------


def help_text(language: str) -> str:
    """Every command with its aliases and argument, one per line ("de"; anything else: English)."""
    german = language.strip().lower().startswith("de")
    return "\n".join(_help_line(spec, german) for spec in COMMANDS.values())


def _help_line(spec: CommandSpec, german: bool) -> str:
    names = (spec.german + spec.english) if german else (spec.english + spec.german)
    argument = _placeholder(spec.arg, german)
    description = spec.help_de if german else spec.help_en
    return (
        f"{' / '.join('#' + n for n in names)}{' ' + argument if argument else ''} - {description}"
    )


def _placeholder(kind: ArgKind, german: bool) -> str:
    if kind in CHOICES:
        table = CHOICES[kind]
        values = [aliases[0] for aliases in table.values()] if german else list(table)
        return f"<{'|'.join(values)}>"
    if kind in PLACEHOLDERS:
        return PLACEHOLDERS[kind][int(german)]
    return ""
