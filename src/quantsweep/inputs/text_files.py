"""Reading a dataset's text and JSONL files strictly, and warning when text does not look like language.

Why: the text a sweep calibrates and scores on decides what every number in it means. Reading it leniently
(undecodable bytes replaced, a binary file accepted as "text") gives a sweep that runs to the end on noise and
reports scores that say nothing about the model's real use. So a dataset file must be a regular file within a size
bound (a FIFO would block, a multi-GB dump exhaust memory), strict UTF-8 (the message gives the offset of the first
bad byte), and hold some text; every JSONL line must be an object whose text field is a string (the message gives
the line number). Text that decodes but does not look like natural language (control characters, few letters and
spaces: random bytes, a hex dump, a table of numbers) is accepted with a warning, since it may be deliberate.

Pure Python: no torch. Errors are InputErrors `<label>: <file>: <what is wrong>`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .documents import MiB, DocumentError, Limits, decode_utf8, parse_json, read_bytes
from .file_checks import _err

# A calibration set needs a few MB of text; a file this large is almost certainly the wrong file.
DATASET = Limits(max_bytes=1024 * MiB, max_depth=64, max_nodes=1_000_000)
# One JSONL record.
RECORD = Limits(max_bytes=1024 * MiB, max_depth=64, max_nodes=1_000_000)

# C0 controls other than tab, newline, vertical tab, form feed and carriage return; DEL; C1 controls; and the
# replacement character (text that was already decoded leniently somewhere upstream).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
# Letters and whitespace, ASCII or not; every other non-ASCII character (marks of Indic scripts, CJK punctuation)
# counts as language too, so only ASCII punctuation, digits and symbols count against a text.
_LANGUAGE = re.compile(r"[A-Za-z\s]|[^\x00-\x7f]")
_WORD = re.compile(r"[^\W\d_]+")
# A lower-case letter followed by an upper-case one: rare in prose (iPhone) and code (camelCase, under 3% of the
# letters), one letter in eight in random characters.
_CASE_SWITCH = re.compile(r"[a-z][A-Z]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_SAMPLE_CHARS = 1 << 18  # per sampled stretch; four stretches bound the heuristic's cost on a large file
_MIN_CHARS = 200  # below this the shares say little


def _read(path: Path, label: str, what: str) -> str:
    try:
        text = decode_utf8(read_bytes(path, DATASET, what), str(path))
    except DocumentError as exc:
        raise InputError(f"{label}: {exc}") from None
    if not text:
        raise _err(label, path, f"empty file: a {what} needs text")
    if not text.strip():
        raise _err(label, path, f"contains only whitespace: a {what} needs text")
    return text


def read_text_dataset(path: str | Path, label: str = "dataset.path") -> str:
    """The whole text of a plain-text dataset file."""
    return _read(Path(path), label, "text dataset")


def read_jsonl_dataset(path: str | Path, field: str, label: str = "dataset.path") -> list[str]:
    """The `field` string of every non-empty line of a JSONL file (lines whose text is empty are skipped)."""
    path = Path(path)
    text = _read(path, label, "JSONL dataset")
    docs: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028 unescaped
        line = line.strip()
        if not line:
            continue
        try:
            obj = parse_json(line, f"{path}: line {lineno}", RECORD)
        except DocumentError as exc:
            raise InputError(f"{label}: {exc}") from None
        if not isinstance(obj, dict):
            kind = "a list" if isinstance(obj, list) else type(obj).__name__.replace("NoneType", "null")
            raise _err(label, path, f"line {lineno}: expected a JSON object with a {field!r} field, got {kind}")
        if field not in obj:
            raise _err(
                label, path, f"line {lineno}: no field {field!r} (set dataset.field to the field holding the text)"
            )
        value = obj[field]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise _err(label, path, f"line {lineno}: field {field!r} is {kind}, not a string")
        if value.strip():
            docs.append(value)
    if not docs:
        raise _err(label, path, f"no text: no line has a non-empty {field!r} field")
    return docs


def _sample(text: str) -> str:
    if len(text) <= 4 * _SAMPLE_CHARS:
        return text
    step = (len(text) - _SAMPLE_CHARS) // 3
    return "".join(text[i * step : i * step + _SAMPLE_CHARS] for i in range(4))


def text_warnings(text: str) -> list[str]:
    """Why `text` may not be natural language (empty when it looks like prose, code or markup in any script).

    Measured on up to 1M characters: control characters (random bytes that happen to decode are full of them);
    the share of letters and whitespace with the length of letter runs (random printable characters, hex dumps and
    tables of numbers have few letters, in short runs; prose and code in any script have many, in words); and
    letters turning upper case mid-word (random characters and base64 do it all the time, prose and code seldom).
    """
    if not text:
        return []
    warnings = []
    sample = _sample(text)
    n = len(sample)
    controls = _CONTROL.findall(sample[: 4 * _SAMPLE_CHARS])
    nul = text.find("\x00")
    if nul >= 0 or len(controls) > max(2, n // 1000):
        first = f"a NUL at character {nul:,}" if nul >= 0 else f"U+{ord(controls[0]):04X}"
        warnings.append(
            f"{len(controls):,} control characters in {n:,} (e.g. {first}): is this a binary file? It would be "
            "calibrated on as text"
        )
    if n >= _MIN_CHARS:
        language = _LANGUAGE.subn("", sample)[1] / n
        runs = [len(w) for w in _WORD.findall(sample)]
        letters = sum(runs)
        run = sum(r * r for r in runs) / letters if letters else 0.0  # the average word length, per letter
        ascii_letters = _ASCII_LETTER.subn("", sample)[1]
        switches = _CASE_SWITCH.subn("", sample)[1] / ascii_letters if ascii_letters else 0.0
        few_letters = language < 0.5 or (language < 0.7 and run < 4.0)
        mixed_case = switches > 0.05 and language < 0.75
        if few_letters or mixed_case:
            warnings.append(
                f"does not look like natural language ({language:.0%} of the characters are letters or spaces, "
                f"words average {run:.1f} letters, {switches:.0%} of the letters turn upper case mid-word): scores "
                "calibrated on it may say little about real use"
            )
    return warnings
