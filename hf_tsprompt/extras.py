"""Optional extras: what each one adds, the modules it needs, and the error that names it.

``pip install hf-tsprompt`` installs the core: the loss, the trainer, the callback, topology,
the card and the pipeline (everything a peft user needs to train and publish). The rest is
optional and lives in its own subpackage, so the tree shows what is core:

- ``[viz]`` (:mod:`hf_tsprompt.viz`): the figures and the HTML report (matplotlib,
  scikit-learn for the PCA / t-SNE panels).
- ``[embedded]`` (:mod:`hf_tsprompt.embedded`): the offline models that install from PyPI as
  GGUF files (``gguf`` converts them once into a cache folder).
- :mod:`hf_tsprompt.paper` (the paper's ACT and DPC baselines) needs nothing beyond the core,
  so it has no extra: a subpackage, not an install option.

:data:`EXTRAS` is the one table of them; ``tests/test_packaging.py`` checks that pyproject's
``[project.optional-dependencies]`` declares the same extras with the same packages.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from .errors import MissingDependencyError

__all__ = ["EXTRAS", "Extra", "missing_modules", "require_extra"]


@dataclass(frozen=True)
class Extra:
    """One optional extra.

    Attributes:
        modules: top-level import names it needs (``sklearn``, not ``scikit-learn``).
        requirements: what pyproject's extra lists, the distribution names pip installs.
        purpose: what it adds, for the error message ("draw figures").
    """

    modules: tuple[str, ...]
    requirements: tuple[str, ...]
    purpose: str


EXTRAS: dict[str, Extra] = {
    "viz": Extra(
        modules=("matplotlib", "sklearn", "threadpoolctl"),
        requirements=("matplotlib", "scikit-learn", "threadpoolctl"),
        purpose="figures and the HTML report",
    ),
    "embedded": Extra(
        modules=("gguf",),
        requirements=("gguf",),
        purpose="the embedded offline models (GGUF files installed from PyPI)",
    ),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when it is installed)."""
    out = []
    for module in EXTRAS[extra].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            found = False
        if not found:
            out.append(module)
    return out


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra if any of its modules is missing.

    ``what`` says what needed it ("hf-tsprompt plot", "hf_tsprompt.viz").
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(sorted(EXTRAS))}")
    missing = missing_modules(extra)
    if missing:
        raise MissingDependencyError(
            f"{what} needs the [{extra}] extra ({EXTRAS[extra].purpose}); "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. "
            f"Install it with: pip install 'hf-tsprompt[{extra}]'"
        )
