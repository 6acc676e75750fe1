"""Align raw face photos to 112x112 crops from five landmarks (insightface's `norm_crop`).

    python -m tasks.face_recognition.align --landmarks lmk.txt --input raw/ --output aligned/ [--rec]

The landmarks file has one line per image: its path relative to `--input`
and ten numbers, the (x, y) pixel positions of the left eye, right eye, nose
tip, left and right mouth corners (the order of insightface's detectors and
`arcface_dst`), separated by spaces, tabs or commas; `#` starts a comment.
Each image is warped by the similarity transform that maps its landmarks onto
ArcFace's reference points (`insightface.utils.face_align.norm_crop`) and
written to the same relative path under `--output`, so `raw/<identity>/x.jpg`
becomes an ImageFolder of identities. `--rec` also packs the aligned folder
as an insightface `train.rec`/`train.idx` (identities numbered in sorted
folder order). Needs the `face` extra (insightface, opencv).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np


def read_landmarks(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """`(relative image path, 5x2 landmarks)` per line of a landmarks file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--landmarks: file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p for p in re.split(r"[\s,]+", line) if p]
        if len(parts) != 11:
            raise ValueError(f"{path}:{n}: expected an image path and 10 numbers, got {len(parts)} fields")
        try:
            points = np.array([float(v) for v in parts[1:]], dtype=np.float32).reshape(5, 2)
        except ValueError:
            raise ValueError(f"{path}:{n}: landmark values must be numbers: {parts[1:]}") from None
        rows.append((parts[0], points))
    if not rows:
        raise ValueError(f"{path}: no landmark lines")
    return rows


def align_image(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The `size` x `size` ArcFace crop of an HWC image (`norm_crop`; size a multiple of 112 or 128)."""
    import warnings

    from insightface.utils.face_align import norm_crop

    with warnings.catch_warnings():  # scikit-image's deprecation of SimilarityTransform.estimate inside insightface
        warnings.simplefilter("ignore", FutureWarning)
        return norm_crop(image, np.asarray(landmarks, dtype=np.float32), image_size=size)


def align_folder(landmarks: str | Path, input_dir: str | Path, output_dir: str | Path, size: int = 112,
                 progress: bool = True) -> list[Path]:
    """Align every image named in `landmarks`; returns the written paths."""
    import os

    import cv2
    from tqdm.auto import tqdm

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"--input: folder not found: {input_dir}")
    written = []
    rows = read_landmarks(landmarks)
    for rel, points in tqdm(rows, desc="align", unit="img",
                            disable=not progress or bool(os.environ.get("ARCHFORGE_NO_PROGRESS"))):
        src = input_dir / rel
        image = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"--input: cannot read image {src}")
        dst = output_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(dst), align_image(image, points, size)):
            raise OSError(f"cannot write {dst}")
        written.append(dst)
    return written


def pack_folder(folder: str | Path, rec: str | Path | None = None) -> Path:
    """An aligned ImageFolder (`folder/<identity>/*`) as insightface `train.rec`/`train.idx`/`property`."""
    from tasks.face_recognition.data import FolderFaceDataset
    from tasks.face_recognition.recordio import decode_image, write_face_rec

    ds = FolderFaceDataset(folder, augment=False)
    rec = Path(rec) if rec else Path(folder) / "train.rec"
    images = [decode_image(Path(p).read_bytes()) for p, _ in ds.samples]
    write_face_rec(rec, images, ds.labels)
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.face_recognition.align", description=__doc__.split("\n")[0])
    parser.add_argument("--landmarks", required=True, help="file of 'relative/path x1 y1 ... x5 y5' lines")
    parser.add_argument("--input", required=True, help="folder the paths are relative to")
    parser.add_argument("--output", required=True, help="folder for the aligned crops (same relative paths)")
    parser.add_argument("--size", type=int, default=112, help="crop size (112 as ArcFace; multiples of 112 or 128)")
    parser.add_argument("--rec", action="store_true", help="also write OUTPUT/train.rec, train.idx and property")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = align_folder(args.landmarks, args.input, args.output, args.size, not args.no_progress)
        print(f"aligned {len(written)} images to {args.size}x{args.size} in {args.output}")
        if args.rec:
            print(f"packed {pack_folder(args.output)}")
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"align: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
