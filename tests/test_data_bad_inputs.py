"""Bad input never gives a traceback or a silently shorter dataset: a one-line DataError naming the
file/row, or a counted skip in records.attrs["report"]. Real NIH files, copied and damaged here."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from custom_datasets import load_records, make_dataset
from custom_datasets.metadata import load_metadata
from keras_cxr.cli import main
from keras_cxr.errors import DataError

N = 12


@pytest.fixture
def copy(sample_dir, tmp_path):
    """tmp_path/images/ with N real sample PNGs and tmp_path/Data_Entry_2017_v2020.csv with their rows."""
    lines = (sample_dir / "Data_Entry_sample.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:N + 1]
    (tmp_path / "images").mkdir()
    for row in rows:
        name = row.split(",")[0]
        shutil.copy(sample_dir / "images" / name, tmp_path / "images" / name)
    csv = tmp_path / "Data_Entry_2017_v2020.csv"
    csv.write_text("\n".join([header] + rows) + "\n")
    return tmp_path, [r.split(",")[0] for r in rows], header, rows


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _damage_and_load(copy, damage, reason):
    root, names, *_ = copy
    victim = root / "images" / names[3]
    damage(victim)
    recs = load_records(root, split="all")
    assert names[3] not in set(recs["image_index"])
    assert recs.attrs["report"][f"skipped: {reason}"] == 1
    assert recs.attrs["report"]["used"] == N - 1 == len(recs)
    assert recs.attrs["skipped_files"] == [(names[3], reason)]
    with pytest.raises(DataError) as exc:
        load_records(root, split="all", strict=True)
    assert names[3] in _one_line(exc) and reason in str(exc.value)
    return recs


def test_zero_byte_file(copy):
    _damage_and_load(copy, lambda p: p.write_bytes(b""), "zero-byte file")


def test_truncated_png(copy):
    recs = _damage_and_load(copy, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
                            "truncated PNG (no IEND chunk)")
    # what is left still trains: every remaining file decodes
    assert sum(int(x.shape[0]) for x, _ in make_dataset(recs, image_size=16, batch_size=8)) == N - 1


def test_not_a_png(copy, originals_dir):
    _damage_and_load(copy, lambda p: p.write_bytes(b"<html>404 Not Found</html>" * 10), "not a PNG (bad signature)")


def test_corrupt_pixel_data_fails_loudly_and_prepare_skips_it(copy, capsys):
    """Valid signature and IEND, garbage inside IDAT: the cheap check passes, decoding fails.
    make_dataset raises (never a silently shorter epoch); prepare decodes every file and skips it
    by name, so shards are always decodable."""
    root, names, *_ = copy
    victim = root / "images" / names[5]
    data = bytearray(victim.read_bytes())
    idat = data.find(b"IDAT")
    data[idat + 8 : idat + 4000] = b"\x00" * (4000 - 8)
    victim.write_bytes(bytes(data))
    recs = load_records(root, split="all")
    assert len(recs) == N
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        for _ in make_dataset(recs, image_size=16, batch_size=4, shuffle=False):
            pass
    out = root / "shards"
    assert main(["prepare", "--data", str(root), "--split", "all", "--out", str(out), "--quiet"]) == 0
    assert names[5] in capsys.readouterr().out
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["all"]["count"] == N - 1
    assert manifest["report"]["all"]["skipped: cannot decode PNG"] == 1
    assert manifest["skipped_files"]["all"] == [f"{names[5]}: cannot decode PNG"]


def test_csv_row_whose_image_is_missing(copy, capsys):
    root, names, *_ = copy
    (root / "images" / names[0]).unlink()
    recs = load_records(root, split="all")
    assert len(recs) == N - 1 and recs.attrs["report"]["csv rows without image"] == 1
    with pytest.raises(DataError) as exc:
        load_records(root, split="all", allow_missing=False)
    assert names[0] in _one_line(exc)
    # the CLI is strict by default and says how to go on
    assert main(["prepare", "--data", str(root), "--out", str(root / "o")]) == 2
    err = capsys.readouterr().err
    assert names[0] in err and "--allow-missing" in err and "Traceback" not in err
    assert not (root / "o").exists()


def test_unknown_finding_name(copy):
    root, names, header, rows = copy
    rows[4] = rows[4].replace(rows[4].split(",")[1], "Cardiomegally", 1)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([header] + rows) + "\n")
    with pytest.raises(DataError) as exc:
        load_records(root)
    msg = _one_line(exc)
    assert "row 6" in msg and names[4] in msg and "Cardiomegally" in msg


def test_missing_required_column(copy):
    root, names, header, rows = copy
    cols = header.split(",")
    drop = cols.index("Patient ID")
    cut = [",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in [header] + rows]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(cut) + "\n")
    with pytest.raises(DataError) as exc:
        load_records(root)
    assert "Patient ID" in _one_line(exc) and "Data_Entry_2017_v2020.csv" in str(exc.value)


def test_duplicate_rows(copy):
    root, names, header, rows = copy
    csv = root / "Data_Entry_2017_v2020.csv"
    csv.write_text("\n".join([header] + rows + rows[:2]) + "\n")  # exact duplicates: counted skip
    recs = load_records(root, split="all")
    assert len(recs) == N and recs.attrs["report"]["csv duplicate row"] == 2
    conflicting = rows[1].replace(",PA,", ",AP,") if ",PA," in rows[1] else rows[1].replace(",AP,", ",PA,")
    csv.write_text("\n".join([header] + rows + [conflicting]) + "\n")
    with pytest.raises(DataError) as exc:
        load_records(root)
    assert names[1] in _one_line(exc)


def test_bom_and_crlf_csv(copy):
    root, names, header, rows = copy
    csv = root / "Data_Entry_2017_v2020.csv"
    plain = load_metadata(csv)
    csv.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([header] + rows).encode() + b"\r\n")
    excel = load_metadata(csv)
    assert list(excel.columns) == list(plain.columns)
    assert excel.drop(columns=[]).equals(plain)
    assert len(load_records(root, split="all")) == N


def test_image_folder_with_no_matching_rows(copy):
    root, names, *_ = copy
    for p in (root / "images").glob("*.png"):
        p.rename(p.with_name("x" + p.name))
    with pytest.raises(DataError) as exc:
        load_records(root)
    msg = _one_line(exc)
    assert "none of the 12 images" in msg and "Data_Entry_2017_v2020.csv" in msg


def test_empty_split_after_filtering(copy, capsys):
    root, names, header, rows = copy
    # make every row PA, then ask for AP only
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([header] + [r.replace(",AP,", ",PA,") for r in rows]) + "\n")
    assert set(load_records(root, split="all")["view"]) == {"PA"}
    absent = "AP"
    with pytest.raises(DataError) as exc:
        load_records(root, split="all", views=[absent])
    assert "no images left" in _one_line(exc)
    assert main(["prepare", "--data", str(root), "--views", absent, "--split", "all",
                 "--out", str(root / "o")]) == 2
    assert "no images left" in capsys.readouterr().err


def test_empty_and_missing_metadata(copy):
    root, *_ = copy
    csv = root / "Data_Entry_2017_v2020.csv"
    csv.write_text("")
    with pytest.raises(DataError, match="0 bytes"):
        load_records(root)
    csv.unlink()
    recs = load_records(root, split="all")  # no CSV: images used, labels unknown and said so
    assert len(recs) == N and recs.attrs["has_labels"] is False
    with pytest.raises(DataError, match="metadata"):
        load_records(root, conditions=["Effusion"])
    with pytest.raises(DataError, match="no such file"):
        load_records(root / "nope")
    assert np.all(recs[["Effusion", "No Finding"]].to_numpy() == 0)
