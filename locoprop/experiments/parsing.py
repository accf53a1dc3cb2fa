"""The argument parser of every command (``python -m locoprop run|sweep|tune|results|bench|reproduce``).

Its errors are one line on stderr (``<prog>: error: <cause> (see --help)``, exit status 2), and its
help shows every default that is a value (not None or off) and keeps the examples' line breaks.
"""
from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "Parser"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every default that is a value (not None or off) and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS, []) or not action.option_strings:
            return text
        default = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), with defaults in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
