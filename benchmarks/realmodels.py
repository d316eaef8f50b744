"""Real pretrained models with real inputs, for accuracy benchmarks (analog in-memory chips, INT8).

No model hub is reachable from here, but pip is: the wheel rapidocr-onnxruntime==1.4.4 ships three
PP-OCR ONNX models (PaddleOCR, Apache-2.0), a text detector (PP-OCRv4 det, DBNet on a MobileNetV3),
a direction classifier (ch_ppocr_mobile_v2.0_cls: a small MobileNetV3 that says whether a cropped text
line is upright, "0", or upside down, "180") and a recogniser (PP-OCRv4 rec, SVTR-LCNet + CTC head over
6623 characters). Their inputs are real too: text lines rendered with PIL, whose true labels (the
rotation, the string) are known, so a chip's result can be scored, not only compared with ONNX Runtime.

    import sys; sys.path.insert(0, "benchmarks"); import realmodels
    paths = realmodels.fetch_ocr_models()        # {"det","cls","rec","keys"} -> Path; RegistryUnavailable offline
    lines = realmodels.render_text_lines(200, seed=0)
    x, labels = realmodels.cls_batch([im for im, _ in lines], flip_mask=[i % 2 == 1 for i in range(200)])

    python benchmarks/realmodels.py --selfcheck            # ORT baselines (cls 200 lines, rec 50 lines)
    python benchmarks/realmodels.py --kcompiler host atom  # then compile and run on kcompiler targets

The preprocessing follows rapidocr 1.4.4's own code, read from the wheel: ch_ppocr_cls/text_cls.py
(TextClassifier.resize_norm_img: height 48, width <= 192 keeping the ratio, (x/255-0.5)/0.5, zero
right-pad), ch_ppocr_rec/text_recognize.py (TextRecognizer.resize_norm_img: height 48, width
48*max(320/48, w/h)) and ch_ppocr_rec/utils.py (CTCLabelDecode: argmax, merge repeats, drop blank 0;
dictionary = the rec model's metadata "character" with "blank" put first and " " last). rapidocr
works on BGR images (utils/load_image.py converts to BGR) and resizes with cv2.resize(INTER_LINEAR);
OpenCV is not installed here, so `_resize_bilinear` reproduces INTER_LINEAR's fixed-point arithmetic
in numpy (equal to cv2's output on 99.994% of pixels, the rest 1 LSB apart).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

WHEEL_SPEC = "rapidocr-onnxruntime==1.4.4"
WHEEL_GLOB = "rapidocr_onnxruntime-1.4.4-*.whl"
MODEL_DIR = "rapidocr-1.4.4"
KEYS_NAME = "rec_keys.txt"
CLS_SHAPE = (3, 48, 192)     # rapidocr config.yaml Cls.cls_image_shape
REC_SHAPE = (3, 48, 320)     # rapidocr config.yaml Rec.rec_img_shape
CLS_LABELS = ("0", "180")    # rapidocr config.yaml Cls.label_list
ORT_MAX_IR = 10              # onnxruntime here may reject newer IR versions

# a fixed word list: English words the recogniser's dictionary covers (letters, digits, a few marks)
WORDS = (
    "the quick brown fox jumps over lazy dog memory crossbar analog digital chip signal noise weight "
    "drift conductance phase change resistive array column row voltage current sense amplifier model "
    "tensor layer batch input output matrix vector product accuracy error bound cycle clock energy power "
    "window paper river garden market station engine number letter museum theatre coffee orange silver "
    "Monday Friday London Berlin Paris Tokyo Alice Robert Total Invoice Order Page Chapter Section Table"
).split()


class RegistryUnavailable(RuntimeError):
    """pip could not fetch the wheel (no registry, no network): callers skip the benchmark."""


def cache_root(cache: "str | os.PathLike | None" = None) -> Path:
    """Where wheels and extracted models live: `cache`, else $KC_WHEEL_CACHE, else ~/.cache/kcompiler/wheels."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("KC_WHEEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kcompiler" / "wheels"


def _role(member: str) -> str | None:
    """Which model a wheel member is: det, cls or rec by the PaddleOCR file-name convention."""
    base = PurePosixPath(member).name
    if base.endswith(".onnx"):
        for role in ("det", "cls", "rec"):
            if f"_{role}_" in base:
                return role
    if base.endswith(".txt") and "keys" in base:
        return "keys"
    return None


