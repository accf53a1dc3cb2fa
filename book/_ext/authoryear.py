"""A pybtex bibliography style whose labels match the book's author-year citations: "Amid et al. 2022".

Registered as the pybtex plugin ``authoryear`` (``bibtex_default_style: authoryear`` in
``_config.yml``): the entries are formatted as by pybtex's ``plain`` style, sorted by author, year
and title, and labelled "Last 2020", "Last and Other 2020" or "Last et al. 2020", with a, b, ...
appended when two entries would get the same label.
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _names(entry) -> str:
    persons = entry.persons.get("author") or entry.persons.get("editor") or []
    last = [" ".join(person.last_names) for person in persons]
    if not last:
        return entry.fields.get("organization", entry.key)
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


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


class AuthorYearStyle(PlainStyle):
    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
