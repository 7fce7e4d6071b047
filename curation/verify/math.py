"""Math verifier: find the final answer a response commits to, compare it with the gold answer, and
abstain (`unknown`) when it cannot tell.

Extraction follows how chat models conclude, and commits only to an answer the response states:
- the part after the last `</think>` (reasoning models); an unfinished `<think>` has no answer;
- the last `\\boxed{...}` / `\\fbox{...}` (boxes in the same final line together form a list);
  "the answer is X", "Answer: X", a "Final Answer" heading, `#### X`;
- a closing claim: the last sentence or line with a value ("Therefore, there are 144 subsets.",
  "So x = 6.", "cos(60°) = 0.5"), skipping checks ("Check: ... ✓") and sentences without a value;
  a claim that names several values in a way that is not a list, set, tuple or "x or y" is ambiguous;
- a closing claim led by "Therefore / Thus / So / Hence / ..." after the last box or answer line
  overrides it (a box around an intermediate result, then the conclusion);
- a response that reconsiders after its answer ("wait", "let me re-check", "actually", ...) has
  no final answer.
There is no "last number in the text" fallback: prose numbers are not answers.

Comparison, on both sides after light normalisation (LaTeX wrappers, `\\text{units}`, trailing
unit words, degrees, `x =`, unicode math signs):
- gold answers are normalised too: a value with an explanation in parentheses ("0 (no such
  selection is possible)"), a sentence ("The limit exists and is equal to 2"), yes / no ("No, it
  diverges."), "no solution" forms (no solution, no real solutions, none, does not exist, ∅);
- numbers (integers, decimals, a/b, \\frac, scientific notation, percentages) are compared exactly
  or within relative 1e-9, never rounded; a comma is a thousands separator only in digit groups of
  three (`1,000`, `4{,}536`), so `\\boxed{1, 2}` is the list 1, 2 and never 12;
- lists, sets ("x = 2 or x = 3", `\\{1, 2\\}`, "2, 3") compare in any order; tuples and
  assignments (`(2, 5)`, "x = 7, y = 3") in order;
- everything else (roots, pi, intervals, inequalities, unions, expressions) goes to `math-verify`
  (float_rounding=12 there), time-bounded.

Verdicts: `pass`, `fail` (a final answer that differs), `unknown` (no final answer, an ambiguous
one, or one that cannot be compared: math-verify cannot parse it or ran out of time).

Bounds: responses over MAX_RESPONSE_CHARS and answers over MAX_ANSWER_CHARS are `unknown`; every
scan is linear in the text (braces matched in one pass; no backtracking patterns); math-verify runs
under a timer on the main thread, or in a helper process that is killed when it overruns (its own
`signal.alarm` timeouts fail off the main thread).
"""

from __future__ import annotations

import json
import math as _math
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

MAX_RESPONSE_CHARS = 400_000
MAX_ANSWER_CHARS = 1000
REL_TOL = 1e-9
STARTUP_TIMEOUT_S = 120.0  # the helper process imports sympy once; slow on a loaded machine
VERDICTS = ("pass", "fail", "unknown")


@dataclass(frozen=True)
class MathVerdict:
    verdict: str  # pass | fail | unknown
    extracted: str | None = None
    message: str = ""

    @property
    def correct(self) -> bool:
        return self.verdict == "pass"


# ---- extraction ------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*(?:\*\*)?\s*:?\s*|\*\*(?:final\s+)?answer:?\*\*\s*:?\s*",
    re.IGNORECASE,
)
_ANSWER_HEADING = re.compile(r"^[#*\s]*final\s+answer[*:\s]*$", re.IGNORECASE | re.MULTILINE)
_HASHES = re.compile(r"^\s*####\s*(.+)$", re.MULTILINE)
_CONCLUSION = re.compile(
    r"^(?:therefore|thus|so|hence|in conclusion|in total|in all|altogether|overall|finally|"
    r"this gives|we get|we find|that makes|which gives|the answer)\b",
    re.IGNORECASE,
)
_CHECK = re.compile(
    r"^(?:check|checking|verify|verification|sanity check|as a check|indeed)\b|✓|✔", re.IGNORECASE
)
_RECONSIDER = re.compile(
    r"\b(?:wait|actually|hmm+|let me (?:re|double|recount|redo)|re-?examine|i made (?:a|an) "
    r"(?:mistake|error)|that'?s (?:not right|wrong)|redo(?:ing)?|on second thought|let'?s double|"
    r"incorrect|(?:is|was) wrong|not correct|instead|correction|should (?:be|have been)|"
    r"the (?:right|correct|actual|true) (?:answer|count|value|result|number|total))\b",
    re.IGNORECASE,
)
# A closing claim that hedges ("it could be 3 or 7", "x = 7?", "... I am not sure") commits to nothing.
_HEDGE = re.compile(
    r"\b(?:could be|might be|may be|maybe|perhaps|possibly|probably|not (?:sure|certain)|unsure|uncertain|"
    r"i guess|i think|i believe|not confident|either)\b|\?\s*$",
    re.IGNORECASE,
)
# Words around a value that make it a bound or an estimate, not the value: "5 or more", "at most 2",
# "about 5". Checked outside boxes (a boxed "x \\geq 5" is the comparator's to judge against the gold).
_NOT_EXACT = re.compile(
    r"\b(?:or|and)\s+(?:more|less|fewer|greater|higher|lower|above|below|so|thereabouts)\b|"
    r"\bat\s+(?:least|most)\b|\b(?:more|less|fewer|greater|smaller|larger|higher|lower)\s+than\b|"
    r"\bup\s+to\b|\b(?:approximately|roughly|nearly|almost)\b|\b(?:about|around)\s+[-$\\\d]",
    re.IGNORECASE,
)
_MATH_SEGMENT = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_THINK_END = "</think>"


