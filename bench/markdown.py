"""Sections of docs/BENCHMARKS.md that one benchmark owns, between marker comments.

`make bench` writes the lifecycle report and `make bench-sip` its SIP
tables into the same file: each replaces only its own section, so either
can run without erasing what the other measured.
"""

from __future__ import annotations

import re


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin (written by the benchmark; edits here are lost) -->", f"<!-- {name}: end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the section `name` holding `body`; appended when it has none yet."""
    begin, end = markers(name)
    section = f"{begin}\n{body.rstrip()}\n{end}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return (text.rstrip() + "\n\n" if text.strip() else "") + section


SECTION = re.compile(r"<!-- ([\w-]+): begin .*?-->.*?<!-- \1: end -->\n?", re.DOTALL)


def sections(text: str) -> list[str]:
    """Every marked section of `text`, markers included, in order."""
    return [match.group(0) for match in SECTION.finditer(text)]


def keep_sections(old: str, new: str) -> str:
    """`new`, followed by the marked sections of `old` that `new` does not have."""
    for section in sections(old):
        name = SECTION.match(section).group(1)
        if markers(name)[0] not in new:
            new = new.rstrip() + "\n\n" + section
    return new
