"""Figures and the HTML report of finished runs: the ``[viz]`` extra.

- :mod:`~hf_tsprompt.viz.plots`: the paper's figures of one run, and overlays of several.
- :mod:`~hf_tsprompt.viz.report`: one self-contained HTML report of one or more runs.

Both read a run folder and need matplotlib and scikit-learn, which the core install leaves
out: ``pip install 'hf-tsprompt[viz]'``. Importing this package without them raises
:class:`~hf_tsprompt.errors.MissingDependencyError` naming the extra, before any of
matplotlib's own import errors.
"""

from __future__ import annotations

from ..extras import require_extra

require_extra("viz", "hf_tsprompt.viz (figures and the HTML report)")

__all__: list[str] = []
