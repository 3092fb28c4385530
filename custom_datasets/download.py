"""Download NIH ChestX-ray14 from the official NIH Clinical Center archives (standard library only).

Three entry points, used by `keras-cxr download` and by the demo:

- `download_archives(dest)`: the 12 official `images_XX.tar.gz` archives (about 42 GB), downloaded
  to `dest/` with HTTP Range resume (`images_XX.tar.gz.part` while incomplete; a state file
  `dest/.keras-cxr/state.json` records each archive's size so complete ones are skipped), then
  extracted to `dest/images/*.png`.
- `download_sample(n, dest)` / `ensure_sample(n, dest)`: streams `images_01.tar.gz` and stops after
  its first `n` PNG members (about 0.4 MB each), caching them in `dest/images/` (default: the data
  home, `$KERAS_CXR_DATA` or `~/.keras/datasets/nih_chest_xray14`). No network when the folder
  already holds `n` images.
- `verify(dest)`: counts the extracted PNGs (and checks each one is a whole PNG) against the
  metadata CSV and the per-archive member lists.

Safety: every tar member goes through `tarfile.data_filter` (the `filter="data"` policy: no
absolute paths, no `..`, no device files) and, stricter than that, no links at all: NIH's archives
hold only regular PNG files. Each member is written to a hidden temporary name (`.NAME.png.PID.part`)
and renamed when complete, so an interrupted or killed run never leaves a half image under a `.png`
name. The gzip stream is read to its end so its CRC and length are checked.

Faults (no network, HTTP errors, a server that ignores Range, a cut connection, a truncated gzip
stream, a full disk, Ctrl-C) end in a one-line `DownloadError` / `DataError` and leave a state
that the same command resumes.

`KERAS_CXR_NIH_BASE_URL` replaces the NIH base URL. It exists for the tests (a local server on
127.0.0.1 stands in for NIH); users never need it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import http.client
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from keras_cxr.errors import DataError, UserError

NIH_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
NIH_BASE_URL = "https://nihcc.box.com/shared/static/"
BASE_URL_ENV = "KERAS_CXR_NIH_BASE_URL"  # tests only: a local server standing in for NIH

# The official batch download (NIH's batch_download_zips.py), in order.
ARCHIVES = (
    ("images_01.tar.gz", "vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz"),
    ("images_02.tar.gz", "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz"),
    ("images_03.tar.gz", "f1t00wrtdk94satdfb9olcolqx20z2jp.gz"),
    ("images_04.tar.gz", "0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz"),
    ("images_05.tar.gz", "v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz"),
    ("images_06.tar.gz", "asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz"),
    ("images_07.tar.gz", "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz"),
    ("images_08.tar.gz", "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz"),
    ("images_09.tar.gz", "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz"),
    ("images_10.tar.gz", "l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz"),
    ("images_11.tar.gz", "hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz"),
    ("images_12.tar.gz", "ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz"),
)
NUM_IMAGES = 112_120

ATTRIBUTION = f"""\
NIH ChestX-ray14, provided by the NIH Clinical Center: {NIH_PAGE}
  Please cite: Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale
  Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of
  Common Thorax Diseases. IEEE CVPR 2017, pp. 2097-2106.
  We acknowledge the NIH Clinical Center as the provider of these data."""

STATE_DIR = ".keras-cxr"
CHUNK = 1 << 18


class DownloadError(UserError):
    """A download that could not finish; the message says what was kept and how to resume."""


class DownloadInterrupted(DownloadError):
    """Ctrl-C during a download (exit code 130, like any interrupted command)."""

    exit_code = 130


class ArchiveCorrupt(DataError):
    """A gzip/tar stream that ends early or fails its checks."""


class _Transient(Exception):
    """A fault worth retrying (cut connection, timeout, HTTP 5xx)."""


# Bounds on every transfer (module constants so a caller or a test can tighten them):
STALL_WINDOW_S = 60.0  # at least STALL_MIN_BYTES must arrive in every window of this length ...
STALL_MIN_BYTES = 16 * 1024  # ... or the connection counts as stalled (retried, then reported)
DEADLINE_S = 48 * 3600.0  # one whole download (all retries) never runs longer than this
METADATA_MAX_BYTES = 256 * 10**6  # the real metadata CSV is ~8 MB


class _Watchdog:
    """Raises when a transfer stalls (a server dripping one byte every few seconds), passes its
    overall deadline, or grows past `max_bytes` (an endless response). `count(n)` after each chunk."""

    def __init__(self, label: str, *, deadline: float | None = None, max_bytes: int | None = None,
                 window: float | None = None, min_bytes: int | None = None):
        self.label, self.max_bytes = label, max_bytes
        self.deadline = deadline  # a time.monotonic() value, shared by all attempts
        self.window = STALL_WINDOW_S if window is None else window
        self.min_bytes = STALL_MIN_BYTES if min_bytes is None else min_bytes
        self.restart(0)

    def restart(self, done: int) -> None:
        self._t0, self._mark = time.monotonic(), done

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DownloadError(f"{self.label}: gave up, the download took longer than its overall limit; "
                                "run the same command again to resume")

    def count(self, done: int) -> None:
        if self.max_bytes is not None and done > self.max_bytes:
            raise _TooLarge(f"{self.label}: the server sent more than {_human(self.max_bytes)}, far more than this "
                            "file can be; stopped and removed the partial file (check the URL)")
        self.check_deadline()
        now = time.monotonic()
        if now - self._t0 >= self.window:
            if done - self._mark < self.min_bytes:
                raise _Transient(f"stalled: {done - self._mark} bytes in the last {self.window:.0f} s")
            self._t0, self._mark = now, done


class _TooLarge(DownloadError):
    """A response past its size cap (the partial file is deleted, never resumed)."""


_NET_ERRORS = (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException)


# --------------------------------------------------------------------------------------------
# small helpers


def base_url() -> str:
    url = os.environ.get(BASE_URL_ENV) or NIH_BASE_URL
    return url if url.endswith("/") else url + "/"


def archive_url(index: int) -> str:
    """URL of archive `index` (1..12)."""
    return base_url() + ARCHIVES[index - 1][1]


def print_attribution(file=None) -> None:
    print(ATTRIBUTION, file=file or sys.stdout, flush=True)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


class _Progress:
    """A tiny stderr progress bar: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, label, total=None, *, unit="B", enabled=True, start=0):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0, self.last, self.value, self.start = time.monotonic(), 0.0, start, start
        self.step = -1

    def _fmt(self, v, last=False):
        return _human(v) if self.unit == "B" else f"{int(v)}" + (f" {self.unit}" if last else "")

    def _line(self):
        rate = (self.value - self.start) / max(time.monotonic() - self.t0, 1e-6)
        speed = f"  {_human(rate)}/s" if self.unit == "B" else ""
        if self.total:
            frac = min(self.value / self.total, 1.0)
            bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
            return f"{self.label} [{bar}] {self._fmt(self.value)}/{self._fmt(self.total, True)}{speed}"
        return f"{self.label} {self._fmt(self.value, True)}{speed}"

    def update(self, value, extra=""):
        self.value = value
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last > 0.2:
                self.last = now
                sys.stderr.write("\r" + self._line() + extra + "\033[K")
                sys.stderr.flush()
        elif self.total:
            step = int(10 * min(value / self.total, 1.0))
            if step > self.step and step < 10:
                self.step = step
                _log(self._line() + extra)

    def close(self, extra=""):
        if self.enabled:
            sys.stderr.write(("\r" if self.tty else "") + self._line() + extra + ("\033[K\n" if self.tty else "\n"))
            sys.stderr.flush()


