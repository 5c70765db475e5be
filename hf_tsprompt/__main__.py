"""``python -m hf_tsprompt`` (what ``accelerate launch -m hf_tsprompt`` runs)."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
