"""Reply tokens in agents' plus-addresses and the trusted DMARC verdict (mailtick.security)."""

from __future__ import annotations

import base64
import hmac
import re
import time
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailtick import security
from mailtick.security import (
    ReplyToken,
    TokenCheck,
    TokenSigner,
    dmarc_failed,
    generate_secret,
    mac,
)

SECRET = bytes(range(32))
SUPPORT = "support@example.com"
AGENTS = ("dana", "eli", "fred")
ISSUED = date(2026, 1, 3)
ISSUED_DAY = (ISSUED - date(1970, 1, 1)).days
SIGNER = TokenSigner(SECRET, valid_days=90)
KINDS: tuple[security.TokenKind, ...] = ("r", "n")


def reply_address(
    kind: security.TokenKind = "r", ticket: str = "10019", agent: str = "dana"
) -> str:
    return SIGNER.address(SUPPORT, kind, ticket, agent, today=ISSUED)


def check(*recipients: str, today: date = ISSUED, agents: tuple[str, ...] = AGENTS) -> TokenCheck:
    return SIGNER.verify(recipients, SUPPORT, agents, today=today)


# --- issuing and the round trip -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["r", "n"])
@pytest.mark.parametrize("agent", AGENTS)
def test_round_trip_names_kind_ticket_and_agent(kind: security.TokenKind, agent: str) -> None:
    address = reply_address(kind, "10019", agent)
    assert address.startswith(f"support+{kind}-10019-{ISSUED_DAY}-")
    assert address.endswith("@example.com") and agent not in address
    assert check(address) == TokenCheck(ReplyToken(kind, "10019", agent, ISSUED_DAY), "", True)


def test_the_local_part_fits_and_survives_lower_and_upper_casing() -> None:
    address = SIGNER.address(SUPPORT, "n", "123456789012", "dana", today=date(9999, 12, 30))
    local, _, _ = address.rpartition("@")
    assert len(local) <= 64
    assert re.fullmatch(r"support\+n-123456789012-\d+-[a-z2-7]{26}", local)
    expected = ReplyToken("n", "123456789012", "dana", (date(9999, 12, 30) - date(1970, 1, 1)).days)
    for variant in (address.lower(), address.upper(), address.swapcase()):
        assert check(variant, today=date(9999, 12, 30)).token == expected


def test_support_address_is_matched_case_insensitively() -> None:
    address = reply_address()
    result = SIGNER.verify([address.upper()], "Support@Example.COM", AGENTS, today=ISSUED)
    assert result.token == ReplyToken("r", "10019", "dana", ISSUED_DAY)


def test_a_local_part_over_64_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="64"):
        SIGNER.address("the-support-team-of-example@example.com", "r", "10019", "dana")


@pytest.mark.parametrize(
    ("support", "kind", "ticket"),
    [
        ("support", "r", "10019"),
        ("support+x@example.com", "r", "10019"),
        (SUPPORT, "x", "10019"),
        (SUPPORT, "r", "MT10019"),
        (SUPPORT, "r", ""),
    ],
)
def test_address_refuses_bad_input(support: str, kind: str, ticket: str) -> None:
    with pytest.raises(ValueError):
        SIGNER.address(support, kind, ticket, "dana")  # type: ignore[arg-type]  # kind "x" on purpose


def test_the_secret_must_have_32_bytes() -> None:
    with pytest.raises(ValueError, match="32"):
        TokenSigner(b"x" * 31)
    with pytest.raises(ValueError):
        TokenSigner(SECRET, valid_days=0)
    assert repr(SIGNER) == "TokenSigner(secret=<32 bytes>, valid_days=90)"


def test_generate_secret() -> None:
    first, second = generate_secret(), generate_secret()
    assert len(first) == 32 and first != second
    TokenSigner(first)


def test_mac_is_128_bits_of_lower_case_base32_over_an_unambiguous_encoding() -> None:
    value = mac(SECRET, "r", "10019", "dana", ISSUED_DAY)
    assert re.fullmatch(r"[a-z2-7]{26}", value)
    variants = {
        value,
        mac(SECRET, "n", "10019", "dana", ISSUED_DAY),
        mac(SECRET, "r", "10027", "dana", ISSUED_DAY),
        mac(SECRET, "r", "10019", "eli", ISSUED_DAY),
        mac(SECRET, "r", "10019", "dana", ISSUED_DAY + 1),
        mac(bytes(32), "r", "10019", "dana", ISSUED_DAY),
        # the same characters with the field borders moved
        mac(SECRET, "r", "1001", "9dana", ISSUED_DAY),
        mac(SECRET, "r", "10019dana", "", ISSUED_DAY),
    }
    assert len(variants) == 8
    expected = hmac.new(
        SECRET,
        b"mailtick-reply-token-v1\x00"
        + b"".join(len(f).to_bytes(4, "big") + f for f in (b"r", b"10019", b"dana", b"20456")),
        "sha256",
    ).digest()[:16]
    assert value == base64.b32encode(expected).decode().rstrip("=").lower()


