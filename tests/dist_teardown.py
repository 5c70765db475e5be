"""The exit deadlock of issue 17, set up on purpose; run under ``torchrun`` (not a test itself).

Usage: ``torchrun --nproc_per_node 2 tests/dist_teardown.py OUT_DIR MODE``, MODE ``release``
(:func:`hf_tsprompt.distributed.release_process_groups`) or ``reducer_last`` (the old order:
``destroy_process_group()``, then the DDP Reducer frees the group).

The race is made certain instead of likely: a DDP ``Reducer`` co-owns the gloo group; rank 0
starts an ``all_gather`` whose output tensor Python drops at once (so the gloo worker that
finishes it must take the GIL to free it); rank 1 joins that collective ``DELAY`` seconds late,
so rank 0 reaches its teardown first; and a switch interval of 1000 s means a thread waiting
for the GIL gets it only when the main thread blocks with the GIL released.

``reducer_last`` then hangs every time (main thread joining the worker in ``~ProcessGroupGloo``
under ``~Reducer`` with the GIL held; worker in ``TensorImpl::decref_pyobject`` waiting for
it). ``release`` exits; each rank writes ``<out>/rank<k>.json`` with its teardown seconds (rank
0's covers the wait for rank 1: the destructor really overlapped the late collective) and the
gloo worker threads left afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hf_tsprompt.distributed import gloo_worker_threads, release_process_groups

DELAY = 3.0


def main(out: Path, mode: str) -> None:
    sys.setswitchinterval(1000.0)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    params = list(torch.nn.Linear(4, 4).parameters())
    reducer = dist.Reducer(params, [[0, 1]], [2**20], dist.group.WORLD, [False, False])
    if rank == 1:
        time.sleep(DELAY)
    gathered = torch.empty(dist.get_world_size())
    work = dist.all_gather_into_tensor(gathered, torch.full((1,), float(rank)), async_op=True)
    del gathered, work  # the worker thread now frees Python-owned tensors when it finishes
    start = time.monotonic()
    if mode == "release":
        del reducer
        released = release_process_groups()
    elif mode == "reducer_last":
        dist.destroy_process_group()
        del reducer  # ~Reducer -> ~ProcessGroupGloo -> join, GIL held: deadlock
        released = gloo_worker_threads() in (0, None)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use release or reducer_last")
    report = {
        "teardown_s": time.monotonic() - start,
        "released": released,
        "gloo_threads": gloo_worker_threads(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
