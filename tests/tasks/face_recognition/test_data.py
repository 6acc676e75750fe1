"""Face data formats and metrics: RecordIO, .bin pairs, the 10-fold protocol, TAR@FAR, margin heads."""

import io
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from tasks.face_recognition.data import RecordFaceDataset, face_imagefolder, face_synthetic
from tasks.face_recognition.heads import ArcFace, CosFace
from tasks.face_recognition.recordio import (
    MAGIC,
    IndexedRecordReader,
    IRHeader,
    encode_image,
    encode_record,
    pack,
    read_record,
    unpack,
    write_face_rec,
    write_indexed,
)
from tasks.face_recognition.verification import (
    VerificationSet,
    evaluate_pairs,
    read_bin,
    tar_at_far,
    ten_fold_accuracy,
    write_bin,
)


def test_record_container_splits_and_rejoins_payloads_holding_the_magic_word(tmp_path):
    magic = struct.pack("<I", MAGIC)
    payloads = [b"abc", b"", b"1234" + magic + b"5678" + magic + b"9", magic, b"x" * 4099]
    write_indexed(tmp_path / "t.rec", enumerate(payloads))
    raw = (tmp_path / "t.rec").read_bytes()
    assert len(raw) % 4 == 0
    # the third payload is stored as three parts flagged 1, 2, 3 (dmlc-core's continuation flags)
    third = encode_record(payloads[2])
    flags = [struct.unpack("<I", third[o + 4:o + 8])[0] >> 29 for o in (0, 12, 24)]
    assert flags == [1, 2, 3]
    reader = IndexedRecordReader(tmp_path / "t.rec")
    assert [reader.read(k) for k in range(len(payloads))] == payloads
    with pytest.raises(ValueError, match="not a RecordIO record"):
        read_record(io.BytesIO(b"\0" * 16))


def test_irheader_pack_unpack_scalar_and_vector_labels():
    header, body = unpack(pack(IRHeader(0, 7.0, 3, 0), b"img"))
    assert (header.flag, header.label, header.id, body) == (0, 7.0, 3, b"img")
    header, body = unpack(pack(IRHeader(0, [1.0, 9.0], 0, 0), b"jpg"))
    assert header.flag == 2 and header.label.tolist() == [1.0, 9.0] and body == b"jpg"


def test_insightface_rec_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(6)]
    labels = [1, 0, 1, 2, 0, 2]
    write_face_rec(tmp_path / "train.rec", images, labels, fmt="PNG")
    header0, _ = unpack(IndexedRecordReader(tmp_path / "train.rec").read(0))
    assert header0.label.tolist() == [7.0, 10.0]  # images 1..6, identity records 7..9
    ds = RecordFaceDataset(tmp_path, image_size=12, augment=False)
    assert len(ds) == 6 and sorted(ds.labels) == sorted(labels)
    for i in range(6):
        x, y = ds[i]
        original = images[[j for j in range(6) if labels[j] == y][sum(ds.labels[k] == y for k in range(i))]]
        assert torch.allclose(x, torch.from_numpy(original).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5))
    # identity records hold each identity's [first, end) image range
    reader = IndexedRecordReader(tmp_path / "train.rec")
    ranges = [unpack(reader.read(k))[0].label.tolist() for k in (7, 8, 9)]
    assert ranges == [[1.0, 3.0], [3.0, 5.0], [5.0, 7.0]]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RecordFaceDataset(tmp_path / "nowhere")


def test_bin_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    write_bin(tmp_path / "p.bin", [encode_image(im, "PNG") for im in images], [True, False])
    bins, issame = read_bin(tmp_path / "p.bin")
    assert issame == [True, False] and len(bins) == 4
    # insightface pickles bytes lists; reading with encoding="bytes" as its load_bin does works too
    with open(tmp_path / "p.bin", "rb") as f:
        assert pickle.load(f, encoding="bytes")[1] == [True, False]
    pairs = VerificationSet(tmp_path / "p.bin", image_size=8)
    assert pairs.images.shape == (4, 3, 8, 8)
    assert torch.allclose(pairs.images[3], torch.from_numpy(images[3]).permute(2, 0, 1).float() / 127.5 - 1)
    (tmp_path / "bad.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.bin"):
        read_bin(tmp_path / "bad.bin")


def test_ten_fold_accuracy_against_a_hand_computation():
    # 20 pairs, folds of two: genuine at distance 0.5, impostors at 1.5, except a far genuine pair (#0, fold 0)
    # and a close impostor (#3, fold 1). Every fold's best threshold on the other nine is 0.51 (first of the
    # tie (0.5, 1.5]); folds 0 and 1 then get one of their two pairs right, the other eight folds both.
    issame = [i % 2 == 0 for i in range(20)]
    dist = np.where(issame, 0.5, 1.5)
    dist[0], dist[3] = 2.0, 0.2
    row = ten_fold_accuracy(dist, issame)
    assert row["accuracy"] == pytest.approx((0.5 + 0.5 + 8) / 10)
    assert row["accuracy_std"] == pytest.approx(math.sqrt((2 * 0.4 ** 2 + 8 * 0.1 ** 2) / 10))
    assert row["threshold"] == pytest.approx(0.51)
    # TAR at FAR 0.5: accepting half the impostors accepts the nine close genuine pairs, not the far one
    assert tar_at_far(-dist, issame, [0.5])[0.5] == pytest.approx(0.9)