def _write(fh, data) -> None:
    """The one place bytes reach the disk (the tests patch it to simulate a full disk)."""
    view = memoryview(data)
    while view:
        n = fh.write(view)
        view = view[n:]


def _disk_error(exc: OSError, path: Path, resume: str) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = _human(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        return DownloadError(f"disk full while writing {path} ({free} free there); free some space and {resume}")
    return DownloadError(f"cannot write {path}: {exc.strerror or exc}; {resume}")


def _copy(read, fh, path: Path, done: int = 0, bar=None, watchdog=None) -> int:
    """Copy `read(CHUNK)` chunks to `fh` until b""; returns the byte count. A full disk becomes a
    one-line DownloadError naming `path`; `watchdog` bounds time, progress and size."""
    if watchdog is not None:
        watchdog.restart(done)
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return done
        try:
            _write(fh, chunk)
        except OSError as exc:
            raise _disk_error(exc, path, "run the same command again to resume") from None
        done += len(chunk)
        if watchdog is not None:
            watchdog.count(done)
        if bar is not None:
            bar.update(done)


def _with_retries(attempt, *, label: str, retries: int, retry_wait: float, kept, watchdog=None):
    """Call `attempt()`; retry `_Transient` faults with exponential waits, then raise a
    DownloadError saying what `kept()` was kept and how to resume."""
    for i in range(retries + 1):
        if watchdog is not None:
            watchdog.check_deadline()
        try:
            return attempt()
        except _Transient as exc:
            if i >= retries:
                raise DownloadError(f"{label}: {exc} (after {i + 1} attempt(s)); {kept()}"
                                    "run the same command again to resume") from None
            wait = retry_wait * 2 ** i
            _log(f"{label}: {exc}; retrying in {wait:.0f} s ({i + 1}/{retries})")
            time.sleep(wait)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _exclusive(dest: Path):
    """Hold `dest/.keras-cxr/lock` so two downloads never append to the same files (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = dest / STATE_DIR / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except OSError as exc:
        raise _disk_error(exc, path, "run the same command again") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(f"another keras-cxr download is writing to {dest}; wait for it to finish "
                                "(or stop it) and run this command again") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_json(path: Path, obj) -> None:
    from keras_cxr.fileio import write_json

    write_json(path, obj, indent=1, sort_keys=True)


def _load_state(dest: Path) -> dict:
    path = dest / STATE_DIR / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("archives", {})
    return state


def _save_state(dest: Path, state: dict) -> None:
    try:
        _atomic_json(dest / STATE_DIR / "state.json", state)
    except OSError as exc:
        raise _disk_error(exc, dest / STATE_DIR / "state.json", "run the same command again") from None


# --------------------------------------------------------------------------------------------
# HTTP


def _open(url: str, start: int = 0, timeout: float = 30.0):
    """GET `url` (from byte `start`); returns the response (a 416 answer is returned, not raised)."""
    headers = {"User-Agent": "keras-cxr (NIH ChestX-ray14 downloader)", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc
        exc.close()
        msg = f"HTTP {exc.code} {exc.reason} for {url}"
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(msg) from None
        raise DownloadError(f"{msg}; the archives may have moved, see {NIH_PAGE}") from None
    except urllib.error.URLError as exc:
        # not retried: no network, DNS failure, refused or timed-out connect (say so at once)
        reason = exc.reason
        text = "timed out" if isinstance(reason, (TimeoutError, socket.timeout)) else (
            getattr(reason, "strerror", None) or str(reason))
        raise DownloadError(
            f"cannot reach {url}: {text}; check the internet connection and run the same command again "
            "(offline: give keras-cxr images you have with --data /path/to/images)"
        ) from None
    except _NET_ERRORS as exc:
        raise _Transient(f"{type(exc).__name__} from {url}") from None


def _content_range(resp):
    """(first byte, total size or None) from a Content-Range header, or (None, None)."""
    value = resp.headers.get("Content-Range", "")
    try:
        _unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        first = None if span == "*" else int(span.split("-", 1)[0])
        return first, (None if total == "*" else int(total))
    except ValueError:
        return None, None


def _fetch_once(url: str, target: Path, part: Path, *, timeout, progress, label, on_connect, watchdog=None) -> Path:
    start = part.stat().st_size if part.is_file() else 0
    resp = _open(url, start, timeout)
    with resp:
        status = getattr(resp, "status", None) or resp.code
        if status == 416:  # nothing left after `start`: complete if the size matches
            _, total = _content_range(resp)
            if total is not None and total == start:
                os.replace(part, target)
                return target
            part.unlink(missing_ok=True)
            raise _Transient("the server refused to resume; restarting from byte 0")
        if status == 206:
            first, total = _content_range(resp)
            if first != start:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server resumed at byte {first}, not {start}; restarting from byte 0")
        else:
            if start:
                _log(f"{label}: the server ignored the resume request; restarting from byte 0")
            start = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if on_connect is not None:
            on_connect()
        if total is not None and watchdog is not None and watchdog.max_bytes is not None \
                and total > watchdog.max_bytes:
            raise _TooLarge(f"{label}: the server announces {_human(total)}, more than the {_human(watchdog.max_bytes)} "
                            "this file can be; nothing was downloaded (check the URL)")
        if total is not None:
            try:
                free = shutil.disk_usage(part.parent).free
            except OSError:
                free = None
            if free is not None and total - start > free:
                raise DownloadError(
                    f"{label} needs {_human(total - start)} more but {part.parent} has {_human(free)} free; "
                    "free some space and run the same command again to resume"
                )

        def read(n):
            try:
                return resp.read1(n)
            except _NET_ERRORS as exc:
                raise _Transient(f"connection lost ({type(exc).__name__})") from None

        bar = _Progress(label, total, enabled=progress, start=start)
        try:
            try:
                fh = open(part, "ab" if start else "wb", buffering=0)  # unbuffered: survives SIGKILL
            except OSError as exc:
                raise _disk_error(exc, part, "run the same command again to resume") from None
            with fh:
                done = _copy(read, fh, part, start, bar, watchdog)
        finally:
            bar.close()
    if total is not None and done != total:
        raise _Transient(f"connection closed after {done} of {total} bytes")
    os.replace(part, target)
    return target


def fetch(url, target, *, retries: int = 3, retry_wait: float = 1.0, timeout: float = 30.0,
          progress: bool = True, label: str | None = None, attribution: bool = False,
          max_bytes: int | None = None, deadline_s: float | None = None) -> Path:
    """Download `url` to `target`, resuming `target.part` with HTTP Range; retries cut connections.

    `attribution`: print the NIH attribution once the server answers (before any data arrives).
    `max_bytes`: a size cap (past it the partial file is deleted, never resumed). Every transfer
    is bounded: `timeout` per read, a stall rule (STALL_MIN_BYTES per STALL_WINDOW_S) and an overall
    deadline (`deadline_s`, default DEADLINE_S) across all retries.
    """
    announce = [attribution]

    def on_connect():
        if announce[0]:
            print_attribution()
            announce[0] = False

    target = Path(target)
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    label = label or target.name
    if target.is_file() and not part.exists():  # e.g. an archive the user downloaded: resume/check it
        os.replace(target, part)

    def kept():
        return f"{_human(part.stat().st_size)} kept in {part}; " if part.is_file() else ""

    watchdog = _Watchdog(label, max_bytes=max_bytes,
                         deadline=time.monotonic() + (DEADLINE_S if deadline_s is None else deadline_s))
    try:
        return _with_retries(
            lambda: _fetch_once(url, target, part, timeout=timeout, progress=progress, label=label,
                                on_connect=on_connect, watchdog=watchdog),
            label=label, retries=retries, retry_wait=retry_wait, kept=kept, watchdog=watchdog)
    except _TooLarge:
        part.unlink(missing_ok=True)  # never resumed by a rerun
        raise


# --------------------------------------------------------------------------------------------
# tar extraction


_ARCHIVE_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, tarfile.ReadError)


def _check_member(member: tarfile.TarInfo, dest: Path, label: str) -> tarfile.TarInfo:
    """The `filter="data"` policy, stricter: no links at all and no absolute names (even stripped)."""
    if member.issym() or member.islnk():
        raise DataError(f"{label}: refusing link member {member.name!r} -> {member.linkname!r} "
                        "(NIH archives hold only PNG files)")
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        # the data filter would strip the slash; an NIH archive never has one, so refuse
        raise DataError(f"{label}: refusing member with an absolute path {member.name!r}")
    try:
        member = tarfile.data_filter(member, str(dest))
    except tarfile.FilterError as exc:
        raise DataError(f"{label}: refusing unsafe member {member.name!r}: {type(exc).__name__}") from None
    if not (member.isreg() or member.isdir()):
        raise DataError(f"{label}: refusing special member {member.name!r}")
    return member


def _clean_stale(folder: Path) -> None:
    """Remove temporaries left by a killed run (never counted: hidden names, `.part` suffix)."""
    if folder.is_dir():
        for p in folder.glob(".*.part"):
            p.unlink(missing_ok=True)


def _extract_member(tar, member, target: Path, label: str) -> None:
    """Write one member under a hidden temporary name, rename it when complete."""
    resume = "run the same command again to resume"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, target.parent, resume) from None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    src = tar.extractfile(member)
    try:
        try:
            fh = open(tmp, "wb")
        except OSError as exc:
            raise _disk_error(exc, tmp, resume) from None
        with fh:
            done = _copy(src.read, fh, target)
        if done != member.size:
            raise DataError(f"{label}: member {member.name} ended after {done} of {member.size} bytes")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _extract_stream(raw, dest: Path, *, label: str, limit=None, flat_dir: Path | None = None,
                    keep_existing=False, bar=None) -> list:
    """Extract the gzip'd tar stream `raw` under `dest`; returns [(relative path, size)] of files.

    `limit`: stop after that many PNG members (the rest of the stream is never read).
    `flat_dir`: put PNG members there by base name, skip everything else (sample mode).
    `keep_existing`: do not rewrite a file that already has the member's size.
    """
    done, n_png = [], 0
    gz = gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                member = _check_member(member, dest, label)
                if member.isdir():
                    continue
                is_png = member.name.lower().endswith(".png")
                if flat_dir is not None:
                    if not is_png:
                        continue
                    target = flat_dir / Path(member.name).name
                else:
                    target = dest / member.name
                if not (keep_existing and target.is_file() and target.stat().st_size == member.size):
                    _extract_member(tar, member, target, label)
                done.append((target.relative_to(dest).as_posix(), member.size))
                n_png += is_png
                if bar is not None:
                    bar.update(n_png)
                if limit and n_png >= limit:
                    return done
        while gz.read(CHUNK):  # read to the end: the gzip trailer's CRC and length are checked
            pass
    except _ARCHIVE_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchiveCorrupt(f"{label}: truncated or corrupt gzip/tar stream after {n_png} image(s) ({msg})") from None
    return done


def extract_archive(archive, dest, *, label=None, progress=True) -> list:
    """Extract a local `images_XX.tar.gz` under `dest` (safely, atomically per file)."""
    archive, dest = Path(archive), Path(dest)
    label = label or archive.name
    _clean_stale(dest / "images")
    bar = _Progress(f"extract {label}", None, unit="files", enabled=progress)
    try:
        with open(archive, "rb") as fh:
            # keep_existing: a file at its final name was renamed there complete, so a rerun
            # after a failure only writes what is missing
            files = _extract_stream(fh, dest, label=label, bar=bar, keep_existing=True)
    finally:
        bar.close()
    _clean_stale(dest / "images")
    return files


# --------------------------------------------------------------------------------------------
# full download


def download_archives(dest, parts=None, *, extract: bool = True, remove_archives: bool = False,
                      retries: int = 3, retry_wait: float = 1.0, timeout: float = 30.0,
                      progress: bool = True) -> dict:
    """Download (and extract) the official archives `parts` (1..12, default all) into `dest`.

    Returns {archive name: "skipped" | "downloaded" | "extracted"}.
    """
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"--dest {dest}: cannot create it ({exc.strerror})") from None
    parts = list(parts or range(1, len(ARCHIVES) + 1))
    bad = [p for p in parts if not 1 <= int(p) <= len(ARCHIVES)]
    if bad:
        raise UserError(f"--archives {bad}: archives are numbered 1 to {len(ARCHIVES)}")
    with _exclusive(dest):
        return _download_archives(dest, parts, extract=extract, remove_archives=remove_archives,
                                  retries=retries, retry_wait=retry_wait, timeout=timeout, progress=progress)


def _download_archives(dest, parts, *, extract, remove_archives, retries, retry_wait, timeout, progress):
    state = _load_state(dest)
    attributed = False
    result = {}
    for index in parts:
        name = ARCHIVES[index - 1][0]
        entry = state["archives"].setdefault(name, {})
        archive = dest / name
        if entry.get("extracted"):
            _log(f"{name}: already extracted ({entry.get('images', '?')} images); skipping")
            if remove_archives:
                archive.unlink(missing_ok=True)
            result[name] = "skipped"
            continue
        complete = entry.get("size") is not None and archive.is_file() and archive.stat().st_size == entry["size"]
        if complete:
            _log(f"{name}: already downloaded ({_human(entry['size'])})")
        else:
            fetch(archive_url(index), archive, retries=retries, retry_wait=retry_wait, timeout=timeout,
                  progress=progress, label=name, attribution=not attributed)
            attributed = True
            entry.update(url=archive_url(index), size=archive.stat().st_size)
            _save_state(dest, state)
        result[name] = "downloaded"
        if not extract:
            continue
        try:
            files = extract_archive(archive, dest, label=name, progress=progress)
        except ArchiveCorrupt as exc:
            archive.unlink(missing_ok=True)
            entry.clear()
            _save_state(dest, state)
            raise ArchiveCorrupt(f"{exc}; removed {name}: run the same command again to download it afresh") from None
        manifest = dest / STATE_DIR / f"{name}.members"
        try:
            manifest.write_text("".join(f"{rel}\t{size}\n" for rel, size in files))
        except OSError as exc:
            raise _disk_error(exc, manifest, "run the same command again") from None
        entry.update(extracted=True, images=sum(rel.lower().endswith(".png") for rel, _ in files))
        _save_state(dest, state)
        result[name] = "extracted"
        _log(f"{name}: {entry['images']} images extracted to {dest / 'images'}")
        if remove_archives:
            archive.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------------------------
# sample


def _count_pngs(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))


class _CountingReader(io.RawIOBase):
    """Wraps the HTTP response, counting bytes read (for the progress line and the watchdog)."""

    def __init__(self, resp, watchdog=None):
        self.resp, self.count, self.watchdog = resp, 0, watchdog
        if watchdog is not None:
            watchdog.restart(0)

    def readable(self):
        return True

    def read(self, n=-1):
        data = self.resp.read(n)
        if not data and n and getattr(self.resp, "length", None):  # closed before Content-Length
            raise http.client.IncompleteRead(b"", self.resp.length)
        self.count += len(data)
        if self.watchdog is not None:
            self.watchdog.count(self.count)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def download_sample(n: int = 500, dest=None, *, url: str | None = None, retries: int = 3,
                    retry_wait: float = 1.0, timeout: float = 30.0, progress: bool = True) -> Path:
    """Stream `images_01.tar.gz` and keep its first `n` PNG members in `dest/images/`.

    Returns `dest` (default: the data home). No network when `dest/images` already holds `n` PNGs.
    """
    from custom_datasets.sources import data_home

    n = int(n)
    if n < 1:
        raise UserError(f"--sample {n}: the number of images must be at least 1")
    dest = Path(dest).expanduser() if dest else data_home()
    images = dest / "images"
    _clean_stale(images)
    if _count_pngs(images) >= n:
        return dest
    url = url or archive_url(1)
    label = ARCHIVES[0][0]
    announce = [True]
    watchdog = _Watchdog(label, deadline=time.monotonic() + DEADLINE_S)

    def attempt():
        resp = _open(url, 0, timeout)
        if getattr(resp, "status", 200) != 200:
            resp.close()
            raise DownloadError(f"HTTP {resp.status} for {url}")
        if announce[0]:
            print_attribution()
            announce[0] = False
        reader = _CountingReader(resp, watchdog)
        bar = _Progress(f"sample of {label}", n, unit="images", enabled=progress)
        try:
            with resp:
                return _extract_stream(reader, dest, label=label, limit=n, flat_dir=images,
                                       keep_existing=True, bar=bar)
        except _NET_ERRORS as exc:
            raise _Transient(f"connection lost after {_human(reader.count)} ({type(exc).__name__})") from None
        finally:
            bar.close(f", {_human(reader.count)} read")

    with _exclusive(dest):
        files = _with_retries(attempt, label=label, retries=retries, retry_wait=retry_wait,
                              kept=lambda: f"{_count_pngs(images)} complete images kept in {images}; ",
                              watchdog=watchdog)
    if len(files) < n:
        _log(f"{label} holds only {len(files)} images; use the full download for more")
    _atomic_json(dest / STATE_DIR / "sample.json", {"source": url, "n": len(files), "files": files})
    _log(f"sample: {len(files)} images in {images}")
    return dest


def ensure_sample(n: int = 500, dest=None, **kwargs) -> Path:
    """The folder holding (at least) `n` real NIH images; downloads them once (see download_sample)."""
    return download_sample(n, dest, **kwargs)


# --------------------------------------------------------------------------------------------
# metadata


def metadata_hint(dest) -> str:
    return (f"no metadata CSV in {dest}: labels (conditional models, --conditions) need NIH's "
            f"Data_Entry_2017_v2020.csv ({NIH_PAGE}, beside the archives; Kaggle's copy is Data_Entry_2017.csv); "
            "add it with `keras-cxr download --metadata PATH|URL` (unconditional models need no labels)")


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_image_index(path) -> set:
    """The `Image Index` column of an NIH metadata CSV (plain or .gz) as a set of file names."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "Image Index" not in header or "Finding Labels" not in header:
                raise DataError(f"{path} is not an NIH metadata CSV (no 'Image Index' / 'Finding Labels' column)")
            col = header.index("Image Index")
            return {row[col].strip() for row in reader if len(row) > col and row[col].strip()}
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise DataError(f"cannot read metadata CSV {path}: {exc}") from None


def fetch_metadata(source, dest=None, **fetch_kwargs) -> Path:
    """Copy (path) or download (URL) an NIH metadata CSV into `dest` under a name `find_metadata` knows."""
    from custom_datasets.metadata import METADATA_NAMES
    from custom_datasets.sources import data_home

    dest = Path(dest).expanduser() if dest else data_home()
    dest.mkdir(parents=True, exist_ok=True)
    source = str(source)
    is_url = urllib.parse.urlsplit(source).scheme in ("http", "https")
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path) if is_url else source).name
    if name not in METADATA_NAMES:
        name = "Data_Entry_2017_v2020.csv" + (".gz" if name.endswith(".gz") else "")
    target = dest / name
    if is_url:
        fetch_kwargs.setdefault("max_bytes", METADATA_MAX_BYTES)
        tmp = fetch(source, dest / f".{name}.download", label=name, attribution=True, **fetch_kwargs)
    else:
        src = Path(source).expanduser()
        if not src.is_file():
            raise UserError(f"--metadata {source}: no such file")
        if src.resolve() == target.resolve():
            read_image_index(target)
            return target
        tmp = dest / f".{name}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(src, tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _disk_error(exc, target, "run the same command again") from None
    try:
        read_image_index(tmp)
    except DataError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"--metadata {source}: {str(exc).split(': ', 1)[-1]}") from None
    os.replace(tmp, target)
    return target