# --- refusals ----------------------------------------------------------------------------------


def test_a_tampered_mac_is_refused() -> None:
    address = reply_address()
    local, _, domain = address.rpartition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    result = check(f"{flipped}@{domain}")
    assert result == TokenCheck(None, "tampered token", True)
    assert result.reason == "tampered token"


def test_the_token_names_the_signing_agent_among_several() -> None:
    address = reply_address(agent="eli")
    assert check(address).token == ReplyToken("r", "10019", "eli", ISSUED_DAY)
    # the caller passes the agents whose From it trusts; a token of someone else fails
    assert check(address, agents=("dana", "fred")) == TokenCheck(None, "tampered token", True)
    assert check(address, agents=()) == TokenCheck(None, "tampered token", True)


def test_every_agent_is_compared_no_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert check(reply_address(agent="dana")).token is not None  # dana is first of three
    assert len(calls) == len(AGENTS)


def test_another_tickets_number_in_the_address_is_refused() -> None:
    address = reply_address(ticket="10019")
    other = address.replace("-10019-", "-10027-")
    assert check(other) == TokenCheck(None, "tampered token", True)


def test_the_kind_cannot_be_switched_from_reply_to_note() -> None:
    address = reply_address(kind="n")
    assert check(address.replace("support+n-", "support+r-")).problem == "tampered token"


def test_expiry_and_the_future() -> None:
    address = reply_address()
    assert check(address, today=ISSUED + timedelta(days=90)).token is not None
    assert check(address, today=ISSUED + timedelta(days=91)) == TokenCheck(
        None, "expired token (issued 2026-01-03)", True
    )
    assert check(address, today=ISSUED - timedelta(days=1)).token is not None  # clock skew
    # issued by a clock 36 h fast, checked after it was corrected
    assert check(address, today=ISSUED - timedelta(days=2)).token is not None
    assert check(address, today=ISSUED - timedelta(days=3)) == TokenCheck(
        None, "token from the future (issued 2026-01-03)", True
    )


def test_a_changed_day_is_tampering_not_a_fresh_token() -> None:
    address = reply_address()
    moved = address.replace(f"-{ISSUED_DAY}-", f"-{ISSUED_DAY + 100}-")
    assert check(moved, today=ISSUED + timedelta(days=100)).problem == "tampered token"


@pytest.mark.parametrize(
    "tag",
    [
        "r-10019",
        "r-10019-20456",
        "r-10019-20456-tooshort",
        "n--20456-sodqes3jdalra6jwhyffn62pcm",
        "r-10019-020456-sodqes3jdalra6jwhyffn62pcm",
        "r-10019-20456-sodqes3jdalra6jwhyffn62pcm1",
        "r-10019-20456-sodqes3jdalra6jwhyffn62pc!",
        "r-ten-20456-sodqes3jdalra6jwhyffn62pcm",
    ],
)
def test_a_malformed_token_is_reported(tag: str) -> None:
    assert check(f"support+{tag}@example.com") == TokenCheck(None, "malformed token", True)


def test_no_token_at_all() -> None:
    result = check("support@example.com", "dana@example.com")
    assert result == TokenCheck(None, "", False)
    assert result.reason == "no reply token"
    assert check() == TokenCheck(None, "", False)


def test_plus_addresses_of_other_mailboxes_or_tags_are_ignored() -> None:
    address = reply_address()
    local, _, _ = address.rpartition("@")
    tag = local.partition("+")[2]
    ignored = [
        f"{local}@example.org",
        f"{local}@mail.example.com",
        f"sales+{tag}@example.com",
        f"xsupport+{tag}@example.com",
        "support+billing@example.com",
        f"support-{tag}@example.com",
        tag,
    ]
    assert check(*ignored) == TokenCheck(None, "", False)
    assert check(*ignored, address).token is not None


