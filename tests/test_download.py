"""The NIH downloader against a local HTTP server on 127.0.0.1 (tests/_nih_test_server.py).

The archives served are GENERATED (synthetic noise PNGs with NIH-like names), never NIH images.
Nothing here touches the internet: KERAS_CXR_NIH_BASE_URL points the downloader at the local server.
"""

import csv
import errno
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from custom_datasets import download as dl
from custom_datasets.sources import find_images
from keras_cxr import cli
from keras_cxr.errors import DataError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from _nih_test_server import (  # noqa: E402
    NIHTestServer,
    free_port,
    image_names,
    make_archive,
    make_malicious_archive,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]


def key(i):
    return "/" + dl.ARCHIVES[i - 1][1]


@pytest.fixture(scope="module")
def big_archive():
    """images_01 stand-in: 80 incompressible ~100 KB PNGs (8 MB), to see where streaming stops."""
    return make_archive(image_names(80), side=316, seed=0)


@pytest.fixture(scope="module")
def small_archives():
    """12 tiny archives, 2 images each, distinct names: {index: (bytes, {name: png})}."""
    return {i: make_archive(image_names(2, first_patient=10 * i), side=16, seed=100 * i) for i in range(1, 13)}


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """Start a test server for {path: bytes}; it becomes the NIH base URL and stops at teardown."""
    servers = []
    monkeypatch.setenv("KERAS_CXR_DATA", str(tmp_path / "home"))

    def start(files):
        srv = NIHTestServer(files, lifetime=60).start()
        servers.append(srv)
        monkeypatch.setenv(dl.BASE_URL_ENV, srv.url)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def write_csv(path, names):
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                    "Patient Gender", "View Position"])
        for i, name in enumerate(names):
            w.writerow([name, "Effusion" if i % 2 else "No Finding", name[9:12].lstrip("0") or "0",
                        str(int(name[:8])), "50", "M", "PA"])
    return path


class FailingWrite:
    """Patches the downloader's one disk writer to raise `exc` after `after_bytes` bytes or at call
    number `at_call` (a full disk, or Ctrl-C, in the middle of a file)."""

    def __init__(self, monkeypatch, exc, *, after_bytes=None, at_call=None):
        self.monkeypatch, self.exc, self.after_bytes, self.at_call = monkeypatch, exc, after_bytes, at_call
        self.real, self.written, self.calls = dl._write, 0, 0
        monkeypatch.setattr(dl, "_write", self)

    def __call__(self, fh, chunk):
        self.calls += 1
        if self.calls == self.at_call or (self.after_bytes is not None and self.written > self.after_bytes):
            raise self.exc
        self.real(fh, chunk)
        self.written += len(chunk)

    def restore(self):
        self.monkeypatch.setattr(dl, "_write", self.real)


ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def no_temporaries(folder):
    return not [p for p in Path(folder).rglob(".*") if p.is_file() and p.name.endswith(".part")]


# ---------------------------------------------------------------------------------- sample mode


def test_sample_streams_only_the_first_n_members(serve, tmp_path, capsys, big_archive):
    data, pngs = big_archive
    srv = serve({key(1): data})
    out = dl.download_sample(5, tmp_path / "s", retry_wait=0, progress=False)
    assert out == tmp_path / "s"
    got = sorted(p.name for p in (out / "images").glob("*.png"))
    assert got == list(pngs)[:5]
    for name in got:
        assert (out / "images" / name).read_bytes() == pngs[name]
    # the server sent far less than the 8 MB archive: the stream was closed after member 5
    assert 5 * 100_000 < srv.sent[key(1)] < len(data) / 4
    assert "NIH Clinical Center" in capsys.readouterr().out
    # idempotent: already complete -> no request at all
    n_requests = len(srv.requests)
    assert dl.ensure_sample(5, tmp_path / "s") == tmp_path / "s"
    assert dl.ensure_sample(3, tmp_path / "s") == tmp_path / "s"
    assert len(srv.requests) == n_requests
    # asking for more re-streams from the start, keeps the first 5 and adds 2
    dl.ensure_sample(7, tmp_path / "s", progress=False)
    assert sorted(p.name for p in (out / "images").glob("*.png")) == list(pngs)[:7]
    assert len(srv.requests) == n_requests + 1


