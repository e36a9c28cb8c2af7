"""A node's own files: real ImageFolders (PNGs) and .npz files, their ids, the kept
80:20 split, the one-line refusals, forget ids on own data and ``fedunlearn data``."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from fedunlearn.cli import main
from fedunlearn.data import load_dataset
from fedunlearn.data import nodefiles as nf
from fedunlearn.data.partition import train_val_split
from fedunlearn.requests import ForgetRequest, RequestRefused, new_request_id
from tests.imagefiles import write_image_folder, write_npz

DIGITS = load_dataset("digits")  # the run's data set: 10 classes of 1 x 8 x 8
RNG = np.random.default_rng(0)


def refusal(excinfo: pytest.ExceptionInfo) -> str:
    """The refusal's message, checked to be one non-empty line."""
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# ---- reading ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts_read_channels_first_in_row_order(tmp_path, layout):
    channels = 1 if layout == "NHW" else 3
    pixels = RNG.integers(0, 256, size=(6, channels, 8, 8), dtype=np.uint8)
    stored = {"NHW": pixels[:, 0], "NHWC": pixels.transpose(0, 2, 3, 1), "NCHW": pixels}
    write_npz(tmp_path, stored[layout], np.arange(6) % 3)
    files = nf.read_node_files(tmp_path)
    assert files.kind == "npz" and len(files) == 6 and files.shape == (channels, 8, 8)
    assert np.array_equal(files.pixels, pixels)
    assert files.labels.tolist() == [0, 1, 2, 0, 1, 2] and files.classes == ("0", "1", "2")
    assert files.files == ()


def test_float_npz_keeps_its_values(tmp_path):
    x = RNG.random((4, 8, 8)).astype(np.float64)
    write_npz(tmp_path, x, np.array([0, 1, 0, 1]))
    files = nf.read_node_files(tmp_path)
    assert files.pixels.dtype == np.float32
    assert np.allclose(files.pixels[:, 0], x)


def test_image_folder_ids_follow_torchvision_order_and_pixels(tmp_path):
    written = write_image_folder(tmp_path, {"dog": 3, "cat": 2})
    files = nf.read_node_files(tmp_path)
    reference = torchvision.datasets.ImageFolder(str(tmp_path))
    assert list(files.files) == [os.path.relpath(path, tmp_path) for path, _ in reference.samples]
    assert files.labels.tolist() == [label for _, label in reference.samples] == [0, 0, 1, 1, 1]
    assert files.classes == ("cat", "dog") and files.shape == (1, 8, 8)
    for sample, name in enumerate(files.files):
        assert np.array_equal(files.pixels[sample, 0], written[name])
    # The split folder the node keeps inside is hidden, never a class.
    nf.node_split(files)
    again = nf.read_node_files(tmp_path)
    assert again.classes == ("cat", "dog") and again.fingerprint == files.fingerprint


def test_integer_class_folders_are_their_labels(tmp_path):
    # A node holding classes 3 and 7 only labels them 3 and 7, as every other node does.
    write_image_folder(tmp_path, {"7": 2, "3": 1}, mode="RGB")
    files = nf.read_node_files(tmp_path)
    assert files.labels.tolist() == [3, 7, 7] and files.classes == ("3", "7")
    assert files.shape == (3, 8, 8)


# ---- the kept split -----------------------------------------------------------------


def test_split_is_80_20_kept_private_and_not_recomputed(tmp_path, monkeypatch):
    write_image_folder(tmp_path, {"0": 10, "1": 15})
    split = nf.node_split(nf.read_node_files(tmp_path))
    assert (len(split.train_ids), len(split.val_ids)) == (20, 5)
    assert np.array_equal(np.union1d(split.train_ids, split.val_ids), np.arange(25))
    assert split.path == tmp_path / ".fedunlearn" / "split.json"
    assert stat.S_IMODE(split.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(split.path.parent.stat().st_mode) == 0o700
    # Another seed would split otherwise: the kept split is read back, not recomputed.
    monkeypatch.setattr(nf, "SPLIT_SEED", 99)
    assert not np.array_equal(train_val_split(np.arange(25), 0.2, 99)[1], split.val_ids)
    again = nf.node_split(nf.read_node_files(tmp_path))
    assert np.array_equal(again.val_ids, split.val_ids)
    assert np.array_equal(again.train_ids, split.train_ids)


def test_a_changed_image_folder_is_refused(tmp_path):
    write_image_folder(tmp_path, {"0": 4, "1": 4})
    nf.node_split(nf.read_node_files(tmp_path))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "0" / "img_000a.png")
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.node_split(nf.read_node_files(tmp_path))
    assert "changed since its split was kept (8 samples then, 9 now)" in refusal(excinfo)