def test_evaluate_pairs_perfect_embeddings():
    emb = np.repeat(np.eye(20)[:, :], 2, axis=0)  # pairs (2i, 2i+1) identical
    emb[1::2][1::2] = np.roll(np.eye(20), 1, axis=1)[1::2]  # odd pairs: impostors
    issame = [i % 2 == 0 for i in range(20)]
    row = evaluate_pairs(emb, issame, fars=[0.1])
    assert row["accuracy"] == 1.0 and row["tar@far=0.1"] == 1.0


def test_arcface_and_cosface_logits_follow_the_formulas():
    torch.manual_seed(0)
    head = ArcFace(4, 3)  # s = 64, m = 0.5
    emb = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        head.kernel[:, 2] = -emb[2] * 3  # sample 2 at ~180 degrees from its class: theta + m > pi branch
    with torch.no_grad():
        logits = head(emb, labels)
    for i in range(5):
        for j in range(3):
            w = head.kernel[:, j].detach()
            cos = float(emb[i] @ w / (emb[i].norm() * w.norm()))
            theta = math.acos(max(-1.0, min(1.0, cos)))
            if j == labels[i]:
                expected = 64 * (math.cos(theta + 0.5) if theta + 0.5 < math.pi else cos - math.sin(math.pi - 0.5) * 0.5)
            else:
                expected = 64 * cos
            assert float(logits[i, j]) == pytest.approx(expected, abs=1e-3)
    assert float(logits[2, 2]) == pytest.approx(64 * (-1 - math.sin(math.pi - 0.5) * 0.5), abs=1e-2)
    cosface = CosFace(4, 3)
    plain = cosface(emb)
    margin = cosface(emb, labels)
    assert torch.allclose(plain - margin, 64 * 0.35 * torch.nn.functional.one_hot(labels, 3).float(), atol=1e-4)


def test_synthetic_default_is_cached_and_reads_back(tmp_path):
    data = face_synthetic(identities=4, images_per_identity=3, pairs=20, image_size=16, cache_dir=str(tmp_path))
    assert data.num_classes == 4 and len(data.train) == 12 and data.input_shape == (3, 16, 16)
    assert len(data.val.issame) == 20 and sum(data.val.issame) == 10
    assert list(data.verification) == ["synthetic_test"]
    folders = list(tmp_path.glob("face_synthetic/*")) or list(tmp_path.glob("*"))
    stamp = [p.stat().st_mtime for p in tmp_path.rglob("train.rec")]
    face_synthetic(identities=4, images_per_identity=3, pairs=20, image_size=16, cache_dir=str(tmp_path))
    assert [p.stat().st_mtime for p in tmp_path.rglob("train.rec")] == stamp and folders


def test_align_maps_the_landmarks_onto_the_arcface_points(tmp_path):
    cv2 = pytest.importorskip("cv2")
    arcface_dst = pytest.importorskip("insightface.utils.face_align").arcface_dst  # the `face` extra

    from tasks.face_recognition.align import main as align_main

    # a 200x180 photo with bright dots at the five landmarks of a scaled, shifted face
    points = arcface_dst * 1.4 + np.array([15.0, 25.0])
    image = np.zeros((200, 180, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1)
    (tmp_path / "raw" / "alice").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "raw" / "alice" / "a.png"), image)
    (tmp_path / "lmk.txt").write_text("alice/a.png " + " ".join(f"{v:.3f}" for v in points.ravel()) + "\n")
    assert align_main(["--landmarks", str(tmp_path / "lmk.txt"), "--input", str(tmp_path / "raw"),
                       "--output", str(tmp_path / "out"), "--rec", "--no-progress"]) == 0
    crop = cv2.imread(str(tmp_path / "out" / "alice" / "a.png"))
    assert crop.shape == (112, 112, 3)
    for x, y in arcface_dst:
        assert crop[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 200
    assert RecordFaceDataset(tmp_path / "out", image_size=112, augment=False).labels == [0]
    # the aligned folder is also an ImageFolder training set (with a .bin next to it)
    write_bin(tmp_path / "out" / "pairs.bin", [encode_image(crop[..., ::-1].copy())] * 20, [True, False] * 5)
    folder = face_imagefolder(str(tmp_path / "out"), train_dir=".", image_size=56)
    assert folder.num_classes == 1 and len(folder.train) == 1 and folder.train[0][0].shape == (3, 56, 56)
    assert list(folder.verification) == ["pairs"] and folder.val.images.shape == (20, 3, 56, 56)
    (tmp_path / "bad.txt").write_text("alice/a.png 1 2 3\n")
    assert align_main(["--landmarks", str(tmp_path / "bad.txt"), "--input", str(tmp_path / "raw"),
                       "--output", str(tmp_path / "out2"), "--no-progress"]) == 2
