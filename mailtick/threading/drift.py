"""Topic drift: does a customer's reply raise a new topic? Pure text scoring, touches nothing."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TextIO

from mailtick.config import DriftConfig
from mailtick.ingest.quotes import split_reply
from mailtick.threading.lexicon import (
    CONTINUATION_CUES,
    CONTINUATION_RE,
    LOG_STRONG,
    LOG_WEAK,
    MALFUNCTION,
    NEW_RE,
    NEW_REQUEST_CUES,
    REQUEST,
    SAME_TOPIC_AFTER,
    SENTENCE,
    TAG,
    THANKS_RE,
    WEAK_IN_NEW_TEXT,
    YES_NO,
    content_tokens,
    fold,
    grams,
    head_grams,
    stem,
    tail_grams,
    topic_of,
)
from mailtick.threading.subject import normalise

# Score >= threshold -> new topic; how the default was chosen is said at DriftConfig.threshold.
DEFAULT_THRESHOLD = DriftConfig.threshold

# Evidence weaker than this (in log-odds) is not worth a reason line.
_REASON_MIN = 0.4
# History beyond this many characters (newest first, after the first message) is not read.
_HISTORY_CHARS = 20_000


@dataclass(frozen=True)
class DriftVerdict:
    new_topic: bool
    score: float  # 0..1
    reasons: tuple[str, ...]  # strongest evidence first

    def to_json(self) -> dict[str, object]:
        return {
            "new_topic": self.new_topic,
            "score": round(self.score, 2),
            "reasons": list(self.reasons),
        }


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class Vocabulary:
    """What the ticket (subject and history) has talked about."""

    stems: frozenset[str]
    grams: frozenset[str]
    topics: frozenset[str]

    def knows(self, token: str) -> bool:
        """The ticket has this word, an inflection or a synonym of it; or a ticket compound
        starts or ends with it ("Mail" in "Mailzustellung", "Meldung" in "Fehlermeldung"); or
        it is long and shares most of its 4-grams or a 9-letter part with the ticket
        ("Mailzustellung" after "Zustellung der Mails", "Erinnerungsmail" after
        "Passworterinnerung")."""
        root = stem(token)
        if root in self.stems:
            return True
        if len(root) >= 4 and head_grams(root) <= self.grams:
            return True
        if len(token) >= 5 and tail_grams(token) <= self.grams:
            return True
        return len(token) >= 8 and self._shares_part(token)

    def _shares_part(self, token: str) -> bool:
        padded = f"_{token}_"
        present = [padded[i : i + 4] in self.grams for i in range(len(padded) - 3)]
        if sum(present) >= 0.7 * len(present):
            return True
        run = longest = 0
        for hit in present:
            run = run + 1 if hit else 0
            longest = max(longest, run)
        return longest >= 6


def vocabulary(texts: Iterable[str]) -> Vocabulary:
    tokens = {t for text in texts for t in content_tokens(text)}
    return Vocabulary(
        stems=frozenset(stem(t) for t in tokens),
        grams=frozenset().union(*(grams(t) for t in tokens)),
        topics=frozenset(t for t in map(topic_of, tokens) if t is not None),
    )


@dataclass(frozen=True)
class Part:
    """One sentence of the reply, judged against the ticket."""

    text: str
    tokens: tuple[str, ...]
    known: float  # share of its words the ticket knows, 0..1
    question: bool


@dataclass(frozen=True)
class Analysis:
    """Everything the evidence functions look at, computed once per reply."""

    parts: tuple[Part, ...]  # the prose of the reply, sentence by sentence
    similarity: float  # share of the reply's words the ticket knows
    words: int  # content words in the prose
    log_lines: int  # lines of pasted log or error output
    prose: str  # folded prose, for cue phrases
    subject: str  # the new subject as a title, "" when unchanged
    subject_known: float
    answers: str  # the agent's question or request the reply takes up, or ""
    foreign_topics: Mapping[str, tuple[str, ...]]  # topics the ticket never touched -> words
    own_topics: Mapping[str, tuple[str, ...]]  # topics shared with the ticket -> words
    closed_days: float | None

    def novel_parts(self, limit: float, min_words: int) -> list[Part]:
        return [p for p in self.parts if len(p.tokens) >= min_words and p.known <= limit]

    def part_at(self, position: int) -> Part | None:
        """The sentence holding a position of `prose`."""
        offset = 0
        for part in self.parts:
            folded = fold(part.text)
            found = self.prose.find(folded, offset)
            if found < 0:
                continue
            if position < found + len(folded):
                return part if position >= found else None
            offset = found + len(folded)
        return None

    def novel_at(self, position: int, limit: float = 0.3, min_words: int = 3) -> bool:
        """Is the sentence at `position` unlike the ticket? A cue standing alone
        ("Außerdem:") is judged by the sentence after it."""
        part = self.part_at(position)
        if part is not None and len(part.tokens) < min(2, min_words):
            following = self.parts.index(part) + 1
            part = self.parts[following] if following < len(self.parts) else None
        return part is not None and len(part.tokens) >= min_words and part.known <= limit


def _ticket_texts(subject: str, history: Sequence[str]) -> list[str]:
    texts = [subject]
    if history:
        texts.append(history[0])
    budget = _HISTORY_CHARS
    for text in reversed(history[1:]):
        if budget <= 0:
            break
        texts.append(text[-budget:])
        budget -= len(text)
    return texts


def _title(subject: str) -> str:
    """A subject without reply prefixes and ticket tags: "AW: [MT#10017] WLAN" -> "WLAN"."""
    return normalise(TAG.sub(" ", subject), "MT")


def _split_log(text: str) -> tuple[str, int]:
    """The prose of a reply and how many of its lines look like pasted log output."""
    prose: list[str] = []
    log = 0
    for line in text.split("\n"):
        marks = len(LOG_STRONG.findall(line)) + 0.5 * len(LOG_WEAK.findall(line))
        if marks >= (1 if len(line) >= 40 else 2):
            log += 1
        else:
            prose.append(line)
    return "\n".join(prose), log


def _part(sentence: str, vocab: Vocabulary) -> Part:
    tokens = tuple(content_tokens(sentence))
    known = sum(vocab.knows(t) for t in tokens) / len(tokens) if tokens else 1.0
    return Part(sentence.strip(), tokens, known, sentence.rstrip().endswith("?"))


def _topics(tokens: Iterable[str], vocab: Vocabulary) -> tuple[dict[str, tuple[str, ...]], ...]:
    """The reply's topic words: on a topic the ticket never touched (foreign; only words the
    ticket does not know count) or on one of the ticket's own topics."""
    foreign: dict[str, list[str]] = {}
    own: dict[str, list[str]] = {}
    for token in tokens:
        topic = topic_of(token)
        if topic is not None:
            side = own if topic in vocab.topics or vocab.knows(token) else foreign
            side.setdefault(topic, []).append(token)
    return (
        {k: tuple(dict.fromkeys(v)) for k, v in foreign.items()},
        {k: tuple(dict.fromkeys(v)) for k, v in own.items()},
    )


