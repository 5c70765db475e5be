"""The regularisers on the soft prompt: one registry, each entry declared once.

A regulariser is a function of the prompt matrix ``P`` (n x d, see
:func:`hf_tsprompt.prompt_matrix`) and keyword parameters, registered by name together with
its parameters (:class:`~hf_tsprompt.hyperparams.Param`: name, default, paper symbol, help,
constraint). The trainer adds ``lambda_ts * L_reg`` to the cross-entropy (``ts_weight``,
:data:`WEIGHT`); everything else reads the registry instead of repeating names:
``TopologicalPromptConfig.ts_regularizer`` and the recipe's ``ts.regularizer`` accept the
registered names, the trainer dispatches through :func:`get_regularizer` (resolved once per
trainer), the ``ts_*`` fields and the recipe's ``ts:`` section are built from the
declarations by one builder (:func:`with_ts_fields`) and checked by one validator
(:func:`check_ts_settings`, one wording in either spelling), and the model card's setup
table reads them too.

Built-ins (Table III): ``tsloss`` (the paper, Eq. 6, :func:`hf_tsprompt.losses.ts_loss`,
parameters :data:`~hf_tsprompt.hyperparams.TSLOSS_PARAMS`; logs ``ts_h0``, ``ts_h1``,
``ts_delta``, ``ts_zeta``), ``l2`` (+L2-Reg), ``pdloss`` (+PDLoss) and ``none`` (plain
cross-entropy: nothing is added or logged).

**Adding one** (no library edit)::

    from hf_tsprompt import Param, register_regularizer

    @register_regularizer(
        "norm_spread",
        params=[Param("gamma", 1.0, "Target row norm.", symbol="gamma", bound="> 0")],
        help="rows pulled to norm gamma",
    )
    def norm_spread(P, *, gamma):
        norms = P.float().norm(dim=1)
        return ((norms - gamma) ** 2).mean(), {"norm_mean": norms.mean()}

then select it in a recipe (its parameters go under ``ts.params``)::

    ts: {regularizer: norm_spread, weight: 0.5, params: {gamma: 0.3}}

or in Python with ``TopologicalPromptConfig(..., ts_regularizer="norm_spread",
ts_params={"gamma": 0.3})``. The function receives every declared parameter as a keyword
(defaults filled in, values checked) and returns the unweighted loss (a 0-d tensor with its
graph), or ``(loss, parts)`` where ``parts`` maps extra names to numbers the trainer logs
beside ``loss_ts``. Register before the recipe is loaded or the config is built; under
``torchrun`` / ``accelerate launch`` every process runs the registering code, as it runs the
rest of the script.

Only the built-ins' parameters have config fields of their own (``ts_tau``, ``ts.tau``:
:data:`FIELD_PARAMS`); a registered regulariser may reuse one of those declarations (then
that field feeds it) but may not declare another parameter under the same name.

This module holds no torch code: the recipe checker and the card writer read it, and the
built-ins import :mod:`hf_tsprompt.losses` (torch) only when called.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .hyperparams import TSLOSS_PARAMS, Param

__all__ = [
    "DEFAULT_REGULARIZER",
    "FIELD_PARAMS",
    "RESERVED_NAMES",
    "WEIGHT",
    "Param",
    "Regularizer",
    "check_ts_settings",
    "get_regularizer",
    "list_regularizers",
    "register_regularizer",
    "unregister_regularizer",
    "with_ts_fields",
]

#: The regulariser of a config or recipe that names none.
DEFAULT_REGULARIZER = "tsloss"
#: lambda_ts, the weight every regulariser is added with (``ts_weight``, ``ts.weight``).
WEIGHT = Param(
    "weight",
    1.0,
    "Weight of the regulariser: L = L_ce + ts_weight * L_reg.",
    symbol="lambda_ts",
    bound=">= 0",
)
#: Keys of the ``ts`` section / ``ts_*`` fields that are not a regulariser's parameter.
RESERVED_NAMES: tuple[str, ...] = ("regularizer", "weight", "params", "adapter")


@dataclass(frozen=True)
class Regularizer:
    """One registered regulariser.

    Attributes:
        name: the registry key (``ts_regularizer``, the recipe's ``ts.regularizer``).
        fn: ``fn(P, **params) -> loss`` or ``(loss, parts)``; None for ``none`` (nothing
            is added to the cross-entropy).
        params: its parameters, in the order they are listed.
        help: a few words for ``--help`` (``the paper, Eq. 6``).
    """

    name: str
    fn: Callable[..., Any] | None
    params: tuple[Param, ...] = ()
    help: str = ""

    @property
    def active(self) -> bool:
        """Whether it adds anything to the loss (False only for ``none``)."""
        return self.fn is not None

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        """The declaration of parameter ``name``.

        Raises:
            ConfigError: it has no such parameter (the message lists its parameters).
        """
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(self._unknown(name))

    def _unknown(self, name: str, where: str | None = None) -> str:
        names = [p.name for p in self.params]
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = f"its parameters: {', '.join(names)}" if names else "it has no parameters"
        label = where if where else repr(name)
        return f"unknown parameter {label} of regulariser {self.name!r} ({listed}).{hint}"

    def resolve(
        self, values: Mapping[str, Any] | None = None, *, where: Callable[[str], str] | None = None
    ) -> dict[str, Any]:
        """Every parameter's value: ``values`` checked against the declarations, defaults
        for the rest. ``where(name)`` names a parameter in messages (``ts.params.gamma``).

        Raises:
            ConfigError: an unknown parameter, or a value of the wrong type or out of range.
        """
        given = dict(values or {})
        known = {p.name for p in self.params}
        for key in given:
            if key not in known:
                raise ConfigError(self._unknown(key, where(key) if where else None))
        return {
            p.name: p.check(given[p.name], where=where(p.name) if where else None)
            if p.name in given
            else p.default
            for p in self.params
        }

    def __call__(self, P: Any, **params: Any) -> tuple[Any, dict[str, float]]:
        """``(L_reg, parts)`` on prompt ``P``: the unweighted loss (0-d tensor with graph)
        and the extra numbers to log. ``params`` are checked and completed by :meth:`resolve`.
        """
        return self.compute(P, self.resolve(params))

    def compute(self, P: Any, values: Mapping[str, Any]) -> tuple[Any, dict[str, float]]:
        """As calling it, with ``values`` already resolved (:meth:`resolve`): the trainer
        resolves once and calls this at every step."""
        if self.fn is None:
            return P.new_zeros(()).float(), {}
        out = self.fn(P, **values)
        loss, parts = out if isinstance(out, tuple) else (out, {})
        if getattr(loss, "dim", lambda: -1)() != 0:
            raise ConfigError(
                f"regulariser {self.name!r} returned {type(loss).__name__} "
                f"{tuple(getattr(loss, 'shape', ()))}; it must return a 0-d tensor (or "
                "(loss, parts))."
            )
        return loss, {str(k): _number(v) for k, v in dict(parts).items()}


def _number(value: Any) -> float:
    """A logged part as a float (a tensor is detached first: it is only logged)."""
    detach = getattr(value, "detach", None)
    return float(detach() if callable(detach) else value)


_REGISTRY: dict[str, Regularizer] = {}
_BUILTIN: set[str] = set()


def _field_params() -> dict[str, Param]:
    return {p.name: p for name, reg in _REGISTRY.items() if name in _BUILTIN for p in reg.params}


def _add(reg: Regularizer, *, replace: bool = False) -> Regularizer:
    name = reg.name
    if not (isinstance(name, str) and name.isidentifier()):
        raise ConfigError(
            f"a regulariser name is an identifier (it goes into recipes and --set), got {name!r}."
        )
    if name in _REGISTRY and (not replace or name in _BUILTIN):
        raise ConfigError(
            f"regulariser {name!r} is already registered"
            + (" (a built-in)" if name in _BUILTIN else "")
            + "; choose another name"
            + ("." if name in _BUILTIN else ", or pass replace=True to redefine it.")
        )
    if reg.fn is not None and not callable(reg.fn):
        raise ConfigError(f"regulariser {name!r}: fn must be callable, got {reg.fn!r}.")
    params = tuple(reg.params)
    seen: set[str] = set()
    fields = _field_params()
    for p in params:
        if not isinstance(p, Param):
            raise ConfigError(
                f"regulariser {name!r}: params must be hf_tsprompt.Param declarations, got {p!r}."
            )
        if p.name in seen:
            raise ConfigError(f"regulariser {name!r} declares parameter {p.name!r} twice.")
        seen.add(p.name)
        if p.name in RESERVED_NAMES:
            raise ConfigError(
                f"regulariser {name!r}: parameter name {p.name!r} is taken by ts.{p.name}; "
                "rename it."
            )
        if p.name in fields and fields[p.name] != p:
            raise ConfigError(
                f"regulariser {name!r}: parameter {p.name!r} would shadow the built-in field "
                f"ts_{p.name} (a different declaration); rename it, or reuse the built-in one "
                f"(get_regularizer('tsloss').param({p.name!r}))."
            )
    if reg.fn is not None:
        try:
            inspect.signature(reg.fn).bind(None, **{p.name: p.default for p in params})
        except TypeError as err:
            wanted = ", ".join(["P", *(f"{p.name}=" for p in params)]) or "P"
            raise ConfigError(
                f"regulariser {name!r}: {getattr(reg.fn, '__name__', reg.fn)} cannot be called "
                f"as fn({wanted}) ({err}); make it accept the prompt matrix and every declared "
                "parameter as keywords."
            ) from None
    reg = Regularizer(name=name, fn=reg.fn, params=params, help=reg.help)
    _REGISTRY[name] = reg
    return reg


def register_regularizer(
    name: str,
    fn: Callable[..., Any] | None = None,
    *,
    params: Iterable[Param] = (),
    help: str = "",
    replace: bool = False,
) -> Any:
    """Register regulariser ``fn`` under ``name`` with its declared ``params``.

    Use as a decorator (``@register_regularizer("mine", params=[...])``, returns the function
    unchanged) or call with ``fn`` (returns the :class:`Regularizer`). See the module
    docstring for the function's contract.

    Raises:
        ConfigError: ``name`` is taken (``replace=True`` redefines a registered one, never a
            built-in) or not an identifier, a parameter is declared twice, uses a reserved
            name (:data:`RESERVED_NAMES`) or shadows a built-in field with another
            declaration, or ``fn`` cannot be called as ``fn(P, **params)``.
    """
    params = tuple(params)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        _add(Regularizer(name, func, params, help), replace=replace)
        return func

    if fn is not None:
        return _add(Regularizer(name, fn, params, help), replace=replace)
    return decorate


def unregister_regularizer(name: str) -> None:
    """Remove a registered regulariser (built-ins stay).

    Raises:
        ConfigError: ``name`` is a built-in or is not registered.
    """
    if name in _BUILTIN:
        raise ConfigError(f"regulariser {name!r} is a built-in; it cannot be removed.")
    get_regularizer(name)
    del _REGISTRY[name]


def get_regularizer(name: str) -> Regularizer:
    """The regulariser registered as ``name``.

    Raises:
        ConfigError: no such regulariser (the message lists the registered names).
    """
    reg = _REGISTRY.get(name) if isinstance(name, str) else None
    if reg is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"regulariser {name!r} is unknown; choose one of {', '.join(_REGISTRY)}, or "
            f"register it with hf_tsprompt.register_regularizer (for the hf-tsprompt command, "
            f"in a module it imports: hf-tsprompt --plugin MODULE ...).{hint}"
        )
    return reg


def list_regularizers() -> tuple[str, ...]:
    """The registered names, built-ins first, in registration order."""
    return tuple(_REGISTRY)


# --- built-ins (losses imports torch: imported when a loss is computed, not at import) --------


def _tsloss(P: Any, **params: Any) -> tuple[Any, dict[str, float]]:
    from .losses import ts_loss

    out = ts_loss(P, **params)
    parts = out.detached()
    return out.total, {f"ts_{k}": parts[k] for k in ("h0", "h1", "delta", "zeta")}


def _l2(P: Any) -> Any:
    from .losses import l2_loss

    return l2_loss(P)


def _pdloss(P: Any) -> Any:
    from .losses import pairwise_distance_loss

    return pairwise_distance_loss(P)


for _reg in (
    Regularizer("tsloss", _tsloss, TSLOSS_PARAMS, "the paper, Eq. 6"),
    Regularizer("l2", _l2, (), "+L2-Reg baseline"),
    Regularizer("pdloss", _pdloss, (), "+PDLoss baseline"),
    Regularizer("none", None, (), "plain cross-entropy"),
):
    _add(_reg)
    _BUILTIN.add(_reg.name)
del _reg

#: The parameters with a config field of their own (``ts_<name>``, recipe ``ts.<name>``):
#: the built-ins', in their declared order.
FIELD_PARAMS: tuple[Param, ...] = tuple(_field_params().values())


# --- the ts settings: one builder for both spellings, one validator ---------------------------


def _regularizer_help() -> str:
    """``Regulariser on the soft prompt: 'tsloss' (the paper, Eq. 6), ... or 'none' (...)``."""
    items = []
    for name in list_regularizers():
        about = get_regularizer(name).help
        items.append(f"'{name}' ({about})" if about else f"'{name}'")
    listed = ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]
    return f"Regulariser on the soft prompt: {listed}."


def with_ts_fields(prefix: str, params: tuple[Any, Any], extra: Iterable[Any] = ()) -> Any:
    """A class decorator making the class a dataclass of the ts settings, spelled
    ``<prefix><name>``: ``regularizer``, ``weight`` (:data:`WEIGHT`), one field per
    :data:`FIELD_PARAMS` entry (type, default and ``[symbol] help`` from its declaration),
    ``params`` (``(type, dataclasses.field)``) and ``extra`` fields ``(name, type, field)``.

    The recipe's ``ts:`` section (prefix ``""``) and the trainer's ``ts_*`` fields (prefix
    ``"ts_"``) are both built here, so they cannot drift apart.
    """

    def declared(p: Param) -> tuple[str, type, Any]:
        return prefix + p.name, p.type, field(default=p.default, metadata={"help": p.description})

    help_ = {"help": _regularizer_help()}
    specs = [
        (prefix + "regularizer", str, field(default=DEFAULT_REGULARIZER, metadata=help_)),
        declared(WEIGHT),
        *(declared(p) for p in FIELD_PARAMS),
        (prefix + "params", *params),
        *extra,
    ]

    def build(cls: type) -> type:
        cls.__annotations__ = {name: tp for name, tp, _ in specs}
        for name, _, spec in specs:
            setattr(cls, name, spec)
        return dataclass(cls)

    return build


def check_ts_settings(
    regularizer: Any,
    values: Mapping[str, Any],
    params: Any,
    *,
    key: Callable[[str], str],
    param_key: Callable[[str], str],
) -> dict[str, Any]:
    """Check the ts settings and return the chosen regulariser's parameter values (declared
    defaults filled in): the one validator of the ``ts:`` section and the ``ts_*`` fields.

    ``values``: ``weight`` and the :data:`FIELD_PARAMS` values; ``params``: the mapping of
    the chosen regulariser's other parameters. ``key(name)`` / ``param_key(name)`` spell a
    setting / a ``params`` entry in messages (``ts.tau`` or ``ts_tau``; ``ts.params.gamma`` or
    ``ts_params['gamma']``). The registry is read now, so regularisers registered after
    import count.

    Raises:
        ConfigError: naming the first bad setting, with the same wording for both spellings.
    """
    names = list_regularizers()
    if regularizer not in names:
        close = difflib.get_close_matches(str(regularizer), names, n=1)
        raise ConfigError(
            f"{key('regularizer')}={regularizer!r} is not a registered regulariser; choose one "
            f"of {', '.join(names)}, or register it first with "
            "hf_tsprompt.register_regularizer (for the hf-tsprompt command, in a module it "
            "imports: hf-tsprompt --plugin MODULE)."
            + (f" Did you mean {close[0]!r}?" if close else "")
        )
    for p in (WEIGHT, *FIELD_PARAMS):
        p.check(values[p.name], where=key(p.name))
    extra = {} if params is None else params
    if not isinstance(extra, Mapping):
        raise ConfigError(
            f"{key('params')} must be a mapping of parameter name -> value, got {extra!r}."
        )
    fields = {p.name for p in FIELD_PARAMS}
    for name in extra:
        if name in fields:
            raise ConfigError(
                f"{param_key(name)}: {name} has a setting of its own; set {key(name)} instead."
            )
    reg = get_regularizer(regularizer)
    given = {p.name: values[p.name] for p in reg.params if p.name in fields}
    given.update(extra)
    return reg.resolve(given, where=lambda k: key(k) if k in fields else param_key(k))