def _safe_target(folder: Path, member: str) -> Path:
    """The file a member extracts to (flattened to its base name), refusing any name that could
    leave `folder`: absolute paths, drive letters, '..' parts, backslashes."""
    parts = PurePosixPath(member).parts
    if member.startswith(("/", "\\")) or "\\" in member or ".." in parts or (parts and ":" in parts[0]):
        raise RuntimeError(f"wheel member {member!r} has an unsafe path; not extracting it")
    target = (folder / PurePosixPath(member).name).resolve()
    if target.parent != folder.resolve():
        raise RuntimeError(f"wheel member {member!r} would extract outside {folder}")
    return target


def _pip_download(root: Path, spec: str = WHEEL_SPEC, glob: str = WHEEL_GLOB) -> Path:
    """Download the wheel `spec` (default: rapidocr's) into `root` with pip (no dependencies, binary
    only) and return the file matching `glob`; benchmarks/wildmodels_lib.py fetches its wheels so too."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:",
           "-d", str(root), "--disable-pip-version-check", "--retries", "1", "--timeout", "20"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryUnavailable(f"`pip download {spec}` could not run: {e}") from e
    wheels = sorted(root.glob(glob))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise RegistryUnavailable(f"`pip download {spec}` failed (exit {proc.returncode}); is the package "
                                  f"registry reachable? Or put the wheel in {root} by hand.\n{tail}")
    return wheels[-1]


def _write_keys_from_metadata(rec: Path, target: Path) -> None:
    """PP-OCRv4's rec model carries its dictionary in metadata_props["character"] (one character a
    line, rapidocr's OrtInferSession.get_character_list); write it out like ppocr_keys_v1.txt."""
    model = onnx.load(str(rec), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise RuntimeError(f"{rec.name} has no 'character' metadata and the wheel no keys file")
    tmp = target.with_suffix(".tmp")
    tmp.write_text("\n".join(meta["character"].splitlines()) + "\n", encoding="utf-8")
    tmp.replace(target)


def fetch_ocr_models(cache: "str | os.PathLike | None" = None) -> dict[str, Path]:
    """The PP-OCR models of rapidocr-onnxruntime 1.4.4: {"det", "cls", "rec": .onnx, "keys": dictionary}.

    Extracted once into CACHE/rapidocr-1.4.4/ (CACHE: `cache_root`); later calls find them there and
    run no pip. Raises RegistryUnavailable when the wheel is neither cached nor downloadable."""
    root = cache_root(cache)
    folder = root / MODEL_DIR
    found = _cached(folder)
    if found is not None:
        return found
    wheels = sorted(root.glob(WHEEL_GLOB))
    wheel = wheels[-1] if wheels else _pip_download(root)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            role = _role(info.filename)
            if role is None or info.is_dir():
                continue
            target = _safe_target(folder, info.filename)
            tmp = target.with_name(target.name + ".part")
            with zf.open(info) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp.replace(target)
            out[role] = target
    missing = {"det", "cls", "rec"} - out.keys()
    if missing:
        raise RuntimeError(f"{wheel.name} has no {sorted(missing)} model; expected PP-OCR *_det_/_cls_/_rec_ .onnx")
    if "keys" not in out:
        out["keys"] = folder / KEYS_NAME
        _write_keys_from_metadata(out["rec"], out["keys"])
    return out


def _cached(folder: Path) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        role = _role(f.name)
        if role is not None and not f.name.endswith(".part"):
            out[role] = f
    return out if {"det", "cls", "rec", "keys"} <= out.keys() else None


def ort_session(path: "str | os.PathLike", threads: int = 1):
    """An ONNX Runtime CPU session; the IR version is lowered to ORT_MAX_IR if newer (the models
    themselves are IR 7 and 8: nothing to lower for them)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    if model.ir_version > ORT_MAX_IR:
        model.ir_version = ORT_MAX_IR
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# ---- inputs ------------------------------------------------------------------------------------
def render_text_lines(n: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """n rendered text lines as (RGB image HxWx3 uint8, its text), deterministic in `seed`.

    Each line is 1-4 words or numbers from WORDS, in PIL's default font (FreeType, Aileron) at a
    random size 18-40 px, dark ink on a light background, with a random margin (the "slight offset")
    of 2-10 px on each side, as a detector's crop would leave."""
    rng = np.random.default_rng(seed)
    fonts: dict[int, ImageFont.FreeTypeFont] = {}
    out = []
    for _ in range(n):
        parts = []
        for _ in range(int(rng.integers(1, 5))):
            if rng.random() < 0.25:
                parts.append(str(int(rng.integers(0, 100000))))
            else:
                parts.append(str(WORDS[int(rng.integers(len(WORDS)))]))
        text = " ".join(parts)
        size = int(rng.integers(18, 41))
        font = fonts.setdefault(size, ImageFont.load_default(size=size))
        left, top, right, bottom = font.getbbox(text)
        ml, mr, mt, mb = (int(v) for v in rng.integers(2, 11, size=4))
        w, h = right - left + ml + mr, bottom - top + mt + mb
        bg = tuple(int(v) for v in rng.integers(215, 256, size=3))
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        img = Image.new("RGB", (w, h), bg)
        ImageDraw.Draw(img).text((ml - left, mt - top), text, font=font, fill=ink)
        out.append((np.asarray(img, dtype=np.uint8).copy(), text))
    return out


def _as_bgr(img) -> np.ndarray:
    """rapidocr's models see BGR (utils/load_image.py converts RGB inputs to BGR)."""
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an RGB image HxWx3 uint8, got {arr.shape} {arr.dtype}")
    return arr[:, :, ::-1]


def _resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) with INTER_LINEAR on uint8, in OpenCV's fixed point: source
    coordinate (d+0.5)*scale-0.5 clamped at the edges (no antialiasing when shrinking), weights
    rounded to 11 bits, the horizontal pass kept as int, the vertical one done as OpenCV's SIMD path
    does (VResizeLinearVec_32s8u: >>4, *beta, >>16, +2, >>2). Checked against opencv-python-headless
    5.0.0 on 300 resizes of rendered lines: 99.994% of pixels equal, the rest 1 LSB apart."""
    def taps(dst: int, src: int):
        pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        i0 = np.floor(pos).astype(np.int64)
        frac = np.where((i0 < 0) | (i0 >= src - 1), 0.0, pos - i0)
        i0 = np.clip(i0, 0, src - 1)
        w1 = np.round(frac * 2048).astype(np.int64)
        return i0, np.clip(i0 + 1, 0, src - 1), 2048 - w1, w1

    y0, y1, b0, b1 = taps(height, img.shape[0])
    x0, x1, a0, a1 = taps(width, img.shape[1])
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    out = ((((rows[y0] >> 4) * b0[:, None, None]) >> 16) + (((rows[y1] >> 4) * b1[:, None, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def _resize_norm(bgr: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """rapidocr's resize_norm_img (cls and rec alike): keep the ratio at height img_h, width at most
    img_w, scale to [-1, 1], zero right-pad to img_w. Returns 3 x img_h x img_w float32."""
    h, w = bgr.shape[:2]
    ratio = w / float(h)
    resized_w = img_w if math.ceil(img_h * ratio) > img_w else int(math.ceil(img_h * ratio))
    resized = _resize_bilinear(bgr, resized_w, img_h).astype(np.float32)
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, img_h, img_w), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def cls_batch(images, flip_mask) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N,3,48,192], labels int64 [N]) for the direction classifier: line i rotated by 180
    degrees when flip_mask[i]; label 0 = upright ("0"), 1 = rotated ("180")."""
    flips = [bool(f) for f in flip_mask]
    if len(flips) != len(images):
        raise ValueError(f"flip_mask has {len(flips)} entries for {len(images)} images")
    c, img_h, img_w = CLS_SHAPE
    xs = []
    for img, flip in zip(images, flips):
        bgr = _as_bgr(img)
        if flip:
            bgr = bgr[::-1, ::-1]      # cv2.rotate(img, cv2.ROTATE_180)
        xs.append(_resize_norm(bgr, img_h, img_w))
    return np.stack(xs).astype(np.float32), np.array(flips, dtype=np.int64)


