"""The paper's inference-time baselines, compared with TSLoss in its Table IV.

- :mod:`~hf_tsprompt.paper.attention`: one registered attention function that both edit.
- :mod:`~hf_tsprompt.paper.calibration`: ACT (attention calibration: sink heads and beta).
- :mod:`~hf_tsprompt.paper.dpc`: DPC (dynamic prompt corruption).

They need nothing beyond the core install; they live here so that the core (training, the
loss, the callback, topology, the card) reads on its own. ``recipe.evaluation.calibration``
and ``recipe.evaluation.dpc`` (and ``hf-tsprompt evaluate --calibration/--dpc``) use them.
"""

from __future__ import annotations

__all__: list[str] = []