def test_a_reordered_npz_is_refused(tmp_path):
    x = RNG.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    y = np.arange(10) % 2
    write_npz(tmp_path, x, y)
    nf.node_split(nf.read_node_files(tmp_path))
    write_npz(tmp_path, x[::-1], y)  # the same samples, other ids
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.node_split(nf.read_node_files(tmp_path))
    assert "changed" in refusal(excinfo)


# ---- malformed folders: refused with one line ---------------------------------------


def _empty(root: Path) -> None:
    root.mkdir(exist_ok=True)


def _class_without_images(root: Path) -> None:
    write_image_folder(root, {"a": 2})
    (root / "b").mkdir()


def _mixed_sizes(root: Path) -> None:
    write_image_folder(root, {"a": 2})
    write_image_folder(root, {"b": 1}, size=(10, 8))


def _not_an_image(root: Path) -> None:
    write_image_folder(root, {"a": 2})
    (root / "a" / "broken.png").write_text("not a png")


def _npz_without_y(root: Path) -> None:
    write_npz(root, np.zeros((3, 8, 8), np.uint8))


def _lengths_differ(root: Path) -> None:
    write_npz(root, np.zeros((5, 8, 8), np.uint8), np.zeros(4, np.int64))


def _negative_label(root: Path) -> None:
    write_npz(root, np.zeros((3, 8, 8), np.uint8), np.array([0, -1, 1]))


def _bad_shape(root: Path) -> None:
    write_npz(root, np.zeros((3, 64), np.uint8), np.zeros(3, np.int64))


def _float_beyond_one(root: Path) -> None:
    write_npz(root, np.full((3, 8, 8), 2.0), np.zeros(3, np.int64))


def _two_formats(root: Path) -> None:
    write_image_folder(root, {"a": 1})
    write_npz(root, np.zeros((3, 8, 8), np.uint8), np.zeros(3, np.int64))


def _corrupt_npz(root: Path) -> None:
    root.mkdir()
    (root / "data.npz").write_bytes(b"not a zip archive")


def _no_samples(root: Path) -> None:
    write_npz(root, np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.int64))


@pytest.mark.parametrize(("make", "says"), [
    (_empty, "has no classes"),
    (_class_without_images, "Found no valid file for the classes b"),
    (_mixed_sizes, "mixed sizes: a/img_000.png is 8x8, b/img_000.png is 10x8"),
    (_not_an_image, "cannot read image a/broken.png"),
    (_npz_without_y, "data.npz lacks array(s) y"),
    (_lengths_differ, "x holds 5 samples but y 4 labels"),
    (_negative_label, "labels must be >= 0, got -1 (row 1)"),
    (_bad_shape, "x has shape (3, 64)"),
    (_float_beyond_one, "float pixels must lie in [0, 1]"),
    (_two_formats, "both an .npz file and class folders"),
    (_no_samples, "holds no samples"),
    (_corrupt_npz, "cannot read"),
])
def test_malformed_folders_are_refused_in_one_line(tmp_path, make, says):
    make(tmp_path / "data")
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.read_node_files(tmp_path / "data")
    assert says in refusal(excinfo)


def test_a_missing_folder_and_a_corrupt_split_are_refused(tmp_path):
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.read_node_files(tmp_path / "absent")
    assert "is not a folder" in refusal(excinfo)
    write_image_folder(tmp_path, {"a": 3})
    nf.split_path(tmp_path).parent.mkdir()
    nf.split_path(tmp_path).write_text("{not json")
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.node_split(nf.read_node_files(tmp_path))
    assert "cannot read the split" in refusal(excinfo)


# ---- against the run ----------------------------------------------------------------


def test_load_normalizes_like_the_run_and_keeps_the_split(tmp_path):
    x = RNG.integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    write_npz(tmp_path, x, np.arange(10))
    own = nf.load_node_data(tmp_path, DIGITS)
    # digits' registry normalization, of pixels scaled to [0, 1]
    expected = (x[:, None] / 255.0 - 0.3053) / 0.3760
    assert np.allclose(own.data.images.numpy(), expected, atol=1e-5)
    assert own.data.labels.tolist() == list(range(10)) and own.data.num_classes == 10
    split = nf.node_split(nf.read_node_files(tmp_path))
    assert np.array_equal(own.train_ids, split.train_ids) and len(own.val_ids) == 2
    assert own.validation().labels.tolist() == split.val_ids.tolist()


