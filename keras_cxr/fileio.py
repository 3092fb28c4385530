"""Folders that appear whole or not at all.

Outputs (exports, reports, shards) are assembled in a hidden `.OUT.partial-PID` folder beside OUT
and renamed into place; leftovers of killed runs (whose PID is gone) are removed on the next run.
Standard library only, so light commands can use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list:
    """Remove `.OUT.partial-PID` / `.OUT.old-PID` folders beside `out` left by killed runs."""
    removed = []
    for cand in Path(out).parent.glob(f".{Path(out).name}.*-*"):
        kind, _, pid = cand.name[len(Path(out).name) + 2 :].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(cand, ignore_errors=True)
            removed.append(cand)
    return removed


def work_folder(out: Path) -> Path:
    """A fresh hidden `.OUT.partial-PID` folder beside `out` to assemble it in (see publish_folder)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_folder(work: Path, out: Path) -> None:
    """Move the finished folder `work` to `out` by renames only (an existing `out` is replaced and
    then deleted), so readers never see a half-written `out`."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