def rec_batch(images, width: int | None = None) -> np.ndarray:
    """x float32 [N,3,48,W] for the recogniser, as one rapidocr batch: W = int(48 * max(320/48, the
    widest line's w/h)); or W = `width` (a fixed shape for a compiler: wider lines are squeezed)."""
    c, img_h, img_w = REC_SHAPE
    bgrs = [_as_bgr(img) for img in images]
    if width is None:
        max_ratio = max([img_w / img_h] + [b.shape[1] / b.shape[0] for b in bgrs])
        width = int(img_h * max_ratio)
    return np.stack([_resize_norm(b, img_h, width) for b in bgrs]).astype(np.float32)


def read_keys(keys) -> list[str]:
    """The CTC alphabet: "blank" at 0, the dictionary's characters, " " last (CTCLabelDecode)."""
    if isinstance(keys, (str, os.PathLike)):
        chars = [line.rstrip("\r\n") for line in Path(keys).read_text(encoding="utf-8").split("\n")]
        if chars and chars[-1] == "":
            chars.pop()
    else:
        chars = list(keys)
    return ["blank", *chars, " "]


def ctc_decode(logits: np.ndarray, keys) -> list[str]:
    """Greedy CTC as rapidocr's CTCLabelDecode: argmax per step, merge repeats, drop blank (0).
    keys: the dictionary file or its character list (without blank and space)."""
    alphabet = read_keys(keys)
    if logits.shape[-1] != len(alphabet):
        raise ValueError(f"logits have {logits.shape[-1]} classes, the dictionary gives {len(alphabet)}")
    texts = []
    for idx in np.asarray(logits).argmax(axis=-1):
        keep = np.ones(len(idx), dtype=bool)
        keep[1:] = idx[1:] != idx[:-1]
        keep &= idx != 0
        texts.append("".join(alphabet[i] for i in idx[keep]))
    return texts


