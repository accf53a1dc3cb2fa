"""A pybtex bibliography style whose labels match the book's author-year citations: "Amid et al. 2022".

Registered as the pybtex plugin ``authoryear`` (``bibtex_default_style: authoryear`` in
``_config.yml``): the entries are formatted as by pybtex's ``plain`` style, labelled "Last 2020",
"Last and Other 2020" or "Last et al. 2020" (with a, b, ... appended when two entries would get the
same label) and sorted by the first author's surname, then year and title.  Names are written as
the text citations write them: LaTeX accents decoded (``R{\\"u}tte`` is "Rütte") and a particle kept
in front ("von Rütte 2023"); the sorting ignores the particle and the accents ("von Rütte" is
sorted under R, between "Ren" and "Tieleman").
"""
from __future__ import annotations

import unicodedata
from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle


def _plain(latex: str) -> str:
    """LaTeX as text: ``R{\\"u}tte`` -> "Rütte", ``{LocoProp}`` -> "LocoProp"."""
    return Text.from_latex(latex).render_as("text")


def _persons(entry):
    return entry.persons.get("author") or entry.persons.get("editor") or []


def _surname(person, particle: bool = True) -> str:
    parts = (person.prelast_names if particle else []) + person.last_names
    return _plain(" ".join(parts))


def _names(entry) -> str:
    last = [_surname(person) for person in _persons(entry)]
    if not last:
        return _plain(entry.fields.get("organization", entry.key))
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


def _fold(text: str) -> str:
    """Lower case without accents, for sorting: "Rütte" -> "rutte"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Names Year", disambiguated by a letter when needed."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [f"{_names(e)} {e.fields.get('year', '')}".strip() for e in entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                yield f"{label}{'abcdefghijklmnopqrstuvwxyz'[seen[label] - 1]}"
            else:
                yield label


class AuthorYearSortingStyle(BaseSortingStyle):
    """By the authors' surnames (particles such as "von" and accents ignored), then year and title."""

    def sorting_key(self, entry):
        persons = _persons(entry)
        names = tuple((_fold(_surname(p, particle=False)), _fold(_plain(" ".join(p.first_names + p.middle_names))))
                      for p in persons) or ((_fold(_plain(entry.fields.get("organization", entry.key))), ""),)
        return names, entry.fields.get("year", ""), _fold(_plain(entry.fields.get("title", "")))


class AuthorYearStyle(PlainStyle):
    default_label_style = "authoryear"
    default_sorting_style = "authoryear"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.sorting", "authoryear", AuthorYearSortingStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
