"""Answer normalisation: the canonical forms that gold answers and generations are compared in.

Owns the text-level rules every task's :meth:`~hf_tsprompt.data.tasks.Task.extract` and
:meth:`~hf_tsprompt.data.tasks.Task.reference` share (numbers, SQuAD-style short answers, the
"answer is" span, ``\\boxed{}`` contents, MATH and BBH answers). Pure string functions: no task,
no tokenizer, no I/O.
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation

__all__ = [
    "ANSWER_IS_RE",
    "NUMBER_RE",
    "final_number",
    "first_answer_span",
    "last_boxed",
    "normalize_bbh",
    "normalize_math_answer",
    "normalize_number",
    "normalize_text",
    "option_letter",
]

NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
ANSWER_IS_RE = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text (``"$1,080.00"`` -> ``"1080"``), else None."""
    s = text.strip().replace("\u2212", "-").replace(",", "").replace("$", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def final_number(text: str) -> str | None:
    """The final numeric answer in a text, canonical (:func:`normalize_number`), else None:
    the number after the last ``####`` (GSM8K's answer line), else the last number in the
    text (so "... the answer is 72." scores too)."""
    if "####" in text:
        match = NUMBER_RE.search(text.rsplit("####", 1)[1])
        if match:
            return normalize_number(match.group())
    numbers = NUMBER_RE.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def option_letter(text: str, letters: str = "ABCD") -> str | None:
    """The multiple-choice option letter a text gives, else None: the letter after the last
    "answer is" (``The answer is (B)``), else the first letter in parentheses (``(C)``), else
    a letter at the very start followed by ``.``, ``)``, ``:`` or nothing (``D.``, ``A``)."""
    options = f"[{re.escape(letters)}]"
    answer_is = re.findall(rf"[Aa]nswer is:?\s*\(?({options})\b", text)
    if answer_is:
        return answer_is[-1]
    for pattern in (rf"\(({options})\)", rf"^\s*({options})(?:[.):]|\s*$)"):
        found = re.findall(pattern, text)
        if found:
            return found[0]
    return None


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation for short free-text answers: lower case, no punctuation,
    no articles, single spaces (what LongBench / HotpotQA exact match compares)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def first_answer_span(text: str) -> str:
    """The part of a generation that holds the answer: what follows the last "answer is"
    if present, else the first non-empty line (models often add an explanation after it)."""
    matches = ANSWER_IS_RE.findall(text)
    if matches:
        return matches[-1].splitlines()[0].strip()
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("answer:"):
            line = line[len("answer:") :].strip()
        if line:
            return line
    return ""


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    starts = [(text.rfind(cmd), cmd) for cmd in ("\\boxed", "\\fbox")]
    index, cmd = max(starts)
    if index < 0:
        return None
    i = index + len(cmd)
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return None
    # "\boxed 5" (no braces) occurs in a few MATH solutions.
    match = re.match(r"\s+([^\s$]+)", text[i:])
    return match.group(1) if match else None


_MATH_REMOVE = ("\\!", "\\,", "\\;", "\\:", "\\$", "$", "\\%", "%", "^\\circ", "^{\\circ}")


def normalize_math_answer(text: str) -> str:
    """Normalise a MATH final answer so that equivalent spellings compare equal
    (``\\dfrac12`` == ``\\frac{1}{2}``, ``0.50`` == ``0.5``, ``x = 3`` == ``3``,
    ``10^\\circ`` == ``10``). A subset of the MATH paper's string normalisation."""
    s = text.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    for token in _MATH_REMOVE:
        s = s.replace(token, "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split()).rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    if re.fullmatch(r"[a-zA-Z]=.+", s):
        s = s[2:]
    if re.fullmatch(r"-?(?:\d+|\d{1,3}(?:,\d{3})+)?(?:\.\d+)?", s) and any(c.isdigit() for c in s):
        number = normalize_number(s)
        if number is not None:
            return number
    return s


_BBH_OPTION_RE = re.compile(r"^(?:\(([A-R])\)|([A-R])(?:[.):]|$))")


def normalize_bbh(text: str) -> str:
    """Canonical BBH answer: ``(X)`` for an option letter, a canonical number, else the text
    lower-cased with whitespace collapsed and a trailing period removed (True/False, Yes/No,
    valid/invalid, Dyck closings, sorted word lists, free names)."""
    s = " ".join(text.strip().split())
    option = _BBH_OPTION_RE.match(s)
    if option:
        return f"({option.group(1) or option.group(2)})"
    s = s.rstrip(".").strip()
    if re.fullmatch(r"[-\u2212]?\d[\d,]*(?:\.\d+)?", s):
        number = normalize_number(s)
        if number is not None:
            return number
    return s.lower()