def _answers(parts: Sequence[Part], last_message: str) -> str:
    """The question or request of the last history message (normally the agent's) that the
    reply's opening sentence takes up, by a yes/no or by repeating one of its words."""
    opening = next((p for p in parts if p.tokens or YES_NO.match(fold(p.text))), None)
    if opening is None:
        return ""
    said = {stem(t) for t in opening.tokens}
    for sentence in SENTENCE.split(last_message):
        request = REQUEST.search(fold(sentence))
        if request is None:
            continue
        shared = len(said & {stem(t) for t in content_tokens(sentence)})
        enough = 1 if request.group() == "?" or len(said) <= 4 else 2
        if YES_NO.match(fold(opening.text)) or shared >= enough:
            return sentence.strip()
    return ""


def analyse(
    ticket_subject: str,
    ticket_history: Sequence[str],
    new_subject: str,
    new_visible_text: str,
    closed_for: timedelta | None = None,
) -> Analysis:
    vocab = vocabulary(_ticket_texts(ticket_subject, ticket_history))
    prose, log_lines = _split_log(new_visible_text)
    parts = tuple(p for s in SENTENCE.split(prose) if (p := _part(s, vocab)).text)
    title = _title(new_subject)
    unchanged = fold(title) in ("", "(no subject)", fold(_title(ticket_subject)))
    changed = "" if unchanged else title
    subject = _part(changed, vocab)
    words = sum(len(p.tokens) for p in parts)
    foreign, own = _topics([t for p in (*parts, subject) for t in p.tokens], vocab)
    return Analysis(
        parts=parts,
        similarity=sum(p.known * len(p.tokens) for p in parts) / words if words else 1.0,
        words=words,
        log_lines=log_lines,
        prose=fold(prose),
        subject=changed,
        subject_known=subject.known,
        answers=_answers(parts, ticket_history[-1] if ticket_history else ""),
        foreign_topics=foreign,
        own_topics=own,
        closed_days=None if closed_for is None else closed_for.total_seconds() / 86400,
    )


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Finding:
    weight: float  # log-odds: > 0 speaks for a new topic, < 0 for the same topic
    reason: str