# --------------------------------------------------------------------------------------------
# verify


def verify(dest, metadata=None) -> tuple[dict, list]:
    """Count the PNGs under `dest` against the metadata CSV and the per-archive member lists.

    Returns (report: ordered counts, problems: list of one-line strings; empty when all is well).
    """
    from custom_datasets.metadata import find_metadata
    from custom_datasets.sources import check_png, find_images

    dest = Path(dest).expanduser()
    if not dest.is_dir():
        raise UserError(f"--dest {dest}: no such folder")
    images = find_images(dest)
    damaged = {name: why for name, p in sorted(images.items()) if (why := check_png(p)) is not None}
    state = _load_state(dest)
    extracted = [name for name, _ in ARCHIVES if state["archives"].get(name, {}).get("extracted")]
    listed, missing = 0, []
    for name in extracted:
        manifest = dest / STATE_DIR / f"{name}.members"
        if not manifest.is_file():
            missing.append(f"{manifest.name} (member list)")
            continue
        for line in manifest.read_text().splitlines():
            rel, size = line.rsplit("\t", 1)
            listed += 1
            p = dest / rel
            if not p.is_file() or p.stat().st_size != int(size):
                missing.append(rel)
    report = {"images found": len(images), "damaged PNGs": len(damaged),
              "archives extracted": f"{len(extracted)}/{len(ARCHIVES)}"}
    if extracted:
        report["archive members missing or wrong size"] = len(missing)
    problems = []
    if not images:
        problems.append(f"no PNG images under {dest}")
    if damaged:
        name, why = next(iter(damaged.items()))
        problems.append(f"{len(damaged)} damaged PNG(s), e.g. {images[name]} ({why})")
    if missing:
        problems.append(f"{len(missing)} extracted file(s) missing or of the wrong size, e.g. {missing[0]}")
    meta = Path(metadata) if metadata else find_metadata(dest)
    if meta is None and (dest / "images").is_dir():
        meta = find_metadata(dest / "images")
    if meta is None:
        report["metadata CSV"] = "none"
    else:
        rows = read_image_index(meta)
        report["metadata CSV"] = str(meta)
        report["csv rows"] = len(rows)
        report["csv rows without image"] = len(rows - images.keys())
        report["images without csv row"] = len(images.keys() - rows)
        if len(extracted) == len(ARCHIVES) and report["csv rows without image"]:
            example = sorted(rows - images.keys())[0]
            problems.append(f"{report['csv rows without image']} rows of {meta.name} have no image after all "
                            f"{len(ARCHIVES)} archives (e.g. {example})")
    return report, problems
