"""Every write of the project goes through here: folders that appear whole or not at all, files
replaced atomically, and the rules for what an output may replace.

- Outputs (exports, reports, shards, sample folders) are assembled in a hidden `.OUT.partial-PID`
  folder beside OUT and renamed into place; leftovers of killed runs (whose PID is gone) are removed
  on the next run.
- Every folder the project makes carries a marker file (`.keras-cxr.json`, with its kind: run,
  export, classifier, shards, report, samples). `check_output` lets a command replace an existing
  folder only when that folder is marked as the same kind (or is an empty folder) and holds nothing
  but what keras-cxr writes there, never the command's own inputs or a folder above them. Folders
  written before markers existed are recognised by their exact layout.
- Single files are written to a fresh exclusive temporary name in the target folder
  (`tempfile.mkstemp`: no symlink at a predictable name is ever followed) and renamed over the target.
- `RunLock`: one writer per run folder (an advisory `flock` on `RUN/.lock`, with the PID inside;
  released by the OS when the process dies, so a lock left by a killed run is never stale).

Standard library only, so light commands can use it.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

MARKER = ".keras-cxr.json"
LOCK = ".lock"

# What keras-cxr itself writes at the top of a folder of each kind (fnmatch patterns). A folder that
# holds anything else holds a user's file, and is never replaced.
_COMMON = (MARKER, LOCK, ".*.tmp", ".*.tmp.*", "*.tmp", "*.tmp.*")
LAYOUTS = {
    "run": ("config.json", "run.json", "model.keras", "history.csv", "metrics.json", "logs", "samples",
            "checkpoints", "backup", "workers", "*.npz", "*cache*", "autoencoder"),
    "export": ("saved_model", "model.keras", "config.json", "MODEL_CARD.md", "samples_grid.png"),
    "classifier": ("saved_model", "model.keras", "config.json", "MODEL_CARD.md", "metrics.json"),
    "shards": ("manifest.json", "records.csv", "*.tfrecord", "*.tfrecord.gz", "README.md"),
    "report": ("report.md", "report.html", "metrics.json", "figures", "*.png", "*.csv", "synthetic",
               "training-sets"),
    "samples": ("sample_*.png", "*_[0-9][0-9][0-9][0-9].png", "grid.png"),
}
# the file that tells a folder written before markers existed apart from any other folder
_LEGACY_SIGNATURE = {
    "run": ("config.json",),
    "export": ("config.json", "saved_model"),
    "classifier": ("config.json", "saved_model"),
    "shards": ("manifest.json",),
    "report": ("metrics.json",),
    "samples": ("grid.png",),
}


def _user_error(message):
    from keras_cxr.errors import UserError

    return UserError(message)


# ------------------------------------------------------------------------------- markers
def write_marker(folder, kind: str) -> None:
    if kind not in LAYOUTS:
        raise ValueError(f"unknown output kind {kind!r}")
    write_text(Path(folder) / MARKER, json.dumps({"made_by": "keras-cxr", "kind": kind, "version": 1}) + "\n")


def marker_kind(folder) -> str | None:
    """The kind recorded in `folder`'s marker, or None (no marker, or one that is not ours)."""
    path = Path(folder) / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) and data.get("made_by") == "keras-cxr" else None
    return kind if kind in LAYOUTS else None


def foreign_entries(folder, kind: str) -> list:
    """Top-level entries of `folder` that keras-cxr does not write in a folder of `kind`."""
    patterns = LAYOUTS[kind] + _COMMON
    return sorted(p.name for p in Path(folder).iterdir() if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns))