def _clip(text: str, size: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1].rstrip() + "…"


def lexical_similarity(a: Analysis) -> Finding | None:
    """Share of the reply's words (or inflections, compound parts) found in the ticket."""
    if a.words == 0:
        return None
    weight = 5.0 * (0.35 - a.similarity) * min(1.0, a.words / 6)
    if a.similarity < 0.35:
        return Finding(weight, f"little in common with the ticket (similarity {a.similarity:.2f})")
    return Finding(weight, f"shares its words with the ticket (similarity {a.similarity:.2f})")


def novel_part(a: Analysis) -> Finding | None:
    """A substantial sentence unlike the ticket, next to text that does continue it."""
    if a.similarity < 0.35:
        return None  # the whole reply is unlike the ticket: lexical_similarity says so
    novel = a.novel_parts(limit=0.2, min_words=4)
    if not novel:
        return None
    share = sum(len(p.tokens) for p in novel) / a.words
    return Finding(0.3 + 2.0 * share, f'a part unlike the ticket: "{_clip(novel[0].text)}"')


def topic_shift(a: Analysis) -> Finding | None:
    """Support topics (billing, Wi-Fi, ...) the reply talks about and the ticket never did."""
    foreign = sum(len(v) for v in a.foreign_topics.values())
    own = sum(len(v) for v in a.own_topics.values())
    if foreign == 0:
        if own == 0:
            return None
        return Finding(-0.6, f"stays on the ticket's topic ({', '.join(a.own_topics)})")
    topic, words = max(a.foreign_topics.items(), key=lambda item: len(item[1]))
    weight = min(2.0, 0.8 * foreign) * foreign / (foreign + own)
    return Finding(weight, f'talks about {topic} ("{", ".join(words[:3])}"), the ticket does not')


def subject_change(a: Analysis) -> Finding | None:
    if not a.subject:
        return None
    if a.subject_known < 0.34:
        return Finding(1.5, f'new subject "{a.subject}" unlike the ticket')
    return Finding(-0.5, f'changed subject "{a.subject}" stays on the ticket\'s topic')


def _cue_credit(a: Analysis, position: int, weight: float) -> float:
    """Full weight before text unlike the ticket. Otherwise "außerdem" or "by the way" most
    likely adds a detail (0.3), while an explicit "eine andere Sache" or "unrelated" still
    declares another matter (0.7)."""
    if a.novel_at(position):
        return 1.0
    return 0.7 if weight >= 1.4 else 0.3