def test_the_same_token_in_several_headers_is_fine() -> None:
    address = reply_address()
    assert check(address, address.upper(), f"<{address}>").token is not None


def test_two_valid_tokens_of_one_ticket_agent_and_kind_take_the_newer() -> None:
    old = reply_address()
    new = SIGNER.address(SUPPORT, "r", "10019", "dana", today=ISSUED + timedelta(days=5))
    result = check(old, new, today=ISSUED + timedelta(days=6))
    assert result.token == ReplyToken("r", "10019", "dana", ISSUED_DAY + 5)


@pytest.mark.parametrize(
    "other",
    [
        reply_address(kind="n"),  # reply-all to both paths: public or internal?
        reply_address(ticket="10027"),
        reply_address(agent="eli"),
        "support+r-10019-20456-aaaaaaaaaaaaaaaaaaaaaaaaaa@example.com",
        "support+r-garbage@example.com",
    ],
)
def test_two_different_tokens_are_refused(other: str) -> None:
    assert check(reply_address(), other) == TokenCheck(None, "several different tokens", True)


# --- random mutations never name another ticket, agent or kind -------------------------------

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567890189-+.@ABCDEFGHIJKLMNOPQRSTUVWXYZ_"


EDITS = ("substitute", "insert", "delete")


@st.composite
def mutated(draw: st.DrawFn) -> tuple[ReplyToken, str, str, bool]:
    """(token, its tag, the tag after one random edit, whether the edit hit the MAC)."""
    token = ReplyToken(
        draw(st.sampled_from(KINDS)),
        draw(st.sampled_from(["10019", "10027", "10035", "123456789", "10"])),
        draw(st.sampled_from(AGENTS)),
        ISSUED_DAY,
    )
    address = SIGNER.address(SUPPORT, token.kind, token.ticket, token.agent, today=ISSUED)
    tag = address.rpartition("@")[0].partition("+")[2]
    edit = draw(st.sampled_from(EDITS))
    position = draw(st.integers(0, len(tag) - (edit != "insert")))
    char = draw(st.sampled_from(ALPHABET))
    new_tag = (
        tag[:position] + ("" if edit == "delete" else char) + tag[position + (edit != "insert") :]
    )
    if draw(st.booleans()):  # mail servers may change the case of the whole local part
        new_tag = new_tag.upper()
    return token, tag, new_tag, position >= len(tag) - 26


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_tags_never_verify_as_another_token(
    case: tuple[ReplyToken, str, str, bool],
) -> None:
    original, tag, new_tag, in_mac = case
    result = check(f"support+{new_tag}@example.com")
    if result.token is not None:
        found = (result.token.kind, result.token.ticket, result.token.agent)
        assert found == (original.kind, original.ticket, original.agent), new_tag
    changed = new_tag.lower() != tag
    if in_mac and changed:
        assert result.token is None and result.present, new_tag
    # stronger still: any real change of kind, ticket, day or MAC invalidates the token
    assert result.token == (None if changed else original), new_tag


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=11, max_size=11), st.sampled_from(AGENTS))
def test_case_changes_of_the_domain_keep_the_token(upper: list[bool], agent: str) -> None:
    local, _, domain = reply_address(agent=agent).rpartition("@")
    new_domain = "".join(c.upper() if up else c for c, up in zip(domain, upper, strict=True))
    assert check(f"{local}@{new_domain}").token == ReplyToken("r", "10019", agent, ISSUED_DAY)


# --- DMARC in Authentication-Results ---------------------------------------------------------

MX = "mx.example.net"


