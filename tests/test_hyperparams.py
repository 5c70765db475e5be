"""Declared hyperparameters (``hf_tsprompt/hyperparams.py``): one declaration, one check."""

from __future__ import annotations

import math

import pytest

from hf_tsprompt.errors import ConfigError
from hf_tsprompt.hyperparams import TSLOSS_PARAMS, Param, param_defaults


def test_tsloss_declarations_are_the_papers_defaults():
    assert param_defaults(TSLOSS_PARAMS) == {
        "beta_h0": 1.0,
        "beta_h1": 1.0,
        "tau": 0.1,
        "alpha": 10.0,
        "lambda_repel": 1.0,
        "lambda_attract": 1.0,
        "variant": "soft",
        "scale": "absolute",
    }
    by_name = {p.name: p for p in TSLOSS_PARAMS}
    assert by_name["tau"].description.startswith("[tau] Temperature")
    assert by_name["beta_h0"].requirement == "a number >= 0"
    assert by_name["variant"].requirement == "one of soft, exact"


@pytest.mark.parametrize(
    "param,value,problem",
    [
        (Param("x", 1.0, bound="> 0"), 0, "must be > 0"),
        (Param("x", 1.0, bound="> 0"), 2, None),
        (Param("x", 1.0, bound=">= 0"), -0.5, "must be >= 0"),
        (Param("x", 1.0), math.nan, "must be a finite number"),
        (Param("x", 1.0), math.inf, "must be a finite number"),
        (Param("x", 1.0), True, "must be a finite number"),
        (Param("x", 1.0), "1", "must be a finite number"),
        (Param("n", 3, bound=">= 0"), 2.5, "must be an integer"),
        (Param("n", 3, bound=">= 0"), 0, None),
        (Param("b", False), 1, "must be true or false"),
        (Param("s", "a", choices=("a", "b")), "c", "must be one of a, b"),
        (Param("s", "a"), 1, "must be a string"),
    ],
)
def test_problem(param, value, problem):
    assert param.problem(value) == problem


def test_check_names_the_value_and_coerces_ints_to_floats():
    p = Param("tau", 0.1, symbol="tau", bound="> 0")
    assert p.check(2) == 2.0 and isinstance(p.check(2), float)
    with pytest.raises(ConfigError, match=r"^tau must be > 0, got 0\.$"):
        p.check(0)
    with pytest.raises(ConfigError, match=r"^ts.tau must be > 0, got -1\.$"):
        p.check(-1, where="ts.tau")
    variant = Param("variant", "soft", choices=("soft", "exact"))
    with pytest.raises(ConfigError, match="must be one of soft, exact, got 'exakt'. Did you mean"):
        variant.check("exakt")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "Tau", "default": 1.0}, "lower-case identifier"),
        ({"name": "my-param", "default": 1.0}, "lower-case identifier"),
        ({"name": "x", "default": [1]}, "must be a float, int, bool or str"),
        ({"name": "x", "default": "a", "bound": "> 0"}, "needs a numeric default"),
        ({"name": "x", "default": 1.0, "bound": "< 0"}, "needs a numeric default"),
        ({"name": "x", "default": 0.0, "bound": "> 0"}, "its default 0.0 must be > 0"),
        ({"name": "x", "default": "c", "choices": ("a", "b")}, "its default 'c' must be one of"),
    ],
)
def test_bad_declarations(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Param(**kwargs)
