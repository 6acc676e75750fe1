"""Detection data readers (generated shapes in COCO format, COCO JSON, Pascal VOC XML) and COCO mAP."""

import json

import pytest
import torch

from core.engine.registry import ConfigError
from tasks.detection.data import coco, shapes, voc
from tasks.detection.metrics import coco_map


def test_shapes_are_written_in_coco_format_and_read_back(tmp_path):
    data = shapes(root=str(tmp_path / "s"), image_size=64, train=6, val=3, test=3, seed=1)
    ann = json.loads((tmp_path / "s" / "annotations" / "instances_train.json").read_text())
    assert len(ann["images"]) == 6 and [c["name"] for c in ann["categories"]] == data.class_names
    assert data.num_classes == 4 and data.input_shape == (3, 64, 64)
    image, target = data.val[0]
    assert image.shape == (3, 64, 64) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["boxes"].shape[1] == 4 and bool((target["labels"] >= 1).all())
    # the same files through the generic COCO reader
    again = coco(str(tmp_path / "s"), train_ann="annotations/instances_train.json", train_images="train",
                 val_ann="annotations/instances_val.json", val_images="val")
    assert torch.equal(again.val[0][1]["boxes"], target["boxes"])


def test_coco_map_is_100_for_ground_truth_and_lower_for_shifted_boxes(tmp_path):
    data = shapes(root=str(tmp_path / "s"), image_size=64, train=2, val=2, test=8, seed=2)
    gt = data.test.coco
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt.dataset["annotations"]]
    assert coco_map(gt, perfect)["AP"] == pytest.approx(100.0)
    shifted = [dict(r, bbox=[r["bbox"][0] + r["bbox"][2] * 0.3, *r["bbox"][1:]]) for r in perfect]
    m = coco_map(gt, shifted)
    assert m["AP50"] == pytest.approx(100.0) and m["AP75"] < 100.0 and m["AP"] < 100.0
    assert coco_map(gt, [])["AP"] == 0.0


def _voc_xml(name, boxes):
    objs = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                   f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for c, d, (x1, y1, x2, y2) in boxes)
    return f"<annotation><filename>{name}.jpg</filename><size><width>40</width><height>30</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def test_pascal_voc_xml_reader(tmp_path):
    from PIL import Image

    root = tmp_path / "VOC"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for stem, boxes in {"a": [("cat", 0, (1, 2, 11, 12)), ("dog", 1, (5, 5, 9, 9))],
                        "b": [("dog", 0, (3, 4, 20, 25))]}.items():
        Image.new("RGB", (40, 30), (100, 50, 25)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, boxes))
    (root / "ImageSets/Main/trainval.txt").write_text("a\nb\n")
    (root / "ImageSets/Main/val.txt").write_text("b\n")
    data = voc(str(root), classes=["cat", "dog"], test_split=None)
    assert data.num_classes == 2 and data.class_names == ["cat", "dog"]
    image, target = data.val[0]
    assert image.shape == (3, 30, 40)
    assert target["labels"].tolist() == [2]
    assert target["boxes"].tolist() == [[2.0, 3.0, 20.0, 25.0]]  # 1-based VOC pixels -> 0-based
    _, first = data.train.__class__(data.train.image_dir, data.train.coco.dataset)[0]
    assert first["labels"].tolist() == [1]  # the difficult dog is left out
    (root / "Annotations" / "b.xml").write_text(_voc_xml("b", [("horse", 0, (1, 1, 5, 5))]))
    with pytest.raises(ConfigError, match="horse"):
        voc(str(root), classes=["cat", "dog"], test_split=None)


def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        coco(str(tmp_path / "nowhere"))
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        coco(str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="data.train"):
        shapes(root=str(tmp_path / "s"), train=0)


def test_invalid_coco_annotations_are_dropped_from_training_and_ground_truth_with_a_count(tmp_path, capsys):
    shapes(root=str(tmp_path / "s"), image_size=64, train=3, val=3, test=1, seed=3)
    path = tmp_path / "s" / "annotations" / "instances_val.json"
    ann = json.loads(path.read_text())
    valid = len(ann["annotations"])
    image = ann["images"][0]["id"]
    ann["annotations"] += [
        {"id": 9001, "image_id": image, "category_id": 77, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 9002, "image_id": image, "category_id": 1, "bbox": [5, 5, -3, 8], "area": -24, "iscrowd": 0},
        {"id": 9003, "image_id": image, "category_id": 1, "bbox": [5, 5, 0, 8], "area": 0, "iscrowd": 0},
        {"id": 9004, "image_id": 12345, "category_id": 1, "bbox": [5, 5, 3, 8], "area": 24, "iscrowd": 0}]
    path.write_text(json.dumps(ann))
    data = coco(str(tmp_path / "s"), train_ann="annotations/instances_train.json", train_images="train",
                val_ann="annotations/instances_val.json", val_images="val")
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "data.val_ann" in warning[0] and f"dropped 4 of {valid + 4}" in warning[0]
    assert "1 with an unknown category_id (e.g. id 9001)" in warning[0]
    assert "2 with a box of zero or negative size (e.g. id 9002)" in warning[0]
    assert "image_id not in images (e.g. id 9004)" in warning[0]
    # the ground truth mAP is scored on holds exactly what training sees
    assert len(data.val.coco.dataset["annotations"]) == valid
    assert sum(len(data.val.target(i)["labels"]) for i in data.val.ids) == valid