@pytest.mark.parametrize(
    ("header", "failed"),
    [
        (f"{MX}; dmarc=fail (p=reject dis=reject) header.from=example.com", True),
        (
            "MX.Example.NET 1; spf=pass smtp.mailfrom=x.org; dmarc=fail header.from=example.com",
            True,
        ),
        (f"{MX}; DMARC=FAIL header.from=EXAMPLE.COM.", True),
        (f"{MX}; dmarc=fail", True),  # no header.from: it is the From domain
        (f"{MX}; dmarc/1=fail header.from=example.com", True),
        (f'{MX}; dmarc=fail header.from="example.com"', True),
        (f"{MX}; dmarc=fail header.from=dana@example.com", True),
        (f"{MX}; dmarc=permerror header.from=example.com", True),
        (f"{MX}; dmarc=pass header.from=example.com", False),
        (f"{MX}; dmarc=temperror header.from=example.com", False),
        (f"{MX}; dmarc=none header.from=example.com", False),
        (f"{MX}; dmarc=bestguesspass header.from=example.com", False),
        # our MTA judged another From domain than the one we read: a parser differential
        (f"{MX}; dmarc=fail header.from=example.org", True),
        (f"{MX}; dmarc=fail header.from=sub.example.com", True),
        (f"{MX}; dmarc=pass header.from=evil.example", True),
        (f"{MX}; dmarc=none header.from=evil.example", True),
        (f"{MX}; spf=fail smtp.mailfrom=example.com; dkim=fail header.d=example.com", False),
        (f"{MX}; none", False),
        ("evil.example; dmarc=fail header.from=example.com", False),  # not our server
        (f"{MX}.evil.example; dmarc=fail header.from=example.com", False),
        (f"x{MX}; dmarc=fail header.from=example.com", False),
        (f"; {MX}; dmarc=fail header.from=example.com", False),
        (f"{MX}; dmarc=pass header.from=example.com (dmarc=fail header.from=example.com)", False),
        (f'{MX}; dmarc=pass reason="dmarc=fail; header.from=example.com"', False),
        (f'{MX}; spf=pass reason="x dmarc=fail"; dkim=pass header.d=example.com', False),
    ],
)
def test_dmarc_verdicts(header: str, failed: bool) -> None:
    assert dmarc_failed([header], MX, "example.com") is failed


def test_comments_folding_and_odd_spacing() -> None:
    header = (
        f"{MX} (our (very own) MX; trusted)\r\n\t;  spf = pass (sender IP is 192.0.2.1)"
        " smtp.mailfrom=example.com ;\r\n dmarc (the \\) one) / 1 = fail (p=quarantine; sp=none)"
        ' header.from (the author) = "Example.COM"'
    )
    assert dmarc_failed([header], MX.upper(), "EXAMPLE.com")
    assert dmarc_failed([header], MX, "example.org")  # judged another From: refused too
    passed = header.replace("= fail (p=", "= pass (p=")
    assert not dmarc_failed([passed], MX, "example.com")


def test_only_headers_of_the_configured_server_count() -> None:
    forged = "evil.example; dmarc=pass header.from=example.com"
    ours_fail = f"{MX}; dmarc=fail header.from=example.com"
    ours_pass = f"{MX}; dmarc=pass header.from=example.com"
    assert dmarc_failed([forged, ours_fail], MX, "example.com")
    assert not dmarc_failed([ours_pass, "evil.example; dmarc=fail"], MX, "example.com")
    assert dmarc_failed(ours_fail, MX, "example.com")  # a single value is fine too
    assert not dmarc_failed([ours_fail], "", "example.com")  # no authserv-id: trust none
    assert not dmarc_failed([], MX, "example.com")


@pytest.mark.parametrize(
    "garbage",
    ["", ";", ";;;", "(((", ")))", '"', '"(;', "\\", f"{MX};=", f"{MX}; =fail", f"{MX}; dmarc=",
     f"{MX}; dmarc=fail header.from=", f'{MX}; dmarc="fail', f"{MX} (unclosed; dmarc=fail",
     "\x00\r\n\t", "é; dmarc=fail"],
)  # fmt: skip
def test_garbage_never_raises(garbage: str) -> None:
    assert dmarc_failed([garbage], MX, "example.com") in (True, False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(),
            st.text(alphabet=st.sampled_from(list(f'{MX} ;=()"\\/.dmarcfailheader.from@\r\n\t'))),
        ),
        max_size=4,
    ),
    st.text(max_size=20),
    st.text(max_size=20),
)
def test_dmarc_failed_never_raises(headers: list[str], authserv_id: str, domain: str) -> None:
    assert dmarc_failed(headers, authserv_id, domain) in (True, False)
    assert dmarc_failed(headers, MX, "example.com") in (True, False)


@pytest.mark.parametrize(
    "header",
    [
        f"{MX}; dmarc" + " " * 100_000 + "x",
        f"{MX}; " + "a" * 100_000 + " " * 100_000,
        f"{MX};" + "(" * 100_000,
        f'{MX}; "' + '\\"' * 100_000,
        f"{MX}; " + "a/ " * 100_000,
        f"{MX}; " + " = " * 100_000,
        f"{MX}; " + "dmarc=fail; " * 20_000,
    ],
)
def test_long_headers_take_linear_time(header: str) -> None:
    started = time.monotonic()
    dmarc_failed([header], MX, "example.com")
    assert time.monotonic() - started < 2
