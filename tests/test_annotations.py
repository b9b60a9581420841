"""camrt.annotations: both formats read, shapes mapped to the input size as the engine maps the
image (checked by hand and against the engine's own resize), and errors naming the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from camrt.annotations import Annotation, Rle, read_annotations, resize_mask
from camrt.engine.preprocess import preprocess
from camrt.errors import InputError
from camrt.manifest import Preprocessing


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def rle_string(counts: list[int]) -> str:
    """pycocotools' `rleToString`, written out as the test's reference encoder."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10) == 0 and x == 0 or (ch & 0x10) != 0 and x == -1)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts of a bool mask: column by column, starting with a run of 0s."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def test_boxes_map_to_the_input_by_pixel_centres(tmp_path) -> None:
    ann = read_annotations(write(tmp_path / "a.json", {"x.png": {"boxes": [[10, 4, 30, 20], [0, 38, 1, 39]]}}))
    assert ann.format == "camrt"
    m = ann.entries["x.png"][0].mask((40, 60), (20, 30))  # halved in both directions
    expected = np.zeros((20, 30), bool)
    expected[2:10, 5:15] = True  # [5, 15) × [2, 10) at the input size
    expected[19, 0] = True  # a box under a pixel: the pixel holding its centre (0.25, 19.25)
    np.testing.assert_array_equal(m, expected)
    # Stretched unevenly, as the engine's resize stretches the image: x × 32/64, y × 32/16.
    m = ann.entries["x.png"][0].mask((40, 64), (80, 32))
    assert m[8:40, 5:15].all() and m[77, 0] and m.sum() == 32 * 10 + 1  # the small box: 0..0.5 × 76..78


def test_mask_file_is_resized_as_the_engine_resizes_images(tmp_path) -> None:
    mask = np.zeros((64, 48), np.uint8)
    mask[16:48, 8:40] = 255
    mask[3, 3] = 255  # one pixel, washed out by the antialiased shrink
    assert cv2.imwrite(str(tmp_path / "x.mask.png"), mask)
    ann = read_annotations(write(tmp_path / "a.json", {"x.png": {"mask": "x.mask.png"}}))
    got = ann.entries["x.png"][0].mask((64, 48), (32, 24))
    expected = np.zeros((32, 24), bool)
    expected[8:24, 4:20] = True
    np.testing.assert_array_equal(got, expected)
    # The oracle for any size: the engine's own resize of the mask as an image, kept at ≥ 0.5.
    ours = resize_mask(mask > 0, (20, 31))
    x = preprocess([mask], (20, 31), Preprocessing((0, 0, 0), (1, 1, 1)))[0, 0]
    np.testing.assert_array_equal(ours, x >= 0.5)
    # Boxes and the mask of one entry are one union.
    ann = read_annotations(write(tmp_path / "b.json", {"x.png": {"mask": "x.mask.png", "boxes": [[0, 0, 4, 4]]}}))
    both = ann.entries["x.png"][0].mask((64, 48), (32, 24))
    assert both[:2, :2].all() and (both[8:24, 4:20]).all() and both.sum() == expected.sum() + 4


