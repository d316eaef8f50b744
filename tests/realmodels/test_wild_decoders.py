"""The package-preprocessing and decoding code of benchmarks/wildmodels_*.py on hand-made inputs whose answer is
known (no wheel, no compile): an error here would make the real-model table compare wrong answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import wildmodels_cases as wc  # noqa: E402
import wildmodels_lib as wl  # noqa: E402
import wildmodels_misc as wm  # noqa: E402


def test_nms_keeps_the_best_of_overlapping_boxes_and_drops_low_scores():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 5, 5], [0, 0, 3, 3]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.2])
    # box 1 beats box 0 (IoU 0.68 > 0.45); box 2 is apart; box 3 is under the 0.25 score threshold
    assert wc.nms_boxes(boxes, scores, 0.25, 0.45) == [1, 2]
    assert wc.nms_boxes(boxes, scores, 0.25, 0.9) == [1, 0, 2]


def test_db_boxes_finds_each_text_blob_and_scales_it_to_the_image():
    prob = np.zeros((40, 80), np.float32)
    prob[10:16, 5:45] = 0.9        # a text line
    prob[25:32, 50:75] = 0.8       # another
    prob[2:3, 70:72] = 0.9         # a speck: shorter side < 3, dropped
    boxes = wc._db_boxes(prob, 80, 160)            # the image is twice the map
    # the dilated blob (rows 10-16, cols 5-45) unclipped by 40*6*1.6/(2*46) = 4.17 px per side, times 2
    assert boxes == ((2, 12, 98, 40), (91, 41, 159, 73))
    assert wc._db_boxes(prob * 0.2, 80, 160) == ()       # below the 0.3 binarisation threshold


def test_magika_features_strip_whitespace_and_pad_as_magika_does():
    cfg = {"block_size": 16, "beg_size": 6, "end_size": 6, "padding_token": 256}
    # beginning: lstrip, then the first 6 bytes, padded after; end: rstrip, then the last 6, padded before
    assert wm.magika_features(b"  \nab\t ", cfg) == [97, 98, 9, 32, 256, 256, 256, 32, 32, 10, 97, 98]
    long = bytes(range(65, 65 + 40))
    assert wm.magika_features(long, cfg) == list(long[:6]) + list(long[34:40])  # within block_size of each end


def test_boxes_close_takes_detections_as_a_set_within_two_pixels():
    a = (("FACE", 10, 10, 5, 5), ("FEET", 50, 60, 7, 7))
    assert wl.boxes_close(a, (("FEET", 51, 58, 7, 7), ("FACE", 10, 10, 5, 6)))
    assert not wl.boxes_close(a, (("FACE", 10, 10, 5, 5), ("FACE", 50, 60, 7, 7)))
    assert not wl.boxes_close(a, (("FACE", 10, 10, 5, 5), ("FEET", 54, 60, 7, 7)))
    assert not wl.boxes_close(a, a[:1])
    # pairing by position, not by sort order: x0 jitter of one pixel reorders a lexicographic sort
    rows = ((0, 43, 383, 73), (1, 9, 297, 39), (1, 61, 383, 91))
    assert wl.boxes_close(rows, ((0, 43, 383, 73), (0, 61, 383, 91), (1, 9, 297, 39)))
    assert not wl.boxes_close(rows, ((0, 43, 383, 73), (0, 43, 383, 73), (1, 9, 297, 39)))


def test_yolox_decode_puts_each_cell_at_its_grid_position_times_its_stride():
    size = 64
    n = sum((size // s) ** 2 for s in (8, 16, 32))
    out = np.zeros((n, 6), np.float32)
    dec = wc._yolox_decode(out, size)
    assert dec[1, 0] == 8 and dec[8, 1] == 8            # stride-8 cell (1, 0) and (0, 1)
    assert dec[64, 0] == 0 and dec[65, 0] == 16 and np.all(dec[:, 2] > 0)
