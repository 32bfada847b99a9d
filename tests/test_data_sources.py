"""Source strings and the dataset parsers, on small trees in the official split-file formats.

Parsers never open videos, so the video files here are empty placeholders.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from paramcrop.data import VideoRecord, resolve_source
from paramcrop.data.sources import folder_split_is_test


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def relative(records: list[VideoRecord], root: Path) -> list[tuple[str, int]]:
    return [(r.path.relative_to(root).as_posix(), r.label) for r in records]


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    """The official layout: ROOT/UCF-101/<Class>/*.avi and ROOT/ucfTrainTestlist/ with CRLF lines,
    including the real HandstandPushups folder vs. HandStandPushups file-name quirk."""
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 Basketball\r\n3 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi 1\r\n"
        b"Basketball/v_Basketball_g08_c01.avi 2\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n"
    )
    (lists / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nBasketball/v_Basketball_g01_c01.avi\r\n"
    )
    (lists / "trainlist02.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")
    (lists / "testlist02.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\r\n"
                                           b"HandstandPushups/v_HandStandPushups_g08_c01.avi\r\n")
    for line in (lists / "trainlist01.txt").read_text().splitlines() + (lists / "testlist01.txt").read_text().splitlines():
        touch(tmp_path / "UCF-101" / line.split()[0])
    return tmp_path


def test_ucf101_split_1(ucf_root):
    spec = resolve_source(f"ucf101:{ucf_root}")
    assert spec.classes == ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]
    videos = ucf_root / "UCF-101"
    assert relative(spec.train, videos) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0), ("ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi", 0),
        ("Basketball/v_Basketball_g08_c01.avi", 1), ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2)]
    assert relative(spec.test, videos) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0), ("Basketball/v_Basketball_g01_c01.avi", 1)]


def test_ucf101_split_2_and_videos_directly_under_root(ucf_root):
    (ucf_root / "UCF-101").rename(ucf_root / "videos")
    for path in (ucf_root / "videos").iterdir():
        path.rename(ucf_root / path.name)
    spec = resolve_source(f"ucf101:{ucf_root}:2")
    assert relative(spec.train, ucf_root) == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0)]
    assert relative(spec.test, ucf_root) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0), ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 2)]


def test_ucf101_errors_name_the_missing_thing(ucf_root, tmp_path):
    with pytest.raises(ValueError, match="trainlist03.txt not found"):
        resolve_source(f"ucf101:{ucf_root}:3")
    with pytest.raises(ValueError, match=r"split must be one of \(1, 2, 3\), got 4"):
        resolve_source(f"ucf101:{ucf_root}:4")
    with pytest.raises(ValueError, match="UCF101 root .*missing is not a directory"):
        resolve_source(f"ucf101:{tmp_path / 'missing'}")
    (ucf_root / "UCF-101").rename(ucf_root / "elsewhere")
    with pytest.raises(ValueError, match="none of the 4 videos listed in .*trainlist01.txt exists"):
        resolve_source(f"ucf101:{ucf_root}")
    (ucf_root / "ucfTrainTestlist" / "classInd.txt").unlink()
    with pytest.raises(ValueError, match="classInd.txt not found"):
        resolve_source(f"ucf101:{ucf_root}")


def test_hmdb51(tmp_path):
    lists = tmp_path / "testTrainMulti_7030_splits"
    lists.mkdir()
    (lists / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \nApril_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
        "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 0 \n")
    (lists / "cartwheel_test_split1.txt").write_text("Cartwheel_1_cart_f_cm_np1_le_med_0.avi 1 \n"
                                                     "Cartwheel_2_cart_f_cm_np1_le_med_0.avi 1 \n")
    (lists / "cartwheel_test_split2.txt").write_text("Cartwheel_1_cart_f_cm_np1_le_med_0.avi 2 \n")
    for name in ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "April_09_brush_hair_u_nm_np1_ba_goo_1.avi"):
        touch(tmp_path / "brush_hair" / name)
    touch(tmp_path / "cartwheel" / "Cartwheel_1_cart_f_cm_np1_le_med_0.avi")  # _2 is missing: kept, reported later
    spec = resolve_source(f"hmdb51:{tmp_path}")
    assert spec.classes == ["brush_hair", "cartwheel"]
    assert relative(spec.train, tmp_path) == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("cartwheel/Cartwheel_1_cart_f_cm_np1_le_med_0.avi", 1), ("cartwheel/Cartwheel_2_cart_f_cm_np1_le_med_0.avi", 1)]
    assert relative(spec.test, tmp_path) == [("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 0)]
    split2 = resolve_source(f"hmdb51:{tmp_path}:2")
    assert split2.classes == ["cartwheel"] and len(split2.test) == 1 and not split2.train
    with pytest.raises(ValueError, match="no HMDB51 split files .*_test_split3.txt"):
        resolve_source(f"hmdb51:{tmp_path}:3")
    (lists / "cartwheel_test_split1.txt").write_text("Cartwheel_1_cart_f_cm_np1_le_med_0.avi 7\n")
    with pytest.raises(ValueError, match="expected 0, 1 or 2"):
        resolve_source(f"hmdb51:{tmp_path}")


def test_kinetics(tmp_path):
    csv_path = tmp_path / "k.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,--07WQ2iBlw,1,11,train\n"
        '"passing American football (in game)",-0lmo8ZmHoY,25,35,train\n'
        "abseiling,0wR5jVB-WPk,417,427,val\n"
        "abseiling,missingVid01,0,10,train\n"
        ",noLabel0000,0,10,test\n"
    )
    root = tmp_path / "videos"
    touch(root / "train" / "abseiling" / "--07WQ2iBlw_000001_000011.mp4")
    touch(root / "train" / "passing American football (in game)" / "-0lmo8ZmHoY_000025_000035.mp4")
    touch(root / "0wR5jVB-WPk_000417_000427.mp4")  # flat layout works too: files are found by name
    spec = resolve_source(f"kinetics:{csv_path}:{root}")
    assert spec.classes == ["abseiling", "passing American football (in game)"]
    assert relative(spec.train, root) == [
        ("train/abseiling/--07WQ2iBlw_000001_000011.mp4", 0),
        ("train/passing American football (in game)/-0lmo8ZmHoY_000025_000035.mp4", 1),
        ("abseiling/missingVid01_000000_000010.mp4", 0)]  # absent: left for the scan to report
    assert relative(spec.test, root) == [("0wR5jVB-WPk_000417_000427.mp4", 0)]
    (tmp_path / "bad.csv").write_text("label,youtube_id\nabseiling,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['split', 'time_end', 'time_start'\]"):
        resolve_source(f"kinetics:{tmp_path / 'bad.csv'}:{root}")
    with pytest.raises(ValueError, match="Kinetics annotation CSV .*nope.csv not found"):
        resolve_source(f"kinetics:{tmp_path / 'nope.csv'}:{root}")


def test_folder_hash_split(tmp_path):
    names = [f"clip{i:02d}.mp4" for i in range(40)]
    for cls in ("walk", "run"):
        for name in names:
            touch(tmp_path / cls / name)
    touch(tmp_path / "walk" / ".DS_Store")
    touch(tmp_path / "notes.txt")  # not in a class folder: ignored
    spec = resolve_source(f"folder:{tmp_path}")
    assert spec.classes == ["run", "walk"]
    assert len(spec.train) + len(spec.test) == 80
    for record in spec.train + spec.test:
        assert (record in spec.test) == folder_split_is_test(spec.classes[record.label], record.path.name)
    assert 8 <= len(spec.test) <= 24  # about 20%
    # a video's split depends on its own name only: adding videos moves none
    for i in range(40, 60):
        touch(tmp_path / "walk" / f"clip{i:02d}.mp4")
    grown = resolve_source(f"folder:{tmp_path}")
    assert set(spec.test) <= set(grown.test) and set(spec.train) <= set(grown.train)


def test_folder_with_train_and_test(tmp_path):
    touch(tmp_path / "train" / "a" / "1.mp4")
    touch(tmp_path / "train" / "b" / "2.mp4")
    touch(tmp_path / "test" / "b" / "3.mp4")
    spec = resolve_source(f"folder:{tmp_path}")
    assert spec.classes == ["a", "b"]
    assert relative(spec.train, tmp_path) == [("train/a/1.mp4", 0), ("train/b/2.mp4", 1)]
    assert relative(spec.test, tmp_path) == [("test/b/3.mp4", 1)]


def test_bad_sources(tmp_path):
    for bad in ("", "nope", "mp4:x", "folder:", "kinetics:x.txt:y"):
        with pytest.raises(ValueError, match="bad data source"):
            resolve_source(bad)
    with pytest.raises(ValueError, match="folder dataset .*missing is not a directory"):
        resolve_source(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="has no class sub-folders"):
        resolve_source(f"folder:{tmp_path}")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"the class folders \['a'\] contain no files"):
        resolve_source(f"folder:{tmp_path}")


def test_cli_check_missing_split_file_exits_2(ucf_root):
    result = CliRunner().invoke(app, ["data", "check", f"ucf101:{ucf_root}:3"])
    assert result.exit_code == 2
    assert "trainlist03.txt not found" in result.output