@pytest.mark.parametrize(("make", "says"), [
    (lambda root: write_npz(root, np.zeros((3, 8, 8), np.uint8), np.array([0, 12, 1])),
     "label 12 (row 1) is out of range: the run has 10 classes (labels 0..9)"),
    (lambda root: write_image_folder(root, {"3": 1, "10": 1}),
     "label 10 (10/img_000.png) is out of range"),
    (lambda root: write_image_folder(root, {"0": 2}, size=(28, 28)),
     "are 1x28x28 but the run's model takes 1x8x8 (data set digits)"),
    (lambda root: write_image_folder(root, {"0": 2}, mode="RGB"),
     "are 3x8x8 but the run's model takes 1x8x8"),
])
def test_folders_that_do_not_fit_the_run_are_refused(tmp_path, make, says):
    make(tmp_path)
    with pytest.raises(nf.NodeDataError) as excinfo:
        nf.load_node_data(tmp_path, DIGITS)
    assert says in refusal(excinfo)


# ---- forget requests on the node's own ids ------------------------------------------

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
TRAIN = np.arange(8)  # ids 8 and 9 are validation samples


def request(kind, client=0, **fields):
    return ForgetRequest(request_id=new_request_id(), kind=kind, client=client, **fields)


def forget(*requests, client=0):
    return nf.own_forget_ids(requests, client, TRAIN, LABELS).tolist()


def test_own_forget_ids_per_kind():
    assert forget(request("client")) == TRAIN.tolist()
    assert forget(request("client", client=1)) == []  # another node leaving
    assert forget(request("class", client=1, cls=0)) == [0, 3, 6]  # every node, train only
    assert forget(request("class", cls=5)) == []  # a class this node does not hold
    assert forget(request("instance", ids=[1, 4])) == [1, 4]
    assert forget(request("instance", client=1, ids=[1, 4])) == []  # ids of node 1's own
    drawn = forget(request("instance", fraction=0.5, seed=3))
    assert len(drawn) == 4 and set(drawn) <= set(TRAIN.tolist())
    assert forget(request("instance", fraction=0.5, seed=3)) == drawn
    assert forget(request("instance", fraction=0.5, clients=[1])) == []
    assert forget(request("class", cls=0), request("instance", ids=[1])) == [0, 1, 3, 6]
    assert forget(request("backdoor", client=1)) == []


def test_own_forget_ids_refuse_validation_ids_and_backdoors():
    with pytest.raises(RequestRefused) as excinfo:
        forget(request("instance", ids=[2, 9]))
    assert "1 ids are not among this node's training ids: 9" in refusal(excinfo)
    with pytest.raises(RequestRefused) as excinfo:
        forget(request("backdoor"))
    assert "own files" in refusal(excinfo)


# ---- fedunlearn data ----------------------------------------------------------------


def test_data_ids_lists_each_sample_with_label_split_and_file(tmp_path, capsys):
    write_image_folder(tmp_path, {"cat": 3, "dog": 2})
    assert main(["data", "ids", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id\tlabel\tsplit\tfile"
    rows = [line.split("\t") for line in lines[1:]]
    split = nf.node_split(nf.read_node_files(tmp_path))
    assert rows == [[str(i), str(label), "val" if i in split.val_ids else "train", name]
                    for i, (label, name) in enumerate(zip(
                        [0, 0, 0, 1, 1],
                        ["cat/img_000.png", "cat/img_001.png", "cat/img_002.png",
                         "dog/img_000.png", "dog/img_001.png"], strict=True))]
    assert [row[2] for row in rows].count("val") == 1


def test_data_ids_of_an_npz_has_no_file_column(tmp_path, capsys):
    write_npz(tmp_path, np.zeros((5, 8, 8), np.uint8), np.array([4, 3, 2, 1, 0]))
    assert main(["data", "ids", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id\tlabel\tsplit" and len(lines) == 6
    assert [line.split("\t")[1] for line in lines[1:]] == ["4", "3", "2", "1", "0"]


def test_data_check_summarizes_and_refuses_in_one_line(tmp_path, capsys):
    write_image_folder(tmp_path / "ok", {"cat": 3, "dog": 2})
    assert main(["data", "check", "--data-dir", str(tmp_path / "ok"), "--num-classes", "2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"ok: {tmp_path / 'ok'}: 5 samples (imagefolder), 2 classes (cat, dog), "
                   f"images 1x8x8 uint8, split 4 train / 1 val kept in "
                   f"{tmp_path / 'ok' / '.fedunlearn' / 'split.json'}")
    assert main(["data", "check", "--data-dir", str(tmp_path / "ok"), "--num-classes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedunlearn data: error: label 1 (dog/")
    (tmp_path / "empty").mkdir()
    for argv in (["check", "--data-dir", str(tmp_path / "empty")], ["ids"], [],
                 ["check", "--data-dir", str(tmp_path / "ok"), "--num-classes", "0"]):
        assert main(["data", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fedunlearn data: error: ")


def test_the_data_command_imports_torch_only_when_it_runs():
    code = ("import sys, fedunlearn.cli, fedunlearn.commands.data; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