@dataclass(frozen=True)
class FinalAnswer:
    answer: str | None  # None: no final answer found (see reason)
    how: str = ""  # boxed | answer_is | heading | hashes | claim
    reason: str = ""


def _match_braces(text: str) -> dict[int, int]:
    """Position of each '{' -> position of its closing '}', in one linear pass (escaped braces
    `\\{` `\\}` are LaTeX set braces and count like any other)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed \\boxed{...}; unclosed ones are skipped."""
    braces = _match_braces(text)
    out = []
    for m in _BOX.finditer(text):
        close = braces.get(m.end() - 1)
        if close is not None:
            out.append((m.start(), close + 1, text[m.end() : close]))
    return out


def _line_of(text: str, pos: int, window: int = 2 * MAX_ANSWER_CHARS) -> tuple[int, int]:
    """The line around `pos`, looking at most `window` characters either way (bounded work)."""
    low = max(0, pos - window)
    start = text.rfind("\n", low, pos) + 1 or low
    end = text.find("\n", pos, pos + window)
    return start, min(len(text), pos + window) if end < 0 else end


_RESULT_WORDS = r"so|thus|hence|therefore|which|i\.e\.|giving|yielding"
_CONDITION_WORDS = r"attained|achieved|reached|obtained|occurring|when|where|since|because|as|if|provided"
_UNIT_BREAK = re.compile(
    rf"(?<=[.!?])\s+(?=\S)|;\s+|,\s+(?=(?:{_RESULT_WORDS}|{_CONDITION_WORDS})\b)", re.IGNORECASE
)
_CONDITION = re.compile(rf"^(?:{_CONDITION_WORDS})\b", re.IGNORECASE)


def _units(text: str) -> list[tuple[int, int, str]]:
    """Sentences, clauses and lines (start, end, text): line breaks end a unit; '.', '!' or '?'
    followed by a space end a sentence (a decimal point does not); ';' and a comma before a result
    word (', so', ', which', ', giving') or a condition word (', attained at', ', since', ', when')
    start a new clause: the conclusion of 'A, so B' is B, and of 'A, attained at B' is A."""
    out = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for piece in _UNIT_BREAK.split(line.group(0)):
            offset = text.find(piece, start)
            if piece.strip():
                out.append((offset, offset + len(piece), piece.strip()))
            start = offset + len(piece)
    return out


