"""Score a Problem 1 prediction csv (what hw1_1.sh writes) against a labelled csv: accuracy.

    python3 p1_evaluate.py --pred results/p1_val_pred.csv \\
        --labels hw1_data/p1_data/office/val.csv
    python3 p1_evaluate.py --pred pred.csv --labels val.csv --json scores.json

The prediction csv is the course's format: the header `filename,label` (no space), then one row
per image, the bare file name and an integer label. The labelled csv is the course's
`id,filename,label` (val.csv). Rows are paired by file name (the order does not matter); every
labelled image needs exactly one prediction. It prints `accuracy: 0.xxxx` and the count; --json
also writes the per-class counts. A wrong header, a missing or extra row, a file predicted
twice or a label that is not an integer end in one line naming it (HW1_DEBUG=1 adds the
traceback). Torch-free: it starts in well under a second.
"""

import argparse
import csv
import sys
from pathlib import Path

import cli
from data import read_office_csv
from errors import UserError
from records import writable_dir, write_json


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        description="Accuracy of a filename,label prediction csv (hw1_1.sh's output) against a "
                    "labelled id,filename,label csv.")
    parser.add_argument("--pred", required=True, type=Path,
                        help="the predictions: header filename,label, one row per image")
    parser.add_argument("--labels", required=True, type=Path,
                        help="the truth: a csv with header id,filename,label (e.g. val.csv)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write accuracy, counts and per-class counts to this file")
    return parser


def read_predictions(path):
    """filename,label csv -> {bare file name: int label}."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prediction csv {path} does not exist; pass the csv hw1_1.sh wrote")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["filename", "label"]:  # exactly: the course reads it so
        found = ",".join(rows[0]) if rows else "nothing"
        raise UserError(f"{path} starts with {found!r}; the course's header is filename,label "
                        "(no space)")
    preds = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise UserError(f"{path}:{line_no} has {len(row)} fields, expected filename,label")
        name, label = Path(row[0].strip()).name, row[1].strip()
        if not label.lstrip("-").isdigit():
            raise UserError(f"{path}:{line_no} has label {label!r}; expected an integer")
        if name in preds:
            raise UserError(f"{path}:{line_no} predicts {name} a second time")
        preds[name] = int(label)
    return preds


def score(preds, truth):
    """{name: label} against [(name, label)] -> (correct, total, {label: [correct, total]})."""
    names = {Path(r["filename"]).name: r["label"] for r in truth}
    missing = [n for n in names if n not in preds]
    extra = [n for n in preds if n not in names]
    if missing:
        raise UserError(f"{len(missing)} labelled image(s) have no prediction, e.g. "
                        f"{missing[0]}; the prediction csv needs one row per image")
    if extra:
        raise UserError(f"{len(extra)} prediction(s) name images the labels do not have, e.g. "
                        f"{extra[0]}; pass the labels of the same images")
    per_class = {}
    for name, label in names.items():
        counts = per_class.setdefault(label, [0, 0])
        counts[0] += int(preds[name] == label)
        counts[1] += 1
    correct = sum(c for c, _ in per_class.values())
    return correct, len(names), dict(sorted(per_class.items()))


def main(args):
    if args.json is not None:  # before the scoring, not after it
        writable_dir(args.json.parent, "--json path")
    preds = read_predictions(args.pred)
    correct, total, per_class = score(preds, read_office_csv(args.labels))
    accuracy = correct / total
    print(f"accuracy: {accuracy:.4f} ({correct}/{total})")
    if args.json is not None:
        write_json(args.json, {"accuracy": accuracy, "correct": correct, "total": total,
                               "per_class": {str(k): {"correct": c, "total": n}
                                             for k, (c, n) in per_class.items()}})
    sys.stdout.flush()
    return accuracy


if __name__ == "__main__":
    cli.run(main, get_args_parser())
