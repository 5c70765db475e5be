"""Declared hyperparameters: :class:`Param`, and TSLoss's own (Eq. 1-6).

A :class:`Param` is one hyperparameter declared once: its name, default, the paper's symbol,
a help text and its constraint (``>= 0``, ``> 0`` or a set of choices). Everything that
handles the value reads it from there: :func:`hf_tsprompt.losses.ts_loss` checks its
arguments with it, the regulariser registry (:mod:`hf_tsprompt.regularizers`) declares each
regulariser's parameters with it, and the trainer's ``ts_*`` fields, the recipe's ``ts:``
section and the model card take their names, defaults, help and checks from it.

This module holds no torch code (the recipe checker and the card writer read it), and
:data:`TSLOSS_PARAMS` live here rather than in the registry because ``losses`` checks its
arguments with them while the registry calls ``losses``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["BOUNDS", "TSLOSS_PARAMS", "Bound", "Param", "param_defaults"]

Bound = Literal[">= 0", "> 0"]
#: The numeric constraints a :class:`Param` may declare.
BOUNDS: tuple[str, ...] = (">= 0", "> 0")
_TYPES: dict[type, str] = {
    float: "a number",
    int: "an integer",
    bool: "true or false",
    str: "a string",
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter, declared once.

    Attributes:
        name: a lower-case identifier; the recipe's ``ts.<name>`` and the config's
            ``ts_<name>`` where it has a field of its own.
        default: its value when none is given; its type (``float``, ``int``, ``bool`` or
            ``str``) is the parameter's type (an int is accepted where a float is declared).
        help: one sentence for ``--help`` and the docs.
        symbol: the paper's notation (``tau``, ``beta_H0``), shown as ``[symbol]`` in help.
        bound: ``">= 0"`` or ``"> 0"`` for a number, None for no bound.
        choices: the accepted values, None for any value of the type.
    """

    name: str
    default: Any
    help: str = ""
    symbol: str | None = None
    bound: Bound | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier() and self.name.islower()):
            raise ConfigError(f"a parameter name is a lower-case identifier, got {self.name!r}.")
        if type(self.default) not in _TYPES:
            raise ConfigError(
                f"parameter {self.name!r}: the default {self.default!r} must be a float, int, "
                f"bool or str (its type is the parameter's type), not "
                f"{type(self.default).__name__}."
            )
        if self.bound is not None and (self.bound not in BOUNDS or self.type not in (float, int)):
            raise ConfigError(
                f"parameter {self.name!r}: bound {self.bound!r} needs a numeric default and one "
                f"of {', '.join(BOUNDS)}."
            )
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        problem = self.problem(self.default)
        if problem:
            raise ConfigError(
                f"parameter {self.name!r}: its default {self.default!r} {problem}; fix the "
                "declaration."
            )

    @property
    def type(self) -> type:
        """``float``, ``int``, ``bool`` or ``str``: the type of :attr:`default`."""
        return type(self.default)

    @property
    def requirement(self) -> str:
        """What a value must be, in words: ``a number > 0``, ``one of soft, exact``."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        base = _TYPES[self.type]
        return f"{base} {self.bound}" if self.bound else base

    @property
    def description(self) -> str:
        """The help text with the paper's symbol in front: ``[tau] Temperature ...``."""
        return f"[{self.symbol}] {self.help}" if self.symbol else self.help

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be > 0"``), or None when it is acceptable."""
        if self.type is float or self.type is int:
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if self.type is int and not is_int:
                return "must be an integer"
            if not (is_int or isinstance(value, float)) or not math.isfinite(value):
                return "must be a finite number"
            if self.bound == "> 0" and not value > 0:
                return "must be > 0"
            if self.bound == ">= 0" and not value >= 0:
                return "must be >= 0"
        elif self.type is bool:
            if not isinstance(value, bool):
                return "must be true or false"
        elif not isinstance(value, str):
            return "must be a string"
        if self.choices is not None and value not in self.choices:
            return f"must be {self.requirement}"
        return None

    def check(self, value: Any, *, where: str | None = None) -> Any:
        """``value`` if acceptable (an int as a float where a float is declared).

        Raises:
            ConfigError: naming ``where`` (default: the parameter's name), what the value must
                be, and the closest choice.
        """
        problem = self.problem(value)
        if problem:
            hint = ""
            if self.choices is not None and isinstance(value, str):
                close = difflib.get_close_matches(value, [str(c) for c in self.choices], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where or self.name} {problem}, got {value!r}.{hint}")
        return float(value) if self.type is float else value


def param_defaults(params: Iterable[Param]) -> dict[str, Any]:
    """``{name: default}`` of ``params``, in their order."""
    return {p.name: p.default for p in params}


#: TSLoss's hyperparameters (paper section IV; defaults from section V-B where it gives one),
#: in the order configs, recipes and the model card list them.
TSLOSS_PARAMS: tuple[Param, ...] = (
    Param("beta_h0", 1.0, "Weight of L_H0 (Eq. 6).", symbol="beta_H0", bound=">= 0"),
    Param("beta_h1", 1.0, "Weight of L_H1 (Eq. 6).", symbol="beta_H1", bound=">= 0"),
    Param(
        "tau",
        0.1,
        "Temperature of the soft nearest-neighbour distance (Eq. 1).",
        symbol="tau",
        bound="> 0",
    ),
    Param(
        "alpha",
        10.0,
        "Sharpness of the soft quantiles delta, zeta (Eq. 5).",
        symbol="alpha",
        bound="> 0",
    ),
    Param(
        "lambda_repel",
        1.0,
        "Weight of the repulsion term (Eq. 3).",
        symbol="lambda_repel",
        bound=">= 0",
    ),
    Param(
        "lambda_attract",
        1.0,
        "Weight of the attraction term (Eq. 3).",
        symbol="lambda_attract",
        bound=">= 0",
    ),
    Param(
        "variant",
        "soft",
        "'soft' (the paper's soft nearest-neighbour / soft-quantile form) or 'exact' (true "
        "persistence pairs, see hf_tsprompt.losses.exact_ts_terms).",
        choices=("soft", "exact"),
    ),
    Param(
        "scale",
        "absolute",
        "'absolute' (the paper: distances as they are) or 'mean' (scale-free: distances "
        "divided by their mean, so tau and alpha are relative).",
        choices=("absolute", "mean"),
    ),
)
