"""Commands at the top of an agent's reply (mailtick.commands)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailtick.commands import (
    COMMANDS,
    PRIORITIES,
    STATUSES,
    Command,
    CommandParse,
    help_text,
    parse_commands,
)

AGENTS = ("dana", "eli")
SAMPLE_ARGS = {  # a valid argument per kind and what it becomes
    "none": ("", ""),
    "status": ("in Bearbeitung", "in-progress"),
    "priority": ("HOCH", "high"),
    "agent": ("Eli", "eli"),
    "ticket": ("[MT#10019]", "10019"),
    "text": ("  CSV   export ", "CSV export"),
}
ALIASES = [(name, alias) for name, spec in COMMANDS.items() for alias in spec.english + spec.german]


def parse(text: str) -> CommandParse:
    return parse_commands(text, AGENTS)


def test_the_table_has_every_command_and_no_alias_twice() -> None:
    assert set(COMMANDS) == {
        "close",
        "status",
        "assign",
        "priority",
        "note",
        "merge",
        "wish",
        "split",
    }
    folded = [alias.casefold() for _, alias in ALIASES]
    assert len(set(folded)) == len(folded) - 1  # schließen and schliessen fold alike
    for name, spec in COMMANDS.items():
        assert spec.english[0] == name


@pytest.mark.parametrize(("name", "alias"), ALIASES)
def test_every_command_and_alias(name: str, alias: str) -> None:
    typed, value = SAMPLE_ARGS[COMMANDS[name].arg]
    for spelling in (alias, alias.upper(), alias.title()):
        line = f"#{spelling} {typed}".rstrip()
        assert parse(f"{line}\n\nHallo Frau Muster") == CommandParse(
            (Command(name, value),), "Hallo Frau Muster", ()
        ), line


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("#close", Command("close", "")),
        ("#Schließen", Command("close", "")),
        ("#SCHLIESSEN", Command("close", "")),
        ("#erledigt", Command("close", "")),
        ("#status: closed", Command("status", "closed")),
        ("#status in progress", Command("status", "in-progress")),
        ("#status IN_PROGRESS", Command("status", "in-progress")),
        ("#priorität dringend", Command("priority", "urgent")),
        ("#Prioritaet niedrig", Command("priority", "low")),
        ("#zuweisen dana", Command("assign", "dana")),
        ("#notiz", Command("note", "")),
        ("#intern", Command("note", "")),
        ("#zusammenführen 10019", Command("merge", "10019")),
        ("#zusammenfuehren MT#10019", Command("merge", "10019")),
        ("#wunsch Dunkles Design", Command("wish", "Dunkles Design")),
        ("#teilen", Command("split", "")),
        ("#trennen", Command("split", "")),
        ("  #close  ", Command("close", "")),
        ("\ufeff#close", Command("close", "")),
        ("#Priorita\u0308t hoch", Command("priority", "high")),  # decomposed umlaut
    ],
)
def test_spellings(line: str, command: Command) -> None:
    assert parse(line).commands == (command,)
    assert parse(line).errors == ()


@pytest.mark.parametrize(
    ("value", "canonical"),
    [(v, v) for v in STATUSES] + [(a, v) for v, aliases in STATUSES.items() for a in aliases],
)
def test_every_status_value(value: str, canonical: str) -> None:
    assert parse(f"#status {value}").commands == (Command("status", canonical),)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [(v, v) for v in PRIORITIES] + [(a, v) for v, aliases in PRIORITIES.items() for a in aliases],
)
def test_every_priority_value(value: str, canonical: str) -> None:
    assert parse(f"#priority {value}").commands == (Command("priority", canonical),)


@pytest.mark.parametrize(
    "reference", ["10019", "#10019", "MT#10019", "[MT#10019]", "[ Support#10019 ]", "MT-10019"]
)
def test_merge_accepts_any_prefix(reference: str) -> None:
    assert parse(f"#merge {reference}").commands == (Command("merge", "10019"),)


def test_several_commands_then_the_body() -> None:
    text = (
        "\n\n#assign eli\n#priority high\n\n#wish dark mode\n#wish csv export\n\nHi,\nsee below.\n"
    )
    assert parse(text) == CommandParse(
        (
            Command("assign", "eli"),
            Command("priority", "high"),
            Command("wish", "dark mode"),
            Command("wish", "csv export"),
        ),
        "Hi,\nsee below.\n",
        (),
    )


def test_the_body_keeps_everything_after_the_commands_verbatim() -> None:
    body = "  Hallo,\r\n\r\n#close steht hier nur als Text\r\n> #note\r\nGruß\r\n"
    assert parse("#note\r\n\r\n" + body) == CommandParse((Command("note", ""),), body, ())
    assert parse(body) == CommandParse((), body, ())


def test_commands_only_count_at_the_top() -> None:
    text = "Hallo,\n#close\n#priority high\n"
    assert parse(text) == CommandParse((), text, ())


@pytest.mark.parametrize(
    "first", ["#1 ist das Problem", "#!", "# Überschrift", "##close", "#", "#_x", "#-close"]
)
def test_a_hash_without_a_letter_is_text_and_ends_the_commands(first: str) -> None:
    text = f"#close\n{first}\n#priority high\n"
    assert parse(text) == CommandParse((Command("close", ""),), f"{first}\n#priority high\n", ())
    assert parse(f"{first}\n#close") == CommandParse((), f"{first}\n#close", ())


def test_no_text_at_all() -> None:
    assert parse("") == CommandParse((), "", ())
    assert parse("\n \n\t\n") == CommandParse((), "", ())
    assert parse("#close") == CommandParse((Command("close", ""),), "", ())


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("#staus closed", 'unknown command "#staus" (did you mean "#status"?)'),
        ("#clsoe", 'unknown command "#clsoe" (did you mean "#close"?)'),
        ("#schliesen", 'unknown command "#schliesen" (did you mean "#schliessen"?)'),
        ("#prio hoch", 'unknown command "#prio" (did you mean "#priority"?)'),
        ("#zuweissen eli", 'unknown command "#zuweissen" (did you mean "#zuweisen"?)'),
        ("#xyzzy", 'unknown command "#xyzzy"'),
        ("#wichtig: bitte lesen", 'unknown command "#wichtig"'),
        ("#priority soon", '#priority needs one of urgent, high, normal, low; got "soon"'),
        (
            "#priority hihg",
            '#priority needs one of urgent, high, normal, low; got "hihg" (did you mean "high"?)',
        ),
        (
            "#priorität bald",
            '#priorität needs one of dringend, hoch, normal, niedrig; got "bald"',
        ),
        (
            "#status",
            "#status needs one of open, in-progress, waiting, answered, closed; got nothing",
        ),
        (
            "#status erledigt",
            '#status needs one of open, in-progress, waiting, answered, closed; got "erledigt"',
        ),
        ("#close now", '#close takes no argument; got "now"'),
        ("#close!", '#close takes no argument; got "!"'),
        ("#note bitte", '#note takes no argument; got "bitte"'),
        ("#assign bob", '#assign: no agent called "bob" (agents: dana, eli)'),
        ("#assign", "#assign needs an agent name (agents: dana, eli)"),
        ("#assign dana eli", '#assign: no agent called "dana eli" (agents: dana, eli)'),
        ("#merge 10018", '#merge: "10018" is not a valid ticket number (check digit)'),
        ("#merge [MT#10091]", '#merge: "10091" is not a valid ticket number (check digit)'),
        ("#merge", "#merge needs a ticket number such as 10019; got nothing"),
        (
            "#merge ticket 12 and 13",
            '#merge needs a ticket number such as 10019; got "ticket 12 and 13"',
        ),
        ("#merge ١٠٠١٩", '#merge needs a ticket number such as 10019; got "١٠٠١٩"'),
        ("#wish", "#wish needs a name for the wish"),
        ("#wunsch " + "x" * 201, "#wunsch: the name has 201 characters, at most 200"),
    ],
)
def test_errors(line: str, error: str) -> None:
    result = parse(f"{line}\nHallo")
    assert result.errors == (error,)
    assert result.commands == ()
    assert result.body == "Hallo"


def test_a_wish_of_200_characters_is_fine() -> None:
    assert parse("#wish " + "x" * 200).commands == (Command("wish", "x" * 200),)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("#close\n#status open", '"#status" conflicts with "#close": one status command per mail'),
        (
            "#priority high\n#priority low",
            '"#priority" conflicts with "#priority": one priority command per mail',
        ),
        (
            "#assign dana\n#zuweisen eli",
            '"#zuweisen" conflicts with "#assign": one assign command per mail',
        ),
        ("#note\n#intern", '"#intern" conflicts with "#note": one note command per mail'),
    ],
)
def test_conflicting_commands(text: str, error: str) -> None:
    assert parse(text).errors == (error,)


def test_good_and_bad_commands_together_report_every_error() -> None:
    result = parse("#assign eli\n#priorty high\n#merge 10018\n\nText")
    assert result.commands == (Command("assign", "eli"),)
    assert result.errors == (
        'unknown command "#priorty" (did you mean "#priority"?)',
        '#merge: "10018" is not a valid ticket number (check digit)',
    )
    assert result.body == "Text"


def test_user_text_in_errors_is_one_short_printable_line() -> None:
    (error,) = parse("#close " + "\x07" + "y" * 300).errors
    assert "\x07" not in error and len(error) < 120 and error.endswith('..."')


def test_no_agents_configured() -> None:
    assert parse_commands("#assign dana", ()).errors == (
        '#assign: no agent called "dana" (agents: none configured)',
    )


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["de", "en"])
def test_help_lists_every_command_with_aliases_and_arguments(language: str) -> None:
    lines = help_text(language).splitlines()
    assert len(lines) == len(COMMANDS)
    for line, spec in zip(lines, COMMANDS.values(), strict=True):
        for alias in spec.english + spec.german:
            assert f"#{alias}" in line, (alias, line)
        description = spec.help_de if language == "de" else spec.help_en
        assert line.endswith(f" - {description}")
    text = help_text(language)
    values = ["offen", "dringend", "<Nummer>"] if language == "de" else ["open", "urgent"]
    assert all(v in text for v in values)


def test_help_in_german_puts_german_names_first() -> None:
    assert help_text("de").splitlines()[0].startswith("#schließen")
    assert help_text("en").splitlines()[0].startswith("#close")
    assert help_text("fr") == help_text("en")


# --- never raises -------------------------------------------------------------------------------

FRAGMENTS = [
    "#close",
    "#status offen",
    "#priority",
    "#prioritÄt HOCH",
    "#merge [MT#10019]",
    "#merge 1",
    "#assign dana",
    "#wish ",
    "#1",
    "#",
    "",
    " ",
    "\r",
    "Hallo",
    "#ß",
    "#\u0130",
    "#x\x00",
]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.lists(
            st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8).map(lambda t: "#" + t))
        ).map("\n".join),
    ),
    # agent names as config/checks.py admits them: short, lower-case, no spaces or line breaks
    st.lists(st.from_regex(r"[a-z][a-z0-9._-]{0,7}", fullmatch=True), max_size=3),
)
def test_parse_commands_never_raises(text: str, agents: list[str]) -> None:
    result = parse_commands(text, agents)
    assert text.endswith(result.body)
    assert all("\n" not in e and "\r" not in e for e in result.errors)
    assert all(c.name in COMMANDS for c in result.commands)


@pytest.mark.parametrize(
    "text",
    [
        "#merge [" + " " * 50_000 + "x",
        "#merge " + "1" * 50_000,
        "#status " + "a b" * 50_000,
        "#assign " + "a " * 50_000,
        "#" + "a" * 100_000,
        "\n" * 100_000 + "#close",
        "#close\n" * 20_000,
    ],
)
def test_long_input_takes_linear_time(text: str) -> None:
    started = time.monotonic()
    parse(text)
    assert time.monotonic() - started < 2