def test_coco_boxes_polygons_and_rle(tmp_path) -> None:
    rng = np.random.default_rng(1)
    blob = rng.random((30, 40)) < 0.3
    counts = rle_counts(blob)
    tri = [5.0, 5.0, 35.0, 8.0, 12.0, 27.0]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "sub/b.jpg"}, {"id": 3, "file_name": "c.jpg"},
                   {"id": 4, "file_name": "d.jpg"}],
        "annotations": [
            {"image_id": 1, "bbox": [4, 6, 10, 8], "segmentation": []},
            {"image_id": 2, "bbox": [0, 0, 1, 1], "segmentation": [tri]},
            {"image_id": 3, "segmentation": {"counts": counts, "size": [30, 40]}},
            {"image_id": 4, "segmentation": {"counts": rle_string(counts), "size": [30, 40]}},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = read_annotations(write(tmp_path / "coco.json", data))
    assert ann.format == "coco" and sorted(ann.entries) == ["a.jpg", "c.jpg", "d.jpg", "sub/b.jpg"]
    box = ann.entries["a.jpg"][0].mask((30, 40), (30, 40))
    expected = np.zeros((30, 40), bool)
    expected[6:14, 4:14] = True
    np.testing.assert_array_equal(box, expected)
    # The polygon (its box is ignored): pixel centres on the inner side of all three edges.
    poly = ann.entries["sub/b.jpg"][0].mask((30, 40), (30, 40))
    yc, xc = np.mgrid[0:30, 0:40] + 0.5
    p = np.array(tri).reshape(3, 2)
    sides = [(p[(i + 1) % 3, 0] - p[i, 0]) * (yc - p[i, 1]) - (p[(i + 1) % 3, 1] - p[i, 1]) * (xc - p[i, 0])
             for i in range(3)]
    np.testing.assert_array_equal(poly, np.all([s > 0 for s in sides], axis=0))
    assert 200 < poly.sum() < 400
    # RLE, plain and compressed: the same mask, at the image's size, then resized as an image.
    np.testing.assert_array_equal(Rle(tuple(counts), (30, 40)).decode(), blob)
    for key in ("c.jpg", "d.jpg"):
        np.testing.assert_array_equal(ann.entries[key][0].mask((30, 40), (15, 20)), resize_mask(blob, (15, 20)))
    with pytest.raises(InputError, match="image 'a.jpg': the annotation is for a 40×30 image, and the image is 30×40"):
        ann.entries["a.jpg"][0].mask((40, 30), (10, 10))


def test_compressed_rle_round_trips_large_and_leading_one_runs() -> None:
    from camrt.annotations import _rle_from_string

    for counts in ([0, 5, 3], [100000, 1, 99999, 7], [3, 1000, 2, 999, 1, 1, 1, 50000], [0]):
        assert _rle_from_string(rle_string(counts), "x") == counts


def test_keys_match_images_by_their_trailing_path(tmp_path) -> None:
    ann = read_annotations(write(tmp_path / "a.json", {"x.png": {"boxes": [[0, 0, 1, 1]]},
                                                       "sub/y.png": {"boxes": [[0, 0, 2, 2]]},
                                                       "gone.png": {"boxes": [[0, 0, 3, 3]]}}))
    images = [Path("/d/x.png"), Path("/d/y.png"), Path("/d/sub/y.png"), Path("/d/z.png")]
    found = ann.for_images(images)
    assert [bool(a) and a[0].boxes[0][2] for a in found] == [1.0, False, 2.0, False]
    with pytest.raises(InputError, match="key 'x.png' matches 2 images"):
        ann.for_images([Path("/a/x.png"), Path("/b/x.png")])


@pytest.mark.parametrize(("data", "message"), [
    ("[1, 2", r"are not JSON: Expecting ',' delimiter \(line 1, column 6\)"),
    ([1], "must hold a JSON object"),
    ({"x.png": [1]}, r"entry 'x.png\[0\]': must be an object with 'boxes' and/or 'mask' \(and optionally 'class'\), "
                      "or a list of them, got 1"),
        ({"x.png": "a"}, "entry 'x.png': must be an object with 'boxes' and/or 'mask'.*got a string"),
        ({"x.png": []}, "entry 'x.png': an empty list"),
        ({"x.png": {"boxes": [[0, 0, 1, 1]], "class": -1}}, "entry 'x.png': 'class' must be the model's class index"),
        ({"x.png": {"boxes": [[0, 0, 1, 1]], "class": True}}, "'class' must be the model's class index"),
    ({"x.png": {"bbox": []}}, "entry 'x.png': unknown key 'bbox'"),
    ({"x.png": {"boxes": [[0, 0, 5]]}}, r"entry 'x.png', boxes\[0\]: must be \[x0, y0, x1, y1\]"),
    ({"x.png": {"boxes": [[5, 0, 1, 3]]}},
     r"boxes\[0\]: \[5.0, 0.0, 1.0, 3.0\] is not \[x0, y0, x1, y1\] with x1 > x0"),
    ({"x.png": {"boxes": [[0, 0, "1", 3]]}}, r"boxes\[0\]: must be"),
    ({"x.png": {"boxes": []}}, "entry 'x.png': no boxes and no mask"),
    ({"x.png": {"mask": "none.png"}}, "entry 'x.png': mask file '.*none.png' does not exist"),
    ({"images": [{"id": 1}], "annotations": []}, r"images\[0\]: an image needs 'id' and 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a", "width": 0, "height": 2}], "annotations": []},
     r"images\[0\]: 'width' and 'height' must be positive integers"),
    ({"images": []}, "COCO-style annotations need an 'annotations' list"),
    ({"images": [], "annotations": [{"image_id": 7}]}, r"annotations\[0\]: 'image_id' must be the id of an entry"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1}]},
     r"annotations\[0\]: needs a 'bbox' or a 'segmentation'"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 0, 4]}]},
     r"annotations\[0\], bbox: width and height must be positive"),
    ({"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "segmentation": [[0, 0, 1, 1]]}]},
     r"segmentation\[0\]: a polygon needs at least 3 \(x, y\) points, got 4 numbers"),
    ({"images": [{"id": 1, "file_name": "a"}],
      "annotations": [{"image_id": 1, "segmentation": {"counts": [1, 2], "size": [2, 2]}}]},
     r"segmentation: the counts add up to 3 pixels, and size \[2, 2\] has 4"),
    ({"images": [{"id": 1, "file_name": "a"}],
      "annotations": [{"image_id": 1, "segmentation": {"counts": "0!", "size": [2, 2]}}]},
     "segmentation: 'counts' holds '!', not a compressed RLE character"),
])
def test_errors_name_the_file_and_the_key(tmp_path, data, message) -> None:
    path = tmp_path / "ann.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(InputError, match=message) as e:
        read_annotations(path)
    assert "ann.json" in str(e.value)


