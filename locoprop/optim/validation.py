"""Checks shared by the optimizers: hyper-parameters, and which optimizer a state_dict belongs to.

**Hyper-parameters.**  :func:`check_hparam` raises a one-line ``ValueError`` that names the
optimizer, the parameter, the value given and what is expected; :func:`check_hparams` checks a
group of them against their :class:`Rule` (a test and the words for what it allows), and the rules
the optimizers share are constants here (:data:`POSITIVE`, :data:`NON_NEGATIVE`, :data:`FRACTION`,
:data:`COUNT`, :data:`FLAG`, :func:`one_of`, :func:`nesterov_needs`).  A *number* is an ``int`` or
``float`` (NumPy's scalars included) that is finite; a string such as ``"0.1"`` (a number quoted
in a JSON file), ``True``/``False``, NaN and ±inf are not.  An *integer* is an ``int`` (or NumPy
integer), never a float such as ``2.9`` or ``3.0`` (nothing is truncated) and never a bool.

**State dicts.**  The optimizers of this package store a *signature* in their ``state_dict()``
under :data:`SIGNATURE_KEY`: the optimizer's name (with its variant, e.g. ``"LocoProp-M"``),
optional details (LocoProp's inner optimizer) and the shapes of its parameters, as plain
str/int/list values, so ``torch.load(..., weights_only=True)`` reads it.  ``load_state_dict``
compares it with its own (:func:`check_state_dict`) and refuses the state of another optimizer or
of a model of other widths.  A state_dict without a signature (saved before signatures existed)
is only checked for the structure of its per-parameter state.  ``torch.optim``'s own optimizers
(SGD, Adam, ...) ignore the signature: they load any state_dict whose parameter counts match, so
check :func:`state_dict_owner` before loading a checkpoint into one of them.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = [
    "SIGNATURE_KEY",
    "COUNT",
    "FLAG",
    "FRACTION",
    "NON_NEGATIVE",
    "POSITIVE",
    "Rule",
    "check_hparam",
    "check_hparams",
    "nesterov_needs",
    "number",
    "one_of",
    "is_number",
    "is_integer",
    "signature",
    "state_dict_owner",
    "guess_owner",
    "check_state_dict",
]

SIGNATURE_KEY = "signature"


def is_number(value: Any) -> bool:
    """True for a finite ``int`` or ``float`` (NumPy scalars included); False for bool, str, NaN, ±inf."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """True for an ``int`` (or NumPy integer) that is not a bool; False for every float, even ``3.0``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_hparam(owner: str, name: str, value: Any, test: Callable[[Any], bool], allowed: str) -> None:
    """Raise ``ValueError`` naming ``name``, its ``value`` and the ``allowed`` range unless ``test(value)``."""
    try:
        ok = bool(test(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{owner}: invalid {name}={value!r} ({type(value).__name__}); expected {allowed}")


@dataclass(frozen=True)
class Rule:
    """What a hyper-parameter may be: the values for which ``test`` holds, described in words by ``allowed``."""

    test: Callable[[Any], bool]
    allowed: str

    def about(self, meaning: str) -> Rule:
        """The same rule, its words followed by what the parameter means: ``a finite number > 0 (the ...)``."""
        return Rule(self.test, f"{self.allowed} ({meaning})")

    def or_none(self, allowed: str) -> Rule:
        """This rule, None also allowed, described by ``allowed``."""
        return Rule(lambda v: v is None or self.test(v), allowed)


def number(test: Callable[[Any], bool], allowed: str) -> Rule:
    """The rule "a number (:func:`is_number`) for which ``test`` holds"."""
    return Rule(lambda v: is_number(v) and test(v), allowed)


def one_of(*choices: Any) -> Rule:
    """The rule "one of ``choices``", in words ``'a', 'b' or 'c'``."""
    words = ", ".join(map(repr, choices[:-1])) + " or " + repr(choices[-1]) if len(choices) > 1 else repr(choices[0])
    return Rule(lambda v: v in choices, words)


def nesterov_needs(momentum: Any) -> Rule:
    """The rule of a ``nesterov`` flag: a bool, True only with a ``momentum`` > 0 to look ahead with."""
    return Rule(lambda v: isinstance(v, bool) and (not v or momentum > 0), "True or False; True needs momentum > 0")


POSITIVE = number(lambda v: v > 0, "a finite number > 0")
NON_NEGATIVE = number(lambda v: v >= 0, "a finite number >= 0")
FRACTION = number(lambda v: 0 <= v < 1, "a number in [0, 1)")  # a decay or momentum
COUNT = Rule(lambda v: is_integer(v) and v >= 1, "an integer >= 1")
FLAG = Rule(lambda v: isinstance(v, bool), "True or False")


def check_hparams(owner: str, values: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """:func:`check_hparam` for each ``name: rule`` of ``rules`` on ``values[name]``, in the rules' order."""
    for name, rule in rules.items():
        check_hparam(owner, name, values[name], rule.test, rule.allowed)


def signature(optimizer: str, params: Iterable[Tensor], **details: str) -> dict[str, Any]:
    """The signature of an optimizer's state: its name, ``details`` and its parameters' shapes."""
    return {"optimizer": optimizer, **details, "param_shapes": [list(p.shape) for p in params]}


def state_dict_owner(state_dict: Any) -> str | None:
    """The optimizer that saved ``state_dict`` according to its signature, or None if it has none."""
    if isinstance(state_dict, dict) and isinstance(state_dict.get(SIGNATURE_KEY), dict):
        return state_dict[SIGNATURE_KEY].get("optimizer")
    return None


#: Per-parameter state keys that identify an optimizer (for state_dicts without a signature).
_STATE_KEYS = (
    ({"ms", "mom"}, "TFRMSProp"),
    ({"L", "R", "L_root", "R_root"}, "Shampoo"),
    ({"D"}, "Shampoo"),
    ({"A", "G"}, "KFAC"),
    ({"exp_avg", "exp_avg_sq"}, "Adam"),
    ({"square_avg"}, "RMSprop"),
    ({"sum"}, "Adagrad"),
    ({"momentum_buffer"}, "SGD with momentum"),
)


def guess_owner(state_dict: dict) -> str:
    """The optimizer a state_dict without signature most likely comes from, by its structure (for messages)."""
    if "inner" in state_dict:
        return "LocoProp"
    state = state_dict.get("state", {})
    if "kfac" in state:
        return "KFAC"
    keys = set().union(*(v for v in state.values() if isinstance(v, dict))) if state else set()
    for marker, name in _STATE_KEYS:
        if marker <= keys:
            return name
    return "an optimizer with no state yet" if not keys else f"an optimizer with state {sorted(map(str, keys))}"


def _describe(sig: dict[str, Any]) -> str:
    details = [f"{k}={v}" for k, v in sig.items() if k not in ("optimizer", "param_shapes")]
    return sig.get("optimizer", "?") + (f" ({', '.join(details)})" if details else "")


def check_state_dict(
    owner: str, state_dict: Any, expected: dict[str, Any], legacy_problem: Callable[[dict], str | None]
) -> None:
    """Raise ``ValueError`` unless ``state_dict`` was saved by an optimizer with signature ``expected``.

    ``owner`` names the loading class in the message.  Without a signature (an older state_dict),
    ``legacy_problem(state_dict)`` returns what is wrong with its structure, or None.
    """
    if not (isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict)
            and isinstance(state_dict.get("param_groups"), list)):
        raise ValueError(f"{owner}.load_state_dict: expected an optimizer state_dict (a dict with 'state' and "
                         f"'param_groups'), got {type(state_dict).__name__}")
    saved = state_dict.get(SIGNATURE_KEY)
    if saved is None:
        problem = legacy_problem(state_dict)
        if problem is not None:
            raise ValueError(f"{owner}.load_state_dict: {problem}; load it into the optimizer that saved it")
        return
    if not isinstance(saved, dict):
        raise ValueError(f"{owner}.load_state_dict: the state_dict's {SIGNATURE_KEY!r} entry is not a dict")
    if any(saved.get(k) != v for k, v in expected.items() if k != "param_shapes"):
        raise ValueError(f"{owner}.load_state_dict: this state_dict belongs to {_describe(saved)}, not to "
                         f"{_describe(expected)}; load it into the optimizer that saved it")
    shapes, mine = saved.get("param_shapes"), expected["param_shapes"]
    if shapes != mine:
        if not isinstance(shapes, list) or len(shapes) != len(mine):
            what = f"{len(shapes) if isinstance(shapes, list) else '?'} parameters, this optimizer has {len(mine)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(shapes, mine)) if a != b)
            what = f"parameter {i} has shape {shapes[i]} there and {mine[i]} here"
        raise ValueError(f"{owner}.load_state_dict: this state_dict belongs to a model of other widths ({what}); "
                         "load it into an optimizer of the same model")
