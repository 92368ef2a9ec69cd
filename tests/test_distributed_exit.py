"""Importing varjepa destroys a live process group at exit, before interpreter finalisation (a gloo
group left to finalisation aborts the process now and then: varjepa.distributed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    import torch.distributed as dist

    def check():  # registered first, so it runs after every handler registered later
        print("alive at exit:", dist.is_initialized(), flush=True)

    atexit.register(check)
    sys.path.insert(0, sys.argv[1])
    import varjepa  # noqa: F401  (registers the clean-up)

    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
    print("alive before exit:", dist.is_initialized(), flush=True)
    """
)


def test_live_group_is_destroyed_at_exit(tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SRC), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == ["alive before exit: True", "alive at exit: False"]


def test_destroy_without_group_is_a_no_op_and_registration_happens_once(monkeypatch):
    from varjepa import distributed

    assert distributed.destroy_process_group() is False
    calls = []
    monkeypatch.setattr(distributed.atexit, "register", calls.append)
    monkeypatch.setattr(distributed, "_registered", False)
    distributed.destroy_process_group_at_exit()
    distributed.destroy_process_group_at_exit()
    assert calls == [distributed.destroy_process_group]