def owned_kind(folder, expected: str | None = None) -> str | None:
    """The kind of project output `folder` is: its marker, or (for folders written before markers
    existed) a layout that matches a kind's signature and holds nothing foreign (`expected` first:
    an old classifier export also looks like a generator export)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return None
    kind = marker_kind(folder)
    if kind is not None:
        return kind
    order = ([expected] if expected in _LEGACY_SIGNATURE else []) + list(_LEGACY_SIGNATURE)
    for kind in order:
        signature = _LEGACY_SIGNATURE[kind]
        if all((folder / s).exists() for s in signature) and not foreign_entries(folder, kind):
            return kind
    return None


def is_project_output(folder) -> bool:
    """True for a folder the project wrote whose images are generated, not real (anything but shards)."""
    kind = marker_kind(folder)
    return kind is not None and kind != "shards"


# ------------------------------------------------------------------------------- output checks
def _overlaps(out: Path, inp: Path) -> bool:
    """`out` is `inp` or a folder above it (replacing `out` would delete `inp`)."""
    return out == inp or out in inp.parents


def check_output(out, kind: str, *, overwrite: bool = True, inputs=(), flag: str = "--out",
                 overwrite_flag: str | None = "--overwrite") -> Path:
    """Validate an output location before any long work; returns it as an absolute path.

    `overwrite`: whether an existing output of the same kind may be replaced (commands without an
    --overwrite option pass True: a report folder is regenerated, as `make compare` does).
    `inputs`: paths the command reads (the model evaluated, the data, the run exported): `out` may
    be none of them, nor a folder above any of them. Raises a one-line UserError.
    """
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    if out == Path(out.anchor) or out == Path.home().resolve():
        raise _user_error(f"{flag} {out}: refusing to write over the root or home folder; choose a new folder")
    real_out = Path(os.path.realpath(out))
    for inp in inputs:
        if inp is None:
            continue
        real_in = Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(inp)))))
        if _overlaps(real_out, real_in):
            raise _user_error(f"{flag} {out} is or contains the input {inp}; an output never replaces what "
                              "the command reads: choose another folder")
    if out.is_symlink():
        raise _user_error(f"{flag} {out} is a symbolic link; keras-cxr does not replace links: choose a new folder")
    if out.exists():
        if not out.is_dir():
            raise _user_error(f"{flag} {out} exists and is not a folder; choose a new folder")
        entries = [e for e in out.iterdir() if e.name != LOCK]  # a lock file alone: an empty run folder
        if entries:
            found = owned_kind(out, kind)
            if found != kind:
                what = f"a keras-cxr {found} folder" if found else "not a folder keras-cxr made"
                raise _user_error(f"{flag} {out} already exists and is {what} (expected a {kind} folder); "
                                  "keras-cxr only replaces its own outputs of the same kind: choose a new folder")
            foreign = foreign_entries(out, kind)
            if foreign:
                raise _user_error(f"{flag} {out} holds {foreign[0]!r}, which keras-cxr did not write; it is never "
                                  "deleted: move it away or choose a new folder")
            if not overwrite:
                hint = f"pass {overwrite_flag} to replace it" if overwrite_flag else "choose a new folder"
                raise _user_error(f"{flag} {out} already exists; {hint}")
    _check_writable(out.parent, flag, out)
    return out


def _check_writable(parent: Path, flag: str, out: Path) -> None:
    """Create `parent` (and above) and prove a file can be made there, before any long work."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent, prefix=".keras-cxr-probe-"):
            pass
    except OSError as exc:
        raise _user_error(f"{flag} {out}: cannot write in {parent} ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------- whole folders
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a real folder tree."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def clean_stale(out: Path) -> list:
    """Remove `.OUT.partial-PID` / `.OUT.old-PID` folders beside `out` left by killed runs."""
    removed = []
    out = Path(out)
    for cand in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = cand.name[len(out.name) + 2 :].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            _remove(cand)
            removed.append(cand)
    return removed


def work_folder(out: Path) -> Path:
    """A fresh hidden `.OUT.partial-PID` folder beside `out` to assemble it in (see publish_folder).
    Whatever sits at that name (a leftover, a planted link) is removed, never followed."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove(tmp)
    os.mkdir(tmp, 0o755)  # fails rather than reuse anything that raced in
    return tmp


def publish_folder(work: Path, out: Path, kind: str | None = None) -> None:
    """Move the finished folder `work` to `out` by renames only, so readers never see a half-written
    `out`. With `kind`, `work` is marked as that kind first, and an existing `out` is replaced only
    if it is still one of ours of that kind holding nothing foreign (checked again at this moment)."""
    out = Path(os.path.abspath(out))
    if kind is not None:
        write_marker(work, kind)
    old = None
    if out.exists() or out.is_symlink():
        if kind is not None:
            if out.is_symlink() or not out.is_dir():
                raise _user_error(f"{out} changed while this command ran (now not a folder); nothing was replaced")
            if any(out.iterdir()) and (owned_kind(out, kind) != kind or foreign_entries(out, kind)):
                raise _user_error(f"{out} changed while this command ran (it now holds files keras-cxr did not "
                                  "write); nothing was replaced")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        _remove(old)
        out.rename(old)
    work.rename(out)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def publishing(out, kind: str, action: str | None = None):
    """`with publishing(out, "report") as work: ...write into work...`: `out` appears whole on
    success (marked as `kind`); on any error the work folder is removed and `out` is untouched.
    With `action` (e.g. "export"), an OSError (a full disk, ...) becomes the one-line UserError
    "ACTION to OUT failed, nothing was changed there: REASON"."""
    out = Path(os.path.abspath(out))
    work = work_folder(out)
    try:
        yield work
        publish_folder(work, out, kind)
    except OSError as exc:
        _remove(work)
        if action is None:
            raise
        raise _user_error(f"{action} to {out} failed, nothing was changed there: {exc.strerror or exc}"
                        f"{f' ({exc.filename})' if exc.filename else ''}") from None
    except BaseException:
        _remove(work)
        raise


# ------------------------------------------------------------------------------- single files
@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a fresh temporary path beside `path` (created exclusively, so nothing planted there is
    followed) for a writer that takes a file name (PIL, Keras, numpy); renamed over `path` when the
    block ends without error, removed otherwise. `suffix` defaults to `path`'s own (Keras and numpy
    insist on theirs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (exclusive temporary file + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, data, **kwargs) -> Path:
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **kwargs))


# ------------------------------------------------------------------------------- full disk
def is_disk_full(exc: BaseException) -> bool:
    """True for an ENOSPC / EDQUOT error, also when TensorFlow or h5py wraps it in its own type."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


# ------------------------------------------------------------------------------- run locks
class RunLock:
    """An exclusive advisory lock on a run folder: `with RunLock(run_dir): train...`.

    A second process that tries to take it fails at once with a one-line UserError naming the PID
    holding it. The OS drops the lock when its process ends, however it ends, so a lock file left
    behind is never stale. The holder removes the file on release; a taker that locked a file which
    was removed meanwhile (its inode no longer at the path) tries again."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(20):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise _user_error(f"cannot lock run folder {self.folder} ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = ""
                with contextlib.suppress(OSError, ValueError, IndexError):
                    holder = os.pread(fd, 64, 0).decode().split()[0]
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    who = f"process {holder}" if holder else "another process"
                    raise _user_error(f"run folder {self.folder} is in use by {who} (another `keras-cxr train`); "
                                      "wait for it to finish or choose another --run-dir") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except OSError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return self
            os.close(fd)  # the holder removed that file while we waited: take the new one
        raise _user_error(f"cannot lock run folder {self.folder}: the lock file keeps changing")

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.unlink(self.path)  # before unlocking: a waiting taker then sees a new inode
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


# ------------------------------------------------------------------------------- reading back
def read_json_file(path, what: str | None = None, *, expect=dict, max_bytes: int = 64 * 1024**2):
    """JSON the project wrote (config.json, run.json, manifest.json), read with a one-line DataError
    naming the file when it is missing, unreadable, truncated, not JSON or not a `expect`."""
    from keras_cxr.errors import DataError

    path = Path(path)
    what = what or path.name
    try:
        if path.stat().st_size > max_bytes:
            raise DataError(f"{path}: {what} is larger than {max_bytes // 1024**2} MB; not a file keras-cxr wrote")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: {what} is damaged (not UTF-8 text)") from None
    except ValueError as exc:
        raise DataError(f"{path}: {what} is damaged or truncated (not valid JSON: {exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    if expect is not None and not isinstance(data, expect):
        raise DataError(f"{path}: {what} is damaged (expected a JSON {expect.__name__}, got {type(data).__name__})")
    return data


def confined(folder, relative, what: str = "path") -> Path:
    """`folder / relative` for a path read from a file inside `folder` (a manifest, records.csv):
    a DataError if it is absolute or leads outside `folder` (`../../etc/passwd`), links included."""
    from keras_cxr.errors import DataError

    folder = Path(folder)
    rel = str(relative)
    if not rel or os.path.isabs(rel) or "\x00" in rel:
        raise DataError(f"{folder}: {what} {rel!r} must be a relative path inside the folder")
    base = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(base / rel))
    if target != base and base not in target.parents:
        raise DataError(f"{folder}: {what} {rel!r} points outside the folder; refusing to open it")
    return folder / rel