def new_request_cue(a: Analysis) -> Finding | None:
    """ "außerdem", "by the way" ...: strong before text unlike the ticket, weak otherwise."""
    best: Finding | None = None
    for match in NEW_RE.finditer(a.prose):
        cue = match.group(1)
        if SAME_TOPIC_AFTER.match(a.prose, match.end()):
            continue
        weight = NEW_REQUEST_CUES[cue] * _cue_credit(a, match.start(), NEW_REQUEST_CUES[cue])
        if best is None or weight > best.weight:
            best = Finding(weight, f'new-request cue "{cue}"')
    return best


def continuation_cue(a: Analysis) -> Finding | None:
    """ "immer noch", "any update", "here is" ...: the reply carries the ticket on."""
    cues: dict[str, float] = {}
    for match in CONTINUATION_RE.finditer(a.prose):
        cue = match.group(1)
        weak = cue in WEAK_IN_NEW_TEXT and a.novel_at(match.start(), 0.2)
        weight = CONTINUATION_CUES[cue] * (0.5 if weak else 1.0)
        cues[cue] = max(weight, cues.get(cue, 0.0))
    if not cues:
        return None
    named = ", ".join(f'"{c}"' for c in list(cues)[:3])
    return Finding(-min(2.0, sum(cues.values())), f"continuation cue {named}")


def answers_agent(a: Analysis) -> Finding | None:
    if not a.answers:
        return None
    return Finding(-1.2, f'answers the agent\'s question "{_clip(a.answers)}"')


def problem_report(a: Analysis) -> Finding | None:
    """ "seit gestern", "geht nicht", "no longer" in a sentence unlike the ticket."""
    for match in MALFUNCTION.finditer(a.prose):
        if a.novel_at(match.start(), min_words=1):
            return Finding(0.6, f'reports a new malfunction ("{match.group(1)}")')
    return None


def gratitude(a: Analysis) -> Finding | None:
    found = THANKS_RE.search(a.prose)
    return None if found is None else Finding(-0.5, f'thanks ("{found.group(1)}")')


def new_question(a: Analysis) -> Finding | None:
    questions = [p for p in a.novel_parts(limit=0.2, min_words=3) if p.question]
    if not questions:
        return None
    return Finding(0.8, f'asks a question unlike the ticket: "{_clip(questions[0].text)}"')


def length(a: Analysis) -> Finding | None:
    """Short replies are acknowledgements ("Danke!", "ok", "any update?"), never a new topic;
    unless they are mostly about a topic the ticket never touched, or report a malfunction of
    one ("WLAN geht nicht")."""
    foreign = sum(len(words) for words in a.foreign_topics.values())
    if a.words > 8 or 2 * foreign >= max(a.words, 1):
        return None
    if foreign and problem_report(a) is not None:
        return None
    words = "word" if a.words == 1 else "words"
    if a.words <= 2:
        return Finding(-3.0, f"very short reply ({a.words} {words})")
    if a.words <= 5:
        return Finding(-1.2, f"short reply ({a.words} {words})")
    return Finding(-0.5, f"short reply ({a.words} {words})")


def pasted_log(a: Analysis) -> Finding | None:
    if a.log_lines == 0:
        return None
    return Finding(-1.2, f"pasted log or error output ({a.log_lines} lines)")


def time_since_closed(a: Analysis) -> Finding | None:
    if a.closed_days is None:
        return None
    if a.closed_days >= 14:
        return Finding(min(2.0, a.closed_days / 30), f"ticket closed {a.closed_days:.0f} days ago")
    if a.closed_days < 3:
        return Finding(-0.3, "ticket closed only recently")
    return None


# The evidence table: each row adds its log-odds to BIAS; the score is the logistic of the sum.
BIAS = -0.7
EVIDENCE: Sequence[tuple[str, Callable[[Analysis], Finding | None]]] = (
    ("lexical similarity", lexical_similarity),
    ("novel part", novel_part),
    ("topic shift", topic_shift),
    ("subject change", subject_change),
    ("new-request cue", new_request_cue),
    ("continuation cue", continuation_cue),
    ("answers the agent", answers_agent),
    ("problem report", problem_report),
    ("gratitude", gratitude),
    ("new question", new_question),
    ("length", length),
    ("pasted log", pasted_log),
    ("time since closed", time_since_closed),
)


