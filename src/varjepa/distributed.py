"""Process-group clean-up at interpreter exit.

Lightning destroys the default process group at exit only for NCCL. A gloo (CPU) process that
exits with its group alive tears the group down during interpreter finalisation, when gloo's
worker threads may still hold work objects with Python references; now and then that aborts the
process ("terminate called without an active exception", SIGABRT) after training has finished,
and a launcher such as torchrun then reports the whole run as failed. Importing varjepa registers
:func:`destroy_process_group` to run at exit, while the interpreter is still whole.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist

_registered = False


def destroy_process_group() -> bool:
    """Destroy the default process group if one is alive; returns whether it did."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def destroy_process_group_at_exit() -> None:
    """Register :func:`destroy_process_group` with :mod:`atexit` (once per process)."""
    global _registered
    if not _registered:
        atexit.register(destroy_process_group)
        _registered = True