def line_text(pred: str) -> str:
    """The text a recognised line holds: the decoded string without the spaces its margins decode to.

    The margins left around a crop (a detector's unclip, or a rendered line's offset) decode as
    leading or trailing spaces, the dictionary's last class " " against the CTC blank, which the
    float32 model itself decides by a hair (Gaussian noise of half an 8-bit pixel step on its input
    changes 11 of 50 raw strings here, none of these). Inner spaces count. This is stricter than the
    model's authors' metric, PaddleOCR's RecMetric (ppocr/metrics/rec_metric.py, ignore_space=True
    by default), which removes every space before comparing."""
    return pred.strip()


def text_matches(pred: str, truth: str) -> bool:
    """A recognised line equals its text (`line_text`: margins' spaces dropped, inner spaces count)."""
    return line_text(pred) == truth


# ---- baselines and the kcompiler trial ------------------------------------------------------------
def ort_baselines(paths: dict[str, Path], n_cls: int = 200, n_rec: int = 50, seed: int = 0) -> dict[str, float]:
    """ONNX Runtime (CPU, 1 thread) accuracy: cls on n_cls lines, every second one rotated; rec on
    n_rec lines one at a time (rapidocr's batch of one: W = 48*max(320/48, w/h))."""
    lines = render_text_lines(max(n_cls, n_rec), seed)
    x, labels = cls_batch([im for im, _ in lines[:n_cls]], [i % 2 == 1 for i in range(n_cls)])
    probs = ort_session(paths["cls"]).run(None, {"x": x})[0]
    rec = ort_session(paths["rec"])
    exact = stripped = nospace = 0
    for img, truth in lines[:n_rec]:
        pred = ctc_decode(rec.run(None, {"x": rec_batch([img])})[0], paths["keys"])[0]
        exact += pred == truth
        stripped += text_matches(pred, truth)
        nospace += pred.replace(" ", "") == truth.replace(" ", "")
    return {"cls_acc": float((probs.argmax(1) == labels).mean()), "rec_exact_raw": exact / n_rec,
            "rec_exact": stripped / n_rec, "rec_nospace": nospace / n_rec}


def _host_ops(cm) -> dict[str, int]:
    """Op types of the compiled graph's nodes that were placed on the host."""
    host = cm.system.host.name
    ops: dict[str, int] = {}
    for sub in cm.parts:
        if sub.device == host:
            for node in sub.nodes:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


