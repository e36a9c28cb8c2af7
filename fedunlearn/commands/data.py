"""``fedunlearn data``: list and check a SuperNode's own data folder before it starts.

``fedunlearn data ids --data-dir DIR`` prints one line per sample of the node: its id
(what ``fedunlearn forget --kind instance --ids`` names), label, split (train or val)
and, for an ImageFolder, its file. ``fedunlearn data check --data-dir DIR
[--num-classes K]`` checks the folder as the node will and prints a one-line summary.
Both make and keep the node's 80:20 split on first use (see
:mod:`fedunlearn.data.nodefiles`); a malformed folder exits 2 after one line.

The data layer (and torch) is imported only when a sub-command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedunlearn.commands.args import OneLineParser, UsageError
from fedunlearn.errors import UserError, report

if TYPE_CHECKING:
    from fedunlearn.data.nodefiles import NodeFiles, NodeSplit

__all__ = ["PROG", "data_command"]

PROG = "fedunlearn data"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="List or check a SuperNode's own data folder (node config data-dir): "
        "one .npz with arrays x and y, or an ImageFolder (one sub-folder per class).",
    )
    commands = parser.add_subparsers(dest="action", metavar="{ids,check}")
    ids = commands.add_parser("ids", allow_abbrev=False,
                              help="print every sample's id, label, split and file")
    check = commands.add_parser("check", allow_abbrev=False,
                                help="check the folder and print a one-line summary")
    for sub in (ids, check):
        sub.add_argument("--data-dir", required=True, type=Path, help="the node's data folder")
    check.add_argument("--num-classes", type=_positive,
                       help="the run's number of classes: labels must lie in 0..K-1")
    return parser


def data_command(argv: list[str]) -> int:
    """Run ``fedunlearn data ids|check``.

    Parameters
    ----------
    argv : list of str
        The arguments after ``data``.

    Returns
    -------
    int
        0 after the listing or summary; 2 after a one-line error on stderr.
    """
    try:
        args = _parser().parse_args(argv)
        if args.action is None:
            raise UsageError("give a sub-command: ids or check")
        files, split = _read(args.data_dir, getattr(args, "num_classes", None))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UserError as exc:  # usage, a malformed folder, a changed data set
        return report(PROG, exc)
    if args.action == "ids":
        _print_ids(files, split)
    else:
        print(_summary(files, split))
    return 0


def _read(data_dir: Path, num_classes: int | None) -> tuple[NodeFiles, NodeSplit]:
    """The folder read and checked as the node reads it, and its kept split."""
    from fedunlearn.data.nodefiles import check_labels, node_split, read_node_files

    files = read_node_files(data_dir)
    if num_classes is not None:
        check_labels(files, num_classes)
    return files, node_split(files)


def _print_ids(files: NodeFiles, split: NodeSplit) -> None:
    """One tab-separated line per sample after a header; ``file`` for an ImageFolder."""
    val = set(split.val_ids.tolist())
    print("id\tlabel\tsplit" + ("\tfile" if files.files else ""))
    for sample, label in enumerate(files.labels.tolist()):
        line = f"{sample}\t{label}\t{'val' if sample in val else 'train'}"
        print(line + (f"\t{files.files[sample]}" if files.files else ""))


def _summary(files: NodeFiles, split: NodeSplit) -> str:
    shown = ", ".join(files.classes[:10]) + (", ..." if len(files.classes) > 10 else "")
    channels, height, width = files.shape
    return (f"ok: {files.root}: {len(files)} samples ({files.kind}), "
            f"{len(files.classes)} classes ({shown}), images {channels}x{height}x{width} "
            f"{files.pixels.dtype}, split {len(split.train_ids)} train / "
            f"{len(split.val_ids)} val kept in {split.path}")