def test_errors_when_an_image_is_read(tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"no")
    where = "'ann.json', entry 'x.png'"
    with pytest.raises(InputError, match="entry 'x.png': box \\[50.0, 0.0, 60.0, 5.0\\] lies outside the 40×30 image"):
        Annotation(where, boxes=((50.0, 0.0, 60.0, 5.0),)).mask((30, 40), (8, 8))
    with pytest.raises(InputError, match="entry 'x.png': a polygon lies outside"):
        Annotation(where, polygons=(np.array([[-5.0, 1], [-1, 1], [-3, 4]]),)).mask((30, 40), (8, 8))
    with pytest.raises(InputError, match="entry 'x.png': mask '.*bad.png' is not a readable image"):
        Annotation(where, mask_files=(tmp_path / "bad.png",)).mask((30, 40), (8, 8))
    assert cv2.imwrite(str(tmp_path / "m.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="entry 'x.png': a mask of 10×10 pixels for a 40×30 image"):
        Annotation(where, mask_files=(tmp_path / "m.png",)).mask((30, 40), (8, 8))
    with pytest.raises(InputError, match="cannot read annotations '.*nothing.json'"):
        read_annotations(tmp_path / "nothing.json")


def test_classes_group_the_objects_of_an_image(tmp_path) -> None:
    """camrt's format: `class` (an index or a label) per entry; a list of entries for an image with
    objects of several classes, merged per class in the order the classes first appear."""
    ann = read_annotations(write(tmp_path / "a.json", {
        "x.png": [{"boxes": [[0, 0, 4, 4]], "class": 3}, {"boxes": [[10, 0, 14, 4]], "class": "cat"},
                  {"boxes": [[0, 10, 4, 14]], "class": 3}, {"boxes": [[10, 10, 14, 14]]}],
        "y.png": {"boxes": [[0, 0, 2, 2]], "class": 0}, "z.png": {"boxes": [[0, 0, 2, 2]]}}))
    x = ann.entries["x.png"]
    assert [a.label for a in x] == [3, "cat", None]
    assert x[0].boxes == ((0.0, 0.0, 4.0, 4.0), (0.0, 10.0, 4.0, 14.0))
    m = x[0].mask((20, 20), (20, 20))
    assert m.sum() == 32 and m[:4, :4].all() and m[10:14, :4].all()
    assert [a.label for a in ann.entries["y.png"]] == [0] and [a.label for a in ann.entries["z.png"]] == [None]
    assert ann.labels() == {0, 3, "cat"}


def test_coco_classes_are_category_names_or_ids(tmp_path) -> None:
    """A COCO annotation's class is its category's name (matched later against the model's labels);
    without a `categories` entry naming it, the category_id itself (the model's class index)."""
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    anns = [{"image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 17}, {"image_id": 1, "bbox": [5, 5, 4, 4]},
            {"image_id": 1, "bbox": [10, 0, 4, 4], "category_id": 18},
            {"image_id": 1, "bbox": [0, 10, 4, 4], "category_id": 17}, {"image_id": 2, "bbox": [0, 0, 2, 2],
                                                                          "category_id": 5}]
    named = read_annotations(write(tmp_path / "c.json", {"images": images, "annotations": anns, "categories": [
        {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]}))
    assert [(a.label, len(a.boxes)) for a in named.entries["a.jpg"]] == [("cat", 2), (None, 1), ("dog", 1)]
    assert [a.label for a in named.entries["b.jpg"]] == [5]
    plain = read_annotations(write(tmp_path / "p.json", {"images": images, "annotations": anns}))
    assert [a.label for a in plain.entries["a.jpg"]] == [17, None, 18]
    for bad, message in [({"categories": {"id": 1}}, "'categories' must be a list"),
                         ({"categories": [{"id": "1", "name": "x"}]}, r"categories\[0\]: a category needs"),
                         ({"annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 1.5}]},
                          r"annotations\[0\]: 'category_id' must be an integer")]:
        data = {"images": images, "annotations": anns, **bad}
        with pytest.raises(InputError, match=message):
            read_annotations(write(tmp_path / "bad.json", data))