def _trial_inputs(paths: dict[str, Path], which: str, n: int, seed: int):
    """(x, ORT's output, labels or texts) for one model on n rendered lines: cls at 48x192 with every
    second line rotated, rec at a fixed width 320, det on the lines resized to 64x320."""
    lines = render_text_lines(n, seed)
    imgs = [im for im, _ in lines]
    if which == "cls":
        x, truth = cls_batch(imgs, [i % 2 == 1 for i in range(n)])
    elif which == "rec":
        x, truth = rec_batch(imgs, width=REC_SHAPE[2]), [t for _, t in lines]
    else:
        x, truth = np.stack([_resize_norm(_as_bgr(im), 64, 320) for im in imgs]), None
    return x, ort_session(paths[which]).run(None, {"x": x})[0], truth


def kcompiler_trial(paths: dict[str, Path], which: str, target: str, n: int, seed: int = 1) -> dict:
    """Compile one model for `target` at batch n, run it on n rendered lines, compare with ORT.
    Returns a dict of figures, or {"error": "KCError text"} when compiling or running failed."""
    import kcompiler

    x, ref, truth = _trial_inputs(paths, which, n, seed)
    t0 = time.perf_counter()
    try:
        cm = kcompiler.compile(str(paths[which]), target=target, shapes={"x": tuple(x.shape)})
        t1 = time.perf_counter()
        out = cm.run({"x": x}, simulate=False)[cm.outputs[0]]
        t2 = time.perf_counter()
        rep = cm.simulate()
    except kcompiler.KCError as e:
        return {"model": which, "target": target, "error": f"{type(e).__name__}: {e}"}
    on_host, total, flop_share = cm.host_share()
    res = {"model": which, "target": target, "n": n, "compile_s": t1 - t0, "run_s": t2 - t1,
           "max_abs_diff": float(np.abs(out - ref).max()), "host_nodes": on_host, "nodes": total,
           "host_flop_share": flop_share, "host_ops": _host_ops(cm), "placement": cm.placement,
           "sim_latency_ms": rep.latency_s * 1e3}
    if which == "cls":
        res["argmax_agree"] = float((out.argmax(1) == ref.argmax(1)).mean())
        res["acc"] = float((out.argmax(1) == truth).mean())
    elif which == "rec":
        got, want = ctc_decode(out, paths["keys"]), ctc_decode(ref, paths["keys"])
        res["string_agree"] = sum(a == b for a, b in zip(got, want)) / n
        res["acc"] = sum(text_matches(g, t) for g, t in zip(got, truth)) / n
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--selfcheck", action="store_true", help="print ONNX Runtime baselines (cls 200, rec 50 lines)")
    ap.add_argument("--kcompiler", nargs="*", metavar="TARGET", help="compile and run on these targets")
    ap.add_argument("--models", default="cls,rec,det", help="models for --kcompiler (comma list)")
    ap.add_argument("--n", type=int, default=50, help="lines per kcompiler run (cls; rec and det use 5)")
    ap.add_argument("--cache", default=None, help="wheel cache (default $KC_WHEEL_CACHE or ~/.cache/kcompiler/wheels)")
    args = ap.parse_args(argv)
    try:
        paths = fetch_ocr_models(args.cache)
    except RegistryUnavailable as e:
        print(f"skipped: {e}")
        return 0
    for role, path in paths.items():
        print(f"{role:4s} {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.selfcheck or args.kcompiler is None:
        t = time.perf_counter()
        base = ort_baselines(paths)
        print(f"ORT CPU: cls accuracy {base['cls_acc']:.3f} on 200 lines (100 rotated); rec exact "
              f"{base['rec_exact']:.2f} on 50 lines (raw {base['rec_exact_raw']:.2f}, ignoring spaces "
              f"{base['rec_nospace']:.2f}) [{time.perf_counter() - t:.1f} s]")
    for target in args.kcompiler or ():
        for which in args.models.split(","):
            res = kcompiler_trial(paths, which, target, args.n if which == "cls" else 5)
            print({k: (round(v, 7) if isinstance(v, float) else v) for k, v in res.items()}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
