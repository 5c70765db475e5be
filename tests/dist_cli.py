"""``hf-tsprompt`` under ``torchrun`` for tests/test_distributed.py (not a test itself).

Runs the CLI's ``main`` as ``python -m hf_tsprompt`` does, then writes, per rank, its exit
code and whether a process group is still alive afterwards to ``<report>/rank<k>.json``.
Usage: ``torchrun ... tests/dist_cli.py REPORT_DIR CLI_ARGS...``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from hf_tsprompt.cli import main

if __name__ == "__main__":
    code = main(sys.argv[2:])
    report = Path(sys.argv[1]) / f"rank{os.environ['RANK']}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"code": code, "group_alive": dist.is_initialized()}))
    sys.exit(code)