def _after_answer_is(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _ANSWER_IS.finditer(text):
        line_end = _line_of(text, m.end())[1]
        rest = text[m.end() : line_end]
        # to the end of the sentence: '. ' or a final '.', not a decimal point
        rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
        if rest.strip():
            out.append((m.start(), m.end() + len(rest), rest))
    for m in _ANSWER_HEADING.finditer(text):  # "**Final Answer**" then the answer on the next line
        nxt = re.match(r"\s*\n([^\n]+)", text[m.end() : m.end() + MAX_ANSWER_CHARS + 2])
        if nxt:
            out.append((m.start(), m.end() + nxt.end(), nxt.group(1)))
    for m in _HASHES.finditer(text):
        out.append((m.start(), m.end(), m.group(1)))
    return sorted(out)


_CONNECTIVE = re.compile(r"[\s$,;]*(?:and|or|,)?[\s$,;]*", re.IGNORECASE)


def _anchored(text: str) -> tuple[int, int, str, str] | None:
    """The last box or answer statement: (start, end, answer, how). Boxes right before the last one,
    separated from it only by a comma, 'and' or 'or', are joined with it into a list."""
    boxes = _boxes(text)
    statements = _after_answer_is(text)
    last_box = boxes[-1] if boxes else None
    last_statement = statements[-1] if statements else None
    if last_box and (last_statement is None or last_box[1] >= last_statement[0]):
        together = [last_box]  # "\\boxed{2} and \\boxed{3}": boxes joined only by a connective
        for box in reversed(boxes[:-1]):
            if not _CONNECTIVE.fullmatch(text[box[1] : together[0][0]]):
                break
            together.insert(0, box)
        answer = ", ".join(b[2] for b in together)
        return together[0][0], last_box[1], answer, "boxed"
    if last_statement:
        inner = _boxes(last_statement[2])
        answer = inner[-1][2] if inner else last_statement[2]
        how = "hashes" if text[last_statement[0] :].lstrip().startswith("####") else "answer_is"
        return last_statement[0], last_statement[1], answer, how
    return None


def _closing_claim(text: str) -> tuple[int, int, str | None, bool] | None:
    """The last unit with a value, skipping checks and units without one (at most 4): (start, end,
    claim or None when ambiguous, whether a conclusion word leads it)."""
    skipped, hedged = 0, False
    for start, end, unit in reversed(_units(text)):
        after_comma = text[max(0, start - 2) : start].startswith(",")
        if len(unit) > MAX_UNIT_CHARS or _CHECK.search(unit) or (after_comma and _CONDITION.match(unit)):
            skipped += 1
        else:
            value = _claim(unit)
            hedged = hedged or bool(_HEDGE.search(unit)) or _bound_or_estimate(unit)
            if value is not _NOTHING:
                led = bool(_CONCLUSION.match(re.sub(r"^[\s*#>-]+", "", unit)))
                return start, end, None if hedged else value, led
            skipped += 1
        if skipped > 4:
            return None
    return None


def _uncommitted(text: str, start: int, end: int, how: str) -> bool:
    """Does the sentence holding the answer ask it ("Could it be \\boxed{5}?"), hedge it ("I think") or
    make it a bound ("5 or more")? Box contents are left out of the check."""
    pieces = [unit for s, e, unit in _units(text) if s < end and e > start]
    sentence = " ".join(pieces)
    if how == "boxed":
        for box_start, box_end, _ in reversed(_boxes(sentence)):
            sentence = sentence[:box_start] + " " + sentence[box_end:]
    return bool(_HEDGE.search(sentence)) or _bound_or_estimate(sentence)


def _bound_or_estimate(text: str) -> bool:
    """'5 or more', 'at most 2', 'about 5': a bound or an estimate, unless it is an aside beside an exact
    value ('9\\pi (about 28.27)', '1/6, or about 16.7%')."""
    return bool(_NOT_EXACT.search(_ASIDE.sub("", text.strip().rstrip(".!").strip())))


def final_answer(response: str) -> FinalAnswer:
    """The final answer a response commits to, or why there is none."""
    if len(response) > MAX_RESPONSE_CHARS:
        return FinalAnswer(None, reason=f"response over {MAX_RESPONSE_CHARS} characters")
    text = response
    if _THINK_END in text:
        text = text[text.rindex(_THINK_END) + len(_THINK_END) :]
    elif "<think>" in text:
        return FinalAnswer(None, reason="the reasoning never ended (<think> without </think>)")
    anchored = _anchored(text)
    claim = _closing_claim(text)
    if anchored and claim and claim[3] and claim[0] >= anchored[1] and claim[2]:
        anchored = None  # a conclusion after the last box / answer line overrides it
    if anchored:
        start, end, answer, how = anchored
        if _uncommitted(text, start, end, how):
            return FinalAnswer(None, how, "the answer is asked, hedged or a bound, not a value")
    elif claim:
        _, end, answer, how = claim[0], claim[1], claim[2], "claim"
        if answer is None:
            return FinalAnswer(None, reason="the closing claim names several values")
        if _looks_cut(text):
            return FinalAnswer(None, how, "the response stops mid-sentence")
    else:
        return FinalAnswer(None, reason="no final answer found")
    tail = text[end:]
    if _RECONSIDER.search(tail):
        return FinalAnswer(None, how, "the response reconsiders after its answer")
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return FinalAnswer(None, how, "empty or overlong answer")
    return FinalAnswer(answer, how)


_DANGLING = re.compile(
    r"(?:[=+\-*/,(\[{:\\]|\b(?:the|a|an|to|and|or|of|is|are|was|with|that|we|by|for|in|as|then|so|"
    r"which|where|when|into|gives|get|equals|becomes|approaches|from|at|on))\s*$",
    re.IGNORECASE,
)


def _looks_cut(text: str) -> bool:
    """A response that ends on an operator, a comma, an open bracket or a function word was cut off."""
    return bool(_DANGLING.search(text[-200:]))


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when it commits to none."""
    return final_answer(text).answer


# ---- a sentence's claim ----------------------------------------------------------------------

_NOTHING = object()  # a unit that states no value at all
_UNICODE = str.maketrans(
    {
        "−": "-",
        "–": "-",
        "×": "*",
        "·": "*",
        "÷": "/",
        "π": "\\pi ",
        "∞": "\\infty ",
        "≤": "\\le ",
        "≥": "\\ge ",
        "²": "^2",
        "³": "^3",
        "≈": "\\approx ",
    }
)
_NUMBER = r"-?\\frac\{-?\d+\}\{\d+\}|-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?(?:/\d+|:\d+)?(?:\^\{?-?\d+\}?)?%?|-?\.\d+"
_CONSTANT = r"\\pi\b|\\sqrt\s*\{?\d+\}?|\\sqrt\b|\\infty\b"
_VALUE_TOKEN = re.compile(rf"(?<![\w.])(?:{_NUMBER})(?:\s*(?:{_CONSTANT}))?|{_CONSTANT}|√|\b[a-z]\s*=")
_VERBS = re.compile(
    r"\b(?:is|are|was|were|is equal to|equal to|equals?|be|gives|get|makes|has|have|comes? (?:out )?to|"
    r"totals?|tends to|approaches|converges to|goes to|reduces to|simplifies to|becomes)\b|=|(?<=[a-zA-Z*])\s*:\s",
    re.IGNORECASE,
)
_NONE_PHRASE = re.compile(
    r"\b(?:(?:has|have|there (?:is|are)) no (?:real |integer )?(?:solutions?|such)|no (?:real )?solutions?\b|"
    r"no such \w+|does not exist|is impossible|not possible)",
    re.IGNORECASE,
)
_ASIDE = re.compile(  # "9π (about 28.27)", "1/6, or about 16.7%": an approximation beside the value
    r"\s*\((?:about|approximately|approx\.?|roughly|i\.e\.|or|which is|\\approx)[^()]*\)\s*$|"
    r",\s*(?:or\s+)?(?:about|approximately|approx\.?|roughly|\\approx)\s[^,]*$",
    re.IGNORECASE,
)
_PREPOSITION = re.compile(
    r"^(?:of|in|for|after|per|out of|from|over|at|within|during|when|if|since|because|as|by|to|on)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]*(?:\^\d|/[a-zA-Z]+(?:\^\d)?)*")  # also km/h, cm^3, m/s^2
MAX_UNIT_CHARS = 1000  # a longer sentence or line is not a closing claim
_ASSIGNMENT = re.compile(r"(?<![\w\\^])([a-zA-Z])\s*=\s*([^=,;]+?)(?=\s*(?:,|;|\band\b|\bor\b|$))")
_INEQUALITY = re.compile(r"(?:-?[\w.\\{}^]+\s*(?:<|>|\\le|\\ge|\\leq|\\geq|\\lt|\\gt)=?\s*)+-?[\w.\\{}^]+")


def _math_segments(unit: str) -> list[str]:
    return [next(g for g in m.groups() if g is not None) for m in _MATH_SEGMENT.finditer(unit)]


def _claim(unit: str):
    """The value a sentence claims: a string, None when it names several values ambiguously, or
    _NOTHING when it states no value. A sentence that opens with yes or no claims that."""
    unit = re.sub(r"[*_]{2}", "", unit).strip().rstrip(".!").strip()
    unit = _ASIDE.sub("", unit)
    opening = re.match(r"(yes|no)\s*[,.!;:]", unit, re.IGNORECASE)
    if opening:
        return opening.group(1)
    segments = _math_segments(unit)
    if segments:
        # "Hence $x = 3$ or $x = 2$": several segments joined by words form one list
        if len(segments) > 1 and all(_ASSIGNMENT.fullmatch(s.strip()) or _is_simple(s) for s in segments):
            return _values_claim(", ".join(segments))
        last = segments[-1]
        after = unit[unit.rfind(last) + len(last) :]
        if not re.search(r"\d", re.sub(r"\\?\$|\\\)|\\\]", "", after)):
            return _rhs(last)
    plain = _plain(unit)
    none = _NONE_PHRASE.search(plain)
    if none and not _VALUE_TOKEN.search(plain[none.end() :]):
        return "no solution"
    return _values_claim(plain)


def _is_simple(segment: str) -> bool:
    return bool(re.fullmatch(r"\s*-?[\w.\\{}^/]+\s*", segment))


def _plain(unit: str) -> str:
    return re.sub(r"\\?\$|\\\(|\\\)|\\\[|\\\]", "", unit.translate(_UNICODE).replace("√", "\\sqrt "))


def _rhs(expression: str) -> str:
    """What an equation or membership states: the right of its last '=', '\\in' or '\\implies'."""
    if _SET_BUILDER.match(expression.strip()):
        return expression.strip()
    for sep in ("=", "\\in ", "\\in{", "\\implies"):
        if sep in expression:
            expression = expression.rsplit(sep, 1)[1]
    return expression.strip()


def _values_claim(text: str):
    """The value claimed in plain text: assignments (x = 7, y = 3), an inequality, or the value after
    the last verb; None when that is ambiguous, _NOTHING when there is no value."""
    if not _VALUE_TOKEN.search(text):
        return _NOTHING
    assignments = [(n, v.strip()) for n, v in _ASSIGNMENT.findall(text) if _is_simple(v)]
    if len(assignments) > 1:
        names = [n for n, _ in assignments]
        values = list(dict.fromkeys(v for _, v in assignments))
        if len(set(names)) == 1:  # x = 2 or x = 3
            return ", ".join(values)
        if len(set(names)) == len(names):
            return "(" + ", ".join(v for _, v in assignments) + ")"
    verbs = list(_VERBS.finditer(text))
    tail = text[verbs[-1].end() :].strip() if verbs else text
    short_expression = re.fullmatch(r"[^a-zA-Z]*|[-+\w\\{}^/() ]{1,30}", tail) and not _words_beside(tail)
    if verbs and verbs[-1].group(0) == "=" and short_expression:
        return _strip_unit_words(tail)  # "... = i^3 = -i"
    if not _VALUE_TOKEN.search(tail):
        tail = text
    return _tail_value(tail.strip())


def _tail_value(tail: str):
    """The first value of a claim's tail, when what follows it is unit words and at most a
    prepositional phrase ('25 percent of 80', '8,000 bacteria after 3 hours'); a list, an 'a or b',
    a tuple or an inequality as a whole. None when ambiguous."""
    inequalities = _INEQUALITY.findall(tail)
    if inequalities and all(re.search(r"[a-zA-Z]", i) for i in inequalities):
        return " or ".join(inequalities)
    stripped = _strip_unit_words(tail)
    bracketed = re.search(r"[(\[][^()\[\]]+[)\]]", stripped)
    if bracketed and not _VALUE_TOKEN.search(stripped[: bracketed.start()] + stripped[bracketed.end() :]):
        return bracketed.group(0)
    parts = re.split(r",|\bor\b|\band\b", stripped)
    if len(parts) > 1 and all(len(_VALUE_TOKEN.findall(p)) == 1 and not _words_beside(p) for p in parts):
        return stripped
    first = _VALUE_TOKEN.search(tail)
    rest = _strip_leading_words(tail[first.end() :])
    if rest and not _PREPOSITION.match(rest) and _VALUE_TOKEN.search(rest):
        return None
    value = first.group(0)
    if re.match(r"\s*percent\b", tail[first.end() :], re.IGNORECASE):
        value += "%"
    return value


def _words_beside(part: str) -> bool:
    return bool(re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", "", part)))


def _strip_leading_words(text: str) -> str:
    """Unit words after a value ('bacteria after 3 hours' -> 'after 3 hours')."""
    words = text.split()
    i = 0
    while i < len(words) and _WORD.fullmatch(words[i]) and not _PREPOSITION.match(words[i]):
        i += 1
    return " ".join(words[i:])


def _strip_unit_words(text: str) -> str:
    """'24 positive divisors' -> '24'; '150 miles' -> '150'; '9\\pi square units' -> '9\\pi'
    (trailing words after a value; one linear pass over the words)."""
    words = text.split()
    i = len(words)
    while i > 1 and _WORD.fullmatch(words[i - 1]):
        i -= 1
    if i < len(words) and re.search(r"[\d}a-zA-Z)]$", words[i - 1]):
        return " ".join(words[:i])
    return " ".join(words)


# ---- normalisation ---------------------------------------------------------------------------

_YES = re.compile(r"^(?:yes|true)\b", re.IGNORECASE)
_NO = re.compile(r"^(?:no|false)\b(?!\s+(?:solution|real|such|integer|value|x\b))", re.IGNORECASE)
_NONE = re.compile(
    r"^(?:there\s+(?:is|are)\s+)?(?:no\s+(?:real\s+|integer\s+)?(?:solutions?|such\b.*|values?\b.*)|none|"
    r"(?:it\s+)?does\s+not\s+exist|dne|impossible|\\varnothing|\\emptyset|∅|\\\{\s*\\\}|\{\s*\})\s*$",
    re.IGNORECASE,
)
_UNITS_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textbf)\s*\{([^{}]*)\}")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\\left|\\right|~")


def _unwrap(answer: str) -> str:
    """Delimiters, \\text{...}, spacing, degree marks and 'x =' off an answer."""
    s = answer.strip().translate(_UNICODE).replace("√", "\\sqrt ")
    s = re.sub(r"^(?:\*\*|__)+|(?:\*\*|__)+$", "", s).strip()  # markdown bold around the answer
    for _ in range(3):
        s = re.sub(r"^\$+|\$+$", "", s).strip()
        s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
        inner = _boxes(s)
        if inner and inner[0][0] == 0 and inner[-1][1] == len(s):
            s = inner[0][2].strip()
    s = _UNITS_TEXT.sub(lambda m: " " + m.group(1) + " ", s)
    s = re.sub(r"\s+\^", "^", s)  # "\\text{ cm}^3" -> "cm^3"
    s = _LATEX_SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = s.replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    if re.fullmatch(r"[a-zA-Z]\s*(?:=|\\in)\s*[^=]+", s) and not re.search(r"\b(?:or|and)\b|,", s):
        s = _rhs(s)
    return s


def normalise_gold(gold: str) -> tuple[str, bool]:
    """A gold answer as a bare answer: (answer, whether it also reads 'none exists'). Strips an
    explanation in parentheses ('0 (no such selection is possible)'), reads a sentence
    ('The limit exists and is equal to 2'), keeps yes / no and 'no solution' forms."""
    g = gold.strip().rstrip(".").strip()[:MAX_ANSWER_CHARS]
    none_alias = False
    explained = re.fullmatch(r"([^()]+?)\s*\(([^()]*)\)", g)
    if (
        explained
        and re.search(r"[a-zA-Z]{3,}", explained.group(2))
        and re.search(r"\d|\\", explained.group(1))
    ):
        g, why = explained.group(1).strip(), explained.group(2)
        none_alias = bool(
            re.search(r"\bno\b|\bnone\b|impossible|not possible|does not exist", why, re.IGNORECASE)
        )
    if _YES.match(g) or _NO.match(g) or _NONE.match(g):
        return g, none_alias
    if re.search(r"[a-zA-Z]{3,}\s+[a-zA-Z]{2,}", _UNITS_TEXT.sub("", g)) and not g.startswith("\\"):
        claim = _claim(g)  # a sentence
        if isinstance(claim, str):
            return claim, none_alias
    return g, none_alias


@dataclass(frozen=True)
class _Value:
    kind: str  # yes | no | none | number | list | expr
    number: Fraction | None = None
    percent: bool = False
    items: tuple = ()
    ordered: bool = False
    brackets: str = ""
    text: str = ""


def _number(s: str) -> tuple[Fraction, bool] | None:
    """A plain number (integer, decimal, thousands groups, a/b, \\frac{a}{b}, scientific, percent)."""
    s = _strip_unit_words(s).replace(" ", "")
    percent = s.endswith("%")
    s = s.rstrip("%")
    s = re.sub(r"^\\frac\{(-?\d+)\}\{(\d+)\}$", r"\1/\2", s)
    s = re.sub(r"^-\\frac\{(\d+)\}\{(\d+)\}$", r"-\1/\2", s)
    sci = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*(?:\\times|\*|x)\s*10\^\{?(-?\d+)\}?", s)
    if sci:
        s = f"{sci.group(1)}e{sci.group(2)}"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:e-?\d+)?|-?\d+/\d+", s):
        return None
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value, percent


def _split_top(s: str) -> list[str]:
    """Split on top-level commas, ' or ', ' and ' (not inside brackets or braces)."""
    parts, depth, current, i = [], 0, [], 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and (ch in ",;" or s.startswith(" or ", i) or s.startswith(" and ", i)):
            parts.append("".join(current))
            current = []
            i += 1 if ch in ",;" else (4 if s.startswith(" or ", i) else 5)
            continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_OP = r"(<=|>=|<|>|\\leq?|\\geq?|\\lt|\\gt)"
_SIDE = r"(-?\s*[\w.\\{}^/]+?)"
_CHAIN = re.compile(rf"^\s*(?:{_SIDE}\s*{_OP}\s*)?([a-zA-Z])\s*(?:{_OP}\s*{_SIDE})?\s*$")
_SET_BUILDER = re.compile(r"^\\\{\s*[a-zA-Z]\s*(?:\\in\s*\\mathbb\{R\}\s*)?(?::|\\mid|\|)\s*(.+)\\\}$")


def _bound(op: str) -> tuple[bool, bool]:
    """(is the variable below the other side, is the bound included) for 'x OP bound'."""
    below = op in ("<", "<=", "\\le", "\\leq", "\\lt")
    return below, op in ("<=", ">=", "\\le", "\\leq", "\\ge", "\\geq")


def _interval_of(s: str) -> str | None:
    """'-1 < x < 5' -> '(-1, 5)', 'x \\ge 3' -> '[3, \\infty)', 'x < -2 or x > 2' -> a union."""
    pieces = []
    for part in re.split(r"\s+or\s+|\\lor|\\cup", s):
        m = _CHAIN.match(part)
        if m is None or (m.group(2) is None and m.group(4) is None):
            return None
        low, high = ("-\\infty", "("), ("\\infty", ")")
        if m.group(2):  # 'a OP x' reads as 'x OP' reversed
            below, closed = _bound(m.group(2))
            bound = (m.group(1).strip(), "[" if closed else "(") if below else None
            low, high = (bound, high) if below else (low, (m.group(1).strip(), "]" if closed else ")"))
        if m.group(4):
            below, closed = _bound(m.group(4))
            if below:
                high = (m.group(5).strip(), "]" if closed else ")")
            else:
                low = (m.group(5).strip(), "[" if closed else "(")
        pieces.append(f"{low[1]}{low[0]}, {high[0]}{high[1]}")
    return " \\cup ".join(pieces)


def _value(answer: str) -> _Value:
    s = _unwrap(answer)
    builder = _SET_BUILDER.match(s)
    if builder:
        s = builder.group(1).strip()
    if re.search(r"[<>]|\\[lg]eq?\b|\\[lg]t\b", s):
        s = _interval_of(s) or s
    ratio = re.fullmatch(r"(\d+)\s*:\s*(\d+)", s)
    if ratio:  # a ratio keeps its form: 9:12 is not 3:4 written another way
        items = tuple(_Value("number", Fraction(int(x))) for x in ratio.groups())
        return _Value("list", items=items, ordered=True, brackets=":", text=s)
    if s.count("\\pm") == 1 and not _split_top(s)[1:]:
        plus, minus = _value(s.replace("\\pm", "+")), _value(s.replace("\\pm", "-"))
        return _Value("list", items=(plus, minus), text=s)
    low = s.lower().strip(" .!")
    if _NONE.match(low):
        return _Value("none", text=s)
    if _YES.match(low):
        return _Value("yes", text=s)
    if _NO.match(low):
        return _Value("no", text=s)
    number = _number(s)
    if number is not None:
        return _Value("number", number[0], number[1], text=s)
    if "\\infty" in s or "\\cup" in s or re.search(r"[<>]|\\[lg]eq?\b", s):
        return _Value("expr", text=s)  # unbounded intervals, unions, inequalities left: math-verify
    braced = re.fullmatch(r"\\\{(.*)\\\}", s)
    bracketed = re.fullmatch(r"([(\[])(.*)([)\]])", s)
    inner, ordered, brackets = s, False, ""
    if braced:
        inner = braced.group(1)
    elif bracketed and len(_split_top(bracketed.group(2))) > 1:
        inner, ordered, brackets = bracketed.group(2), True, bracketed.group(1) + bracketed.group(3)
    parts = _split_top(inner)
    if len(parts) > 1 or braced:
        items = tuple(_value(re.sub(r"^[a-zA-Z]\s*=\s*", "", p)) for p in parts)
        return _Value("list", items=items, ordered=ordered, brackets=brackets, text=s)
    return _Value("expr", text=s)


def _numbers_equal(a: _Value, b: _Value) -> bool:
    def close(x: Fraction, y: Fraction) -> bool:
        return x == y or _math.isclose(float(x), float(y), rel_tol=REL_TOL, abs_tol=0.0)

    if a.percent == b.percent:
        return close(a.number, b.number)
    # one side says "25%", the other "25" or "0.25": either reading
    return close(a.number, b.number) or close(
        a.number / (100 if a.percent else 1), b.number / (100 if b.percent else 1)
    )


def _compare(pred: _Value, gold: _Value, symbolic) -> bool | None:
    """True / False, or None when the two cannot be compared."""
    if gold.kind in ("yes", "no") or pred.kind in ("yes", "no"):
        if gold.kind in ("yes", "no") and pred.kind in ("yes", "no"):
            return gold.kind == pred.kind
        return None
    if gold.kind == "none" or pred.kind == "none":
        return gold.kind == pred.kind
    if pred.kind == "number" and gold.kind == "number":
        return _numbers_equal(pred, gold)
    if pred.kind == "list" and gold.kind == "list":
        return _lists_equal(pred, gold, symbolic)
    if (pred.kind == "list") != (gold.kind == "list") and "number" in (pred.kind, gold.kind):
        return False  # \boxed{1, 2} is not 12
    return symbolic(pred.text, gold.text)


def _lists_equal(pred: _Value, gold: _Value, symbolic) -> bool | None:
    if len(pred.items) != len(gold.items):
        return False
    if pred.ordered and gold.ordered:
        if pred.brackets != gold.brackets:
            return False
        results = [_compare(p, g, symbolic) for p, g in zip(pred.items, gold.items, strict=True)]
        return None if None in results else all(results)
    remaining = list(gold.items)
    for item in pred.items:  # any order
        found = next((g for g in remaining if _compare(item, g, symbolic)), None)
        if found is None:
            return False
        remaining.remove(found)
    return True


def compare(pred: str, gold: str, *, timeout_s: float = 5.0, in_process: bool | None = None) -> bool | None:
    """Whether answer `pred` equals gold answer `gold`: True, False, or None when they cannot be
    compared. Raises TimeoutError when math-verify overruns `timeout_s`."""
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return None
    gold_answer, none_alias = normalise_gold(gold)
    pred_value, gold_value = _value(pred), _value(gold_answer)
    if none_alias and pred_value.kind == "none":
        return True

    def symbolic(a: str, b: str) -> bool | None:
        if a.replace(" ", "") == b.replace(" ", ""):
            return True
        return _bounded_symbolic(a, b, timeout_s, in_process)

    return _compare(pred_value, gold_value, symbolic)


def answers_match(pred: str, gold: str, *, timeout_s: float = 5.0, in_process: bool | None = None) -> bool:
    """True only when `pred` is shown equal to `gold` (see `compare`)."""
    return compare(pred, gold, timeout_s=timeout_s, in_process=in_process) is True


def _yes_no_opening(response: str) -> str | None:
    """A chat answer to a yes / no question often opens with it: 'No. If x is ...'."""
    first = re.match(r"\s*(?:\*\*)?(yes|no)(?:\*\*)?\s*[.,!:;]", response, re.IGNORECASE)
    return first.group(1) if first else None


def check_answer(
    response: str, gold: str, *, timeout_s: float = 5.0, in_process: bool | None = None
) -> MathVerdict:
    """Extract the final answer of `response` and compare it with `gold`."""
    found = final_answer(response)
    gold_kind = _value(normalise_gold(gold)[0]).kind
    answer = found.answer
    if gold_kind in ("yes", "no"):
        opening = _yes_no_opening(response)
        if opening and (answer is None or _value(answer).kind not in ("yes", "no")):
            answer = opening
    if answer is None:
        return MathVerdict("unknown", None, found.reason)
    try:
        same = compare(answer, gold, timeout_s=timeout_s, in_process=in_process)
    except TimeoutError as e:
        return MathVerdict("unknown", answer, str(e))
    if same is None:
        return MathVerdict("unknown", answer, f"cannot compare {answer!r} with {gold!r}")
    return MathVerdict("pass" if same else "fail", answer, "" if same else f"{answer!r} != {gold!r}")


def check_many(
    pairs: Sequence[tuple[str, str]], *, workers: int = 1, timeout_s: float = 5.0
) -> list[MathVerdict]:
    """(response, gold) pairs. `workers > 1` checks them from that many threads, each comparing in
    its own helper process, so they run in parallel and every comparison is time-bounded."""

    def one(pair: tuple[str, str]) -> MathVerdict:
        return check_answer(pair[0], pair[1], timeout_s=timeout_s)

    if workers <= 1 or len(pairs) < 2:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pairs))


# ---- math-verify, time-bounded ---------------------------------------------------------------

FLOAT_ROUNDING = 12  # math-verify rounds numbers it evaluates to this many decimals


def _math_verify_equal(pred: str, gold: str) -> bool | None:
    """math-verify with its own (signal) timeouts off: the caller bounds the time. None when
    either side does not parse."""
    from math_verify import grader, parse, parser, verify

    # its "you must bound the time yourself" warning: we do, see _bounded_symbolic
    grader.TIMEOUT_WARNING_SHOWN = parser.TIMEOUT_WARNING_SHOWN = True
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return None
    return bool(verify(gold_parsed, pred_parsed, float_rounding=FLOAT_ROUNDING, timeout_seconds=None))


class _Overrun(BaseException):
    """Raised by our alarm; a BaseException so math-verify's `except Exception` cannot swallow it."""


def _bounded_symbolic(pred: str, gold: str, timeout_s: float, in_process: bool | None) -> bool | None:
    """`in_process=None` bounds time with an interval timer on the main thread and with the helper
    process elsewhere; `False` always uses the helper (also bounds C-level hangs signals cannot stop)."""
    on_main = threading.current_thread() is threading.main_thread()
    if in_process is False or (in_process is None and not on_main):
        return _thread_helper().call(pred, gold, timeout_s)
    if not on_main:
        raise RuntimeError("in_process=True needs the main thread (signal-based time bound)")

    def overrun(signum, frame):
        raise _Overrun

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return _math_verify_equal(pred, gold)
    except _Overrun as e:
        raise TimeoutError(f"math-verify took over {timeout_s:g}s") from e
    except Exception:  # noqa: BLE001 - a sympy failure on odd input: not comparable
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Helper:
    """A helper process (`python -c ...`, no multiprocessing: nothing re-imports the caller's main
    module) that compares answers on its own main thread; killed when it overruns."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from curation.verify.math import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.ready = False

    def _read(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline().decode() if ready else None

    def call(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        if not self.ready:  # the helper says "ready" once sympy and math-verify are imported
            if self._read(STARTUP_TIMEOUT_S) != "ready\n":
                self.close()
                raise RuntimeError("the math-verify helper process did not start")
            self.ready = True
        request = {"pred": pred, "gold": gold, "timeout_s": timeout_s}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        # the helper bounds itself with a timer; the kill covers hangs inside C code
        line = self._read(timeout_s + 1.0)
        if not line:
            self.close()
            raise TimeoutError(f"math-verify took over {timeout_s:g}s")
        reply = json.loads(line)
        if reply.get("timeout"):
            raise TimeoutError(f"math-verify took over {timeout_s:g}s")
        return reply["equal"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()

    def __del__(self) -> None:  # the owning thread is gone
        try:
            self.close()
        except (OSError, ValueError, AttributeError):
            pass


_local = threading.local()


def _thread_helper() -> _Helper:
    helper = getattr(_local, "helper", None)
    if helper is None or helper.proc.poll() is not None:
        helper = _local.helper = _Helper()
    return helper


def _serve() -> None:
    """The helper's loop: one JSON request per line on stdin, one reply per line on stdout."""
    import math_verify  # noqa: F401  (warm the imports before saying ready)

    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the reply channel
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = {"equal": _bounded_symbolic(req["pred"], req["gold"], req["timeout_s"], True)}
        except TimeoutError:
            reply = {"timeout": True}
        out.write(json.dumps(reply) + "\n")
        out.flush()
