"""Ending a multi-process job so that every process exits: :func:`release_process_groups`.

The deadlock this avoids (seen with 2 gloo CPU processes under ``torchrun``, torch 2.13; the
class of bug is pytorch/pytorch#56297, "destructors of pybind11-bound classes that can block
can deadlock", still open):

- A gloo process group owns worker threads (``pt_gloo_runloop``). Its C++ destructor joins
  them. A worker that finishes a collective then destroys the work item; when the work held
  tensors created in Python (an ``all_gather`` output, say), freeing them decrefs their Python
  objects, which needs the GIL.
- ``DistributedDataParallel``'s C++ ``Reducer`` holds the group too. Its Python binding frees
  it *with the GIL held*, so when the Reducer is the group's last owner, the main thread joins
  the workers while holding the GIL that a worker is waiting for: a hang. ``torch.distributed.
  destroy_process_group()`` does not help, as it only drops the registry's references; the
  Reducer frees the group later (when the trainer is garbage-collected or at exit). Stacks:
  main ``~Reducer -> ~ProcessGroupGloo -> std::thread::join``; worker ``runLoop ->
  ~AsyncBarrierWork -> ~AsyncAllgatherWork -> TensorImpl::decref_pyobject -> take_gil``.
- The Python ``ProcessGroup`` object, by contrast, releases the GIL in its destructor
  (pytorch/pytorch#56381, #154976), so a worker can take the GIL and the join returns.

So the fix is an order, not a delay: hold a Python reference to every group, let every
DDP ``Reducer`` go while those references keep the groups alive (then freeing a Reducer only
drops a count), destroy the groups, and drop the Python references last. A group that is still
alive when the interpreter finalises is a second failure (SIGABRT, ``terminate called without an
active exception``: pytorch/pytorch#179291), which this also prevents.

One more owner hides in torch itself: ``torch.distributed.nn.functional`` declares ``group=
group.WORLD`` defaults, evaluated when it is first imported (``torch._dynamo`` imports it, e.g.
when DDP is built), so a default group that existed then stays pinned by ten function defaults
for the life of the process. :func:`release_process_groups` resets those defaults to ``None``
(the current default group, which is what they meant) for the groups it destroys.

Checked two ways: ``tests/dist_teardown.py`` sets the race up so that the old order hangs every
time (``test_distributed.py`` runs it in this order, which exits); ``tests/stress_dist_exit.py``
runs the real 2-process training job many times on busy cores (figures in its docstring).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

__all__ = ["GLOO_WORKER_THREAD", "gloo_worker_threads", "release_process_groups"]

GLOO_WORKER_THREAD = "pt_gloo_runloop"
"""The thread name torch gives each gloo process group's worker threads."""


def gloo_worker_threads() -> int | None:
    """How many gloo worker threads this process has alive (0 once every gloo group is gone).

    Read from ``/proc/self/task/*/comm``; ``None`` where that does not exist (not Linux).
    Each worker names itself once it is scheduled, so right after ``init_process_group`` the
    count can lag behind (0 on busy cores); once a group is destroyed its workers are joined,
    so a count taken after :func:`release_process_groups` does not lag.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    count = 0
    for task in tasks.iterdir():
        try:
            count += (task / "comm").read_text().strip() == GLOO_WORKER_THREAD
        except OSError:  # the thread ended while we looked
            continue
    return count


def _unpin_default_arguments(groups: list) -> None:
    """Replace ``groups`` among ``torch.distributed.nn.functional``'s argument defaults by None."""

    module = sys.modules.get("torch.distributed.nn.functional")
    for function in vars(module).values() if module else ():
        defaults = getattr(function, "__defaults__", None)
        if isinstance(defaults, tuple) and any(d is g for d in defaults for g in groups):
            function.__defaults__ = tuple(
                None if any(d is g for g in groups) else d for d in defaults
            )


def release_process_groups() -> bool:
    """Destroy every ``torch.distributed`` process group in an order that cannot deadlock.

    Call it at the end of a distributed job, on every rank, once the job's collectives are done
    and after dropping every reference to the trainer / DDP model: a DDP wrapper that is still
    reachable keeps its Reducer, which then frees the group later, with the GIL held. A no-op
    without a group.

    Returns ``False`` when gloo worker threads are still alive afterwards, i.e. something still
    owns a group (typically a trainer the caller kept); ``True`` otherwise (including where
    threads cannot be counted).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    from torch.distributed import distributed_c10d

    # Python references keep every group alive until the end of this function.
    groups = [dist.group.WORLD, *getattr(distributed_c10d._world, "pg_map", {})]
    gc.collect()  # trainers / DDP wrappers nobody can reach: their Reducers go now, harmlessly
    dist.destroy_process_group()
    _unpin_default_arguments(groups)
    # The last references go through ProcessGroup's deallocator, which releases the GIL while
    # the C++ destructor joins the gloo workers.
    groups.clear()
    return gloo_worker_threads() in (0, None)