def test_sample_cli_to_data_home_then_metadata_and_load_records(serve, tmp_path, capsys, monkeypatch, big_archive):
    data, pngs = big_archive
    serve({key(1): data})
    assert cli.main(["download", "--sample", "4", "--quiet"]) == 0
    home = tmp_path / "home"
    out = capsys.readouterr().out
    assert "CVPR 2017" in out and "https://nihcc.app.box.com/v/ChestXray-NIHCC" in out
    assert "Data_Entry_2017_v2020.csv" in out and "no metadata CSV" in out  # the one-line hint
    assert len(list((home / "images").glob("*.png"))) == 4

    csv_path = write_csv(tmp_path / "labels.csv", list(pngs)[:4] + ["99999999_000.png"])
    assert cli.main(["download", "--metadata", str(csv_path)]) == 0
    assert (home / "Data_Entry_2017_v2020.csv").read_bytes() == csv_path.read_bytes()

    from custom_datasets import load_records, sources

    monkeypatch.setattr(sources, "shared_sample", lambda: None)  # as on a user's machine
    monkeypatch.delenv("DATA", raising=False)
    assert sources.resolve_data_path(None) == home  # what the demo finds after ensure_sample()
    records = load_records(home, split="all")
    assert sorted(records["image_index"]) == list(pngs)[:4]
    assert records.attrs["has_labels"] and records.attrs["report"]["csv rows without image"] == 1
    assert records["Effusion"].tolist() == [0, 1, 0, 1]