def findings(a: Analysis) -> list[tuple[str, Finding]]:
    """(evidence name, finding) for every row of the table that has something to say."""
    return [(name, found) for name, judge in EVIDENCE if (found := judge(a)) is not None]


def verdict(found: Sequence[tuple[str, Finding]], threshold: float) -> DriftVerdict:
    """The score from the evidence; reasons: what speaks for the verdict, strongest first,
    then what speaks against it."""
    total = BIAS + sum(f.weight for _, f in found)
    score = 1.0 / (1.0 + math.exp(-total))
    new_topic = score >= threshold
    ranked = sorted(
        (f for _, f in found), key=lambda f: ((f.weight > 0) != new_topic, -abs(f.weight))
    )
    reasons = tuple(f.reason for f in ranked if abs(f.weight) >= _REASON_MIN)
    return DriftVerdict(new_topic, score, reasons)


def detect(
    ticket_subject: str,
    ticket_history: Sequence[str],
    new_subject: str,
    new_visible_text: str,
    *,
    closed_for: timedelta | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> DriftVerdict:
    """Does the reply (its visible text: no quotes, no signature) raise a new topic?"""
    a = analyse(ticket_subject, ticket_history, new_subject, new_visible_text, closed_for)
    return verdict(findings(a), threshold)


# --------------------------------------------------------------------------- JSON contract


def _string(case: Mapping[str, object], key: str) -> str:
    if key not in case:
        raise ValueError(f'missing key "{key}"')
    value = case[key]
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, not {type(value).__name__}')
    return value


def _history(case: Mapping[str, object]) -> list[str]:
    if "ticket_history" not in case:
        raise ValueError('missing key "ticket_history"')
    value = case["ticket_history"]
    if not isinstance(value, list):
        raise ValueError(f'"ticket_history" must be a list of strings, not {type(value).__name__}')
    for index, item in enumerate(value):
        if not isinstance(item, str):
            kind = type(item).__name__
            raise ValueError(f'"ticket_history"[{index}] must be a string, not {kind}')
    return value


def _closed_for(case: Mapping[str, object]) -> timedelta | None:
    value = case.get("closed_days_ago")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f'"closed_days_ago" must be a number >= 0 or null, not {value!r}')
    return timedelta(days=value)


def detect_raw(case: Mapping[str, object], threshold: float = DEFAULT_THRESHOLD) -> DriftVerdict:
    """The JSON contract. `new_message` is the raw body: quotes and signature are removed here
    with ingest's splitter. Optional "closed_days_ago": days since the ticket was closed.
    Other keys are ignored, so labelled cases can be fed as they are."""
    if not isinstance(case, Mapping):
        raise ValueError(f"a drift case must be a JSON object, not {type(case).__name__}")
    history = _history(case)
    ticket_subject, new_subject = _string(case, "ticket_subject"), _string(case, "new_subject")
    visible = split_reply(_string(case, "new_message")).visible
    closed_for = _closed_for(case)
    return detect(
        ticket_subject, history, new_subject, visible, closed_for=closed_for, threshold=threshold
    )


def drift_command(stdin: TextIO, stdout: TextIO, threshold: float) -> int:
    """`mailtick drift --json`: one case as JSON on stdin, the verdict as JSON on stdout.
    Bad input: a message on stderr, exit status 2."""
    try:
        verdict_ = detect_raw(json.loads(stdin.read()), threshold)
    except json.JSONDecodeError as error:
        print(f"mailtick drift: input is not valid JSON: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"mailtick drift: {error}", file=sys.stderr)
        return 2
    json.dump(verdict_.to_json(), stdout, ensure_ascii=False)
    stdout.write("\n")
    return 0