def test_sample_truncated_gzip_keeps_only_whole_images(serve, tmp_path, big_archive):
    data, pngs = big_archive
    serve({key(1): data[: len(data) // 10]})  # about 8 images, the last one cut in the middle
    with pytest.raises(DataError, match="truncated or corrupt"):
        dl.download_sample(50, tmp_path, retry_wait=0, progress=False)
    kept = sorted((tmp_path / "images").glob("*.png"))
    assert 3 <= len(kept) < 10
    for p in kept:  # never a half image under a .png name
        assert p.read_bytes() == pngs[p.name]
    assert no_temporaries(tmp_path)


def test_sample_cut_connection_retries_from_the_start(serve, tmp_path, big_archive):
    data, pngs = big_archive
    srv = serve({key(1): data})
    srv.cut_after[key(1)] = 350_000  # ~3 images, then the socket closes
    dl.download_sample(6, tmp_path, retries=1, retry_wait=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == list(pngs)[:6]
    assert [r for _, r in srv.requests] == [None, None]


# ---------------------------------------------------------------------------------- full mode


def test_full_download_extract_skip_and_verify(serve, tmp_path, capsys, small_archives):
    srv = serve({key(i): small_archives[i][0] for i in small_archives})
    dest = tmp_path / "nih"
    result = dl.download_archives(dest, retry_wait=0, progress=False)
    assert list(result) == [name for name, _ in dl.ARCHIVES]  # the 12 official archives, in order
    assert set(result.values()) == {"extracted"}
    assert [p for p, _ in srv.requests] == [key(i) for i in range(1, 13)]
    assert capsys.readouterr().out.count("Please cite") == 1  # attribution once per run
    all_names = sorted(n for i in small_archives for n in small_archives[i][1])
    assert sorted(p.name for p in (dest / "images").glob("*.png")) == all_names

    # complete archives are skipped without a request
    assert set(dl.download_archives(dest, progress=False).values()) == {"skipped"}
    assert len(srv.requests) == 12

    write_csv(dest / "Data_Entry_2017_v2020.csv", all_names)
    report, problems = dl.verify(dest)
    assert problems == []
    assert report["images found"] == 24 and report["csv rows"] == 24
    assert report["csv rows without image"] == 0 and report["archives extracted"] == "12/12"
    assert cli.main(["download", "--dest", str(dest), "--verify"]) == 0
    assert "verify: OK (24 images)" in capsys.readouterr().out

    # a missing image and a damaged one are both reported, exit code 2
    (dest / "images" / all_names[0]).unlink()
    damaged = dest / "images" / all_names[1]
    damaged.write_bytes(damaged.read_bytes()[:-20])
    report, problems = dl.verify(dest)
    assert report["csv rows without image"] == 1 and report["damaged PNGs"] == 1
    assert report["archive members missing or wrong size"] == 2
    assert len(problems) == 3
    assert cli.main(["download", "--dest", str(dest), "--verify"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and "no image" in err


def test_archive_subset_no_extract_and_remove_archives(serve, tmp_path, small_archives):
    serve({key(i): small_archives[i][0] for i in small_archives})
    dest = tmp_path / "nih"
    assert dl.download_archives(dest, [2], extract=False, progress=False) == {"images_02.tar.gz": "downloaded"}
    assert (dest / "images_02.tar.gz").read_bytes() == small_archives[2][0]
    assert not (dest / "images").exists()
    dl.download_archives(dest, [2, 3], remove_archives=True, progress=False)
    assert not (dest / "images_02.tar.gz").exists() and not (dest / "images_03.tar.gz").exists()
    assert len(list((dest / "images").glob("*.png"))) == 4
    assert set(dl.download_archives(dest, [2, 3], progress=False).values()) == {"skipped"}
    with pytest.raises(UserError, match="1 to 12"):
        dl.download_archives(dest, [13])


# ---------------------------------------------------------------------------------- resume and faults


def test_resume_after_connection_cut(serve, tmp_path, big_archive):
    data, _ = big_archive
    srv = serve({key(1): data})
    srv.cut_after[key(1)] = 1_000_000
    target = tmp_path / "images_01.tar.gz"
    with pytest.raises(dl.DownloadError, match="run the same command again to resume") as exc:
        dl.fetch(dl.archive_url(1), target, retries=0, progress=False)
    assert "\n" not in str(exc.value)
    part = tmp_path / "images_01.tar.gz.part"
    assert part.stat().st_size == 1_000_000 and not target.exists()
    dl.fetch(dl.archive_url(1), target, retries=0, progress=False)
    assert target.read_bytes() == data and not part.exists()
    assert srv.requests[-1][1] == "bytes=1000000-"
    assert srv.sent[key(1)] == len(data)  # nothing sent twice


def test_cut_connection_retried_within_one_run(serve, tmp_path, small_archives, big_archive):
    data, _ = big_archive
    srv = serve({key(1): data})
    srv.cut_after[key(1)] = 123_457
    dl.fetch(dl.archive_url(1), tmp_path / "a.tar.gz", retries=2, retry_wait=0, progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == data
    assert [r for _, r in srv.requests] == [None, "bytes=123457-"]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path, capsys, big_archive):
    data, _ = big_archive
    srv = serve({key(1): data})
    srv.ignore_range = True
    target = tmp_path / "images_01.tar.gz"
    (tmp_path / "images_01.tar.gz.part").write_bytes(b"\0" * 5000)  # a wrong prefix, must not survive
    dl.fetch(dl.archive_url(1), target, retries=0, progress=False)
    assert target.read_bytes() == data
    assert srv.requests[0][1] == "bytes=5000-"
    assert "ignored the resume request" in capsys.readouterr().err


def test_already_complete_part_is_accepted_via_416(serve, tmp_path, small_archives):
    data = small_archives[1][0]
    serve({key(1): data})
    (tmp_path / "x.gz.part").write_bytes(data)
    dl.fetch(dl.archive_url(1), tmp_path / "x.gz", retries=0, progress=False)
    assert (tmp_path / "x.gz").read_bytes() == data


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_are_one_line(serve, tmp_path, capsys, status, small_archives):
    srv = serve({key(1): small_archives[1][0]})
    srv.status[key(1)] = status
    with pytest.raises(dl.DownloadError, match=f"HTTP {status}"):
        dl.fetch(dl.archive_url(1), tmp_path / "x.gz", retries=1, retry_wait=0, progress=False)
    assert len(srv.requests) == (2 if status == 500 else 1)  # 5xx is retried, 404 is not
    capsys.readouterr()
    rc = cli.main(["download", "--dest", str(tmp_path / "d"), "--archives", "1", "--quiet", "--retries", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"HTTP {status}" in err


def test_connection_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(dl.BASE_URL_ENV, f"http://127.0.0.1:{free_port()}/")
    rc = cli.main(["download", "--sample", "3", "--dest", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2
    assert len(captured.err.strip().splitlines()) == 1 and "cannot reach" in captured.err
    assert "refused" in captured.err.lower()
    assert "NIH Clinical Center" not in captured.out  # nothing was downloaded


def test_truncated_archive_is_removed_and_never_counted(serve, tmp_path, small_archives, big_archive):
    data, pngs = big_archive
    serve({key(1): data[: len(data) // 2]})  # the server itself serves a truncated gzip
    dest = tmp_path / "nih"
    with pytest.raises(DataError, match="truncated or corrupt.*download it afresh"):
        dl.download_archives(dest, [1], retry_wait=0, progress=False)
    assert not (dest / "images_01.tar.gz").exists()
    assert not dl._load_state(dest)["archives"]["images_01.tar.gz"].get("extracted")
    kept = sorted((dest / "images").glob("*.png"))
    assert 20 < len(kept) < 45
    assert all(p.read_bytes() == pngs[p.name] for p in kept)
    assert no_temporaries(dest)
    report, problems = dl.verify(dest)
    assert report["archives extracted"] == "0/12" and report["damaged PNGs"] == 0


def test_disk_full_while_downloading_then_resume(serve, tmp_path, monkeypatch, big_archive):
    data, _ = big_archive
    serve({key(1): data})
    disk = FailingWrite(monkeypatch, ENOSPC, after_bytes=2_000_000)
    target = tmp_path / "images_01.tar.gz"
    with pytest.raises(dl.DownloadError, match="disk full while writing .*resume"):
        dl.fetch(dl.archive_url(1), target, retries=3, retry_wait=0, progress=False)
    part = tmp_path / "images_01.tar.gz.part"
    assert part.stat().st_size == disk.written and data.startswith(part.read_bytes())
    disk.restore()
    dl.fetch(dl.archive_url(1), target, retries=0, progress=False)
    assert target.read_bytes() == data


def test_disk_full_while_extracting_leaves_no_half_image(tmp_path, monkeypatch, big_archive):
    data, pngs = big_archive
    archive = tmp_path / "images_01.tar.gz"
    archive.write_bytes(data)
    disk = FailingWrite(monkeypatch, ENOSPC, at_call=7)
    with pytest.raises(dl.DownloadError, match="disk full"):
        dl.extract_archive(archive, tmp_path / "out", progress=False)
    kept = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert 0 < len(kept) < 7 and all(p.read_bytes() == pngs[p.name] for p in kept)
    assert no_temporaries(tmp_path / "out")
    # a temporary left by a SIGKILLed run is never counted and is cleaned by the rerun
    stale = tmp_path / "out" / "images" / ".00000099_000.png.4242.part"
    stale.write_bytes(b"\x89PNG half")
    assert "00000099_000.png" not in find_images(tmp_path / "out")
    disk.restore()
    files = dl.extract_archive(archive, tmp_path / "out", progress=False)
    assert len(files) == 80 and not stale.exists()
    assert sorted(find_images(tmp_path / "out")) == sorted(pngs)


def test_ctrl_c_mid_file_exits_130_and_resumes(serve, tmp_path, monkeypatch, capsys, big_archive):
    data, pngs = big_archive
    serve({key(1): data})
    ctrl_c = FailingWrite(monkeypatch, KeyboardInterrupt(), after_bytes=3_000_000)
    dest = tmp_path / "nih"
    rc = cli.main(["download", "--dest", str(dest), "--archives", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1 and "resume" in err
    assert (dest / "images_01.tar.gz.part").stat().st_size == ctrl_c.written
    ctrl_c.restore()
    assert cli.main(["download", "--dest", str(dest), "--archives", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (dest / "images").glob("*.png")) == sorted(pngs)


def test_sigkill_mid_file_then_resume(serve, tmp_path, big_archive):
    data, _ = big_archive
    srv = serve({key(1): data})
    srv.stall_after[key(1)] = 700_000
    target = tmp_path / "images_01.tar.gz"
    part = tmp_path / "images_01.tar.gz.part"
    code = ("from custom_datasets.download import fetch; "
            f"fetch({dl.archive_url(1)!r}, {str(target)!r}, retries=0, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: part.is_file() and part.stat().st_size >= 700_000, timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and not target.exists()
    srv.stall_after.clear()
    dl.fetch(dl.archive_url(1), target, retries=0, progress=False)
    assert target.read_bytes() == data
    assert srv.requests[-1][1] == "bytes=700000-"


# ---------------------------------------------------------------------------------- unsafe archives


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_malicious_archive_is_refused(tmp_path, kind):
    outside = Path("/tmp/keras_cxr_evil.png")
    existed = outside.exists()
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_malicious_archive(kind))
    dest = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="refusing") as exc:
        dl.extract_archive(archive, dest, progress=False)
    assert "\n" not in str(exc.value)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir())
    assert files == ["a/b/images/00000001_000.png", "evil.tar.gz"]  # nothing else, nothing outside
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    assert outside.exists() == existed


def test_malicious_archive_from_server_fails_the_command(serve, tmp_path, capsys):
    serve({key(1): make_malicious_archive("symlink")})
    rc = cli.main(["download", "--dest", str(tmp_path), "--archives", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "refusing link member" in err and len(err.splitlines()) == 1
    assert not dl._load_state(tmp_path)["archives"]["images_01.tar.gz"].get("extracted")


# ---------------------------------------------------------------------------------- metadata


def test_metadata_from_url_and_bad_csv(serve, tmp_path, capsys):
    good = write_csv(tmp_path / "x.csv", ["00000001_000.png"]).read_bytes()
    serve({"/meta/Data_Entry_2017_v2020.csv": good, "/meta/bad.csv": b"a,b\n1,2\n"})
    base = os.environ[dl.BASE_URL_ENV]
    path = dl.fetch_metadata(base + "meta/Data_Entry_2017_v2020.csv", tmp_path / "d", progress=False)
    assert path == tmp_path / "d" / "Data_Entry_2017_v2020.csv" and path.read_bytes() == good
    with pytest.raises(DataError, match="not an NIH metadata CSV"):
        dl.fetch_metadata(base + "meta/bad.csv", tmp_path / "e", progress=False)
    assert not [p for p in (tmp_path / "e").iterdir() if p.suffix == ".csv"]
    with pytest.raises(UserError, match="no such file"):
        dl.fetch_metadata(tmp_path / "missing.csv", tmp_path / "d")


# ---------------------------------------------------------------------------------- layouts


def _sample_rows(sample_dir, n):
    with open(sample_dir / "Data_Entry_sample.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1 : n + 1]


def test_kaggle_layout_load_records_and_verify(sample_dir, tmp_path):
    """Kaggle's nih-chest-xrays/data: images_001/images/*.png ... + Data_Entry_2017.csv + split lists."""
    header, rows = _sample_rows(sample_dir, 6)
    root = tmp_path / "data"
    for i, row in enumerate(rows):
        folder = root / f"images_{1 + i // 3:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dir / "images" / row[0], folder / row[0])
    with open(root / "Data_Entry_2017.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)
    (root / "train_val_list.txt").write_text("".join(r[0] + "\n" for r in rows[:4]))
    (root / "test_list.txt").write_text("".join(r[0] + "\n" for r in rows[4:]))

    from custom_datasets import load_records

    records = load_records(root, split="all")
    assert sorted(records["image_index"]) == sorted(r[0] for r in rows)
    assert all(Path(p).parent.parent.name.startswith("images_00") for p in records["path"])
    by_name = dict(zip(records["image_index"], records["Cardiomegaly"]))
    for r in rows:
        assert by_name[r[0]] == int("Cardiomegaly" in r[1].split("|"))
    test = load_records(root, split="test")
    assert sorted(test["image_index"]) == sorted(r[0] for r in rows[4:])
    assert test.attrs["report"]["split"].startswith("official lists")

    report, problems = dl.verify(root)
    assert problems == [] and report["images found"] == 6 and report["csv rows without image"] == 0


def test_nih_layout_load_records(sample_dir, tmp_path):
    header, rows = _sample_rows(sample_dir, 5)
    (tmp_path / "images").mkdir()
    for row in rows:
        shutil.copy(sample_dir / "images" / row[0], tmp_path / "images" / row[0])
    with open(tmp_path / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header] + rows)

    from custom_datasets import load_records

    records = load_records(tmp_path, split="all")
    assert sorted(records["image_index"]) == sorted(r[0] for r in rows)
    assert records.attrs["has_labels"]
    assert dl.verify(tmp_path)[1] == []


def test_generated_pngs_are_valid(big_archive):
    """The synthetic PNGs decode (so the sample the tests make is a real image folder)."""
    from PIL import Image
    import io

    data, pngs = big_archive
    name, png = next(iter(pngs.items()))
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == (316, 316) and img.mode == "L"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert tar.getnames()[:2] == ["images", f"images/{name}"]


def test_ctrl_c_while_extracting_the_sample(serve, tmp_path, monkeypatch, capsys, big_archive):
    data, pngs = big_archive
    serve({key(1): data})
    ctrl_c = FailingWrite(monkeypatch, KeyboardInterrupt(), at_call=4)  # while writing image 4
    rc = cli.main(["download", "--sample", "6", "--dest", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and len(err.splitlines()) == 1 and "complete images are kept" in err
    kept = sorted((tmp_path / "images").glob("*.png"))
    assert 1 <= len(kept) < 4 and all(p.read_bytes() == pngs[p.name] for p in kept)
    assert no_temporaries(tmp_path)
    ctrl_c.restore()
    assert cli.main(["download", "--sample", "6", "--dest", str(tmp_path), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == list(pngs)[:6]


def test_not_enough_disk_space_and_bad_options(serve, tmp_path, monkeypatch, capsys, small_archives):
    serve({key(1): small_archives[1][0]})
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10, 10))
    with pytest.raises(dl.DownloadError, match=r"needs .* more but .* has 10 B free"):
        dl.fetch(dl.archive_url(1), tmp_path / "x.gz", retries=0, progress=False)
    monkeypatch.undo()
    assert cli.main(["download", "--sample", "0", "--dest", str(tmp_path)]) == 2
    assert cli.main(["download", "--sample", "5", "--archives", "1", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--sample: must be >= 1" in err and "pick one" in err


def test_two_downloads_into_one_folder_are_refused(serve, tmp_path, big_archive):
    srv = serve({key(1): big_archive[0]})
    with dl._exclusive(tmp_path):  # as if another run were writing there
        with pytest.raises(dl.DownloadError, match="another keras-cxr download is writing"):
            dl.download_sample(3, tmp_path, progress=False)
        with pytest.raises(dl.DownloadError, match="another keras-cxr download is writing"):
            dl.download_archives(tmp_path, [1], progress=False)
    assert srv.requests == []
    dl.download_sample(3, tmp_path, progress=False)  # released
    assert len(list((tmp_path / "images").glob("*.png"))) == 3


def test_archive_already_there_without_state_is_checked_not_redownloaded(serve, tmp_path, small_archives):
    data, pngs = small_archives[1]
    srv = serve({key(1): data})
    (tmp_path / "images_01.tar.gz").write_bytes(data)  # e.g. downloaded with a browser
    assert dl.download_archives(tmp_path, [1], progress=False) == {"images_01.tar.gz": "extracted"}
    assert srv.requests == [(key(1), f"bytes={len(data)}-")] and srv.sent.get(key(1), 0) == 0
    assert sorted(p.name for p in (tmp_path / "images").glob("*.png")) == sorted(pngs)


# ---------------------------------------------------------------------------------- bounded network I/O
# Servers that drip, never end, or lie about Content-Length (all on 127.0.0.1): every download ends,
# with one line, in bounded time.


def test_a_dripping_server_is_a_stall_not_a_hang(serve, tmp_path, monkeypatch, capsys, big_archive):
    import time

    monkeypatch.setattr(dl, "STALL_WINDOW_S", 0.6)  # the rule: >= STALL_MIN_BYTES per window
    srv = serve({key(1): big_archive[0]})
    srv.drip[key(1)] = 0.05  # one byte every 50 ms: never idle long enough for a read timeout
    t0 = time.monotonic()
    code = cli.main(["download", "--archives", "1", "--dest", str(tmp_path / "d"), "--retries", "1", "--quiet"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2 and "stalled" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert elapsed < 20, elapsed  # two windows and one retry wait, not forever


def test_endless_metadata_response_is_capped_and_not_resumed(serve, tmp_path, monkeypatch, capsys):
    good = write_csv(tmp_path / "x.csv", ["00000001_000.png"]).read_bytes()
    srv = serve({"/meta/Data_Entry_2017_v2020.csv": good})
    srv.endless["/meta/Data_Entry_2017_v2020.csv"] = b"00000001_000.png,No Finding,0,1,50,M,PA\n" * 1000
    monkeypatch.setattr(dl, "METADATA_MAX_BYTES", 2 * 10**6)
    dest = tmp_path / "d"
    url = os.environ[dl.BASE_URL_ENV] + "meta/Data_Entry_2017_v2020.csv"
    code = cli.main(["download", "--metadata", url, "--dest", str(dest), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "more than 2.0 MB" in err and "Traceback" not in err, err
    assert not [p for p in dest.rglob("*") if p.is_file()]  # the partial file is gone: a rerun starts clean
    assert srv.sent["/meta/Data_Entry_2017_v2020.csv"] < 64 * 1024**2  # stopped near the cap, not at 6.6 GB


def test_announced_size_over_the_cap_is_refused_before_reading(serve, tmp_path, monkeypatch, capsys):
    good = write_csv(tmp_path / "x.csv", ["00000001_000.png"]).read_bytes()
    srv = serve({"/meta/m.csv": good})
    srv.claim_length["/meta/m.csv"] = 10 * 10**9  # says 10 GB
    url = os.environ[dl.BASE_URL_ENV] + "meta/m.csv"
    with pytest.raises(dl.DownloadError, match="announces 10.0 GB"):
        dl.fetch_metadata(url, tmp_path / "d", progress=False)


def test_server_lying_about_length(serve, tmp_path, capsys, small_archives):
    data = small_archives[1][0]
    srv = serve({key(1): data})
    srv.claim_length[key(1)] = len(data) + 5000  # promises more than it sends, then closes
    assert cli.main(["download", "--archives", "1", "--dest", str(tmp_path / "d"), "--quiet"]) == 0
    assert len(find_images(tmp_path / "d")) == 2  # resumed at the real end (416), the archive is whole
    srv.claim_length[key(1)] = len(data) - 200  # says less than it has: the client stops there
    code = cli.main(["download", "--archives", "1", "--dest", str(tmp_path / "e"), "--retries", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if ": error: " in line]) == 1
    assert not (tmp_path / "e").is_dir() or len(find_images(tmp_path / "e")) < 2  # never counted as whole


def test_overall_deadline_ends_a_download(serve, tmp_path, monkeypatch, capsys, big_archive):
    monkeypatch.setattr(dl, "DEADLINE_S", 0.5)
    monkeypatch.setattr(dl, "STALL_WINDOW_S", 1000.0)
    srv = serve({key(1): big_archive[0]})
    srv.drip[key(1)] = 0.01
    code = cli.main(["download", "--archives", "1", "--dest", str(tmp_path / "d"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "overall limit" in err and "Traceback" not in err, err
