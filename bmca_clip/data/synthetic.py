"""A small synthetic corpus shaped like BIOMEDICA, for tests and the CPU demo.

`write_corpus` (or `python -m bmca_clip.data.synthetic --out DIR`) writes `DIR/train/{commercial,
noncommercial,other}/NNNNNN.tar` (WebDataset shards in the hub layout, samples with `jpg`, `txt` and a `json`
holding the 25 fields of `biomedica.METADATA_FIELDS`) and three eval sets, each `images/NNNNNN.jpg` +
`test.csv`: `DIR/eval/synthetic_{modality,color}/` (`image,label`, label indexes `FIGURE_TYPES` or `COLORS`)
and `DIR/eval/synthetic_retrieval/` (`image,caption`, two captions per image).

Each image is a procedural figure of one of six `FIGURE_TYPES`, with 1-5 objects in one of four `COLORS`;
the caption states type, colour and count, so a CLIP model can learn the pairing in a few hundred steps.
Every sample draws from its own numpy generator seeded by (seed, stream, index): same arguments, same bytes.
"""

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFilter

from bmca_clip.data import biomedica as bm
from bmca_clip.errors import CorpusArgumentError

# Class names used verbatim by the eval task YAMLs: do not reword.
FIGURE_TYPES = (
    "fluorescence micrograph",
    "H&E histology slide",
    "chest x-ray",
    "ultrasound scan",
    "bar chart",
    "chemical structure",
)
COLORS = ("red", "green", "blue", "yellow")
_RGB = np.array([(225, 35, 35), (40, 205, 60), (45, 90, 240), (240, 215, 30)], dtype=np.float32)
_LABELS = (  # (primary, secondary) concept per figure type, from the BIOMEDICA vocabulary
    ("Microscopy", "fluorescence microscopy"),
    ("Microscopy", "light microscopy"),
    ("Clinical Imaging", "x-ray radiography"),
    ("Clinical Imaging", "ultrasound"),
    ("Plots and Charts", "bar plots"),
    ("Chemical Structures", "chemical structure"),
)
# Object nouns (plural adds "s") and the suffix after the colour word: "3 green-stained cells".
_OBJECTS = ("cell", "gland", "nodule", "lesion", "bar", "hexagonal ring")
_SUFFIX = ("-stained", "-tinted", "-marked", "-outlined", "", "")
_TAILS = (
    "Scale bar, 10 µm.|Arrows indicate regions of interest.|Data are representative of three independent "
    "experiments.|See Methods for acquisition details.|Images were acquired at baseline.|Values are mean ± SEM."
).split("|")
_TEMPLATES = (  # each names the figure type verbatim and says "<count> <colour>..."
    "{Type} of {objs}. {tail}|Representative {type} showing {objs} (arrows).|{objs} {are} visible in this "
    "{type}. {tail}|Figure {fig}. {Type} from the treated group displaying {objs}.|In this {type}, {objs} {are} "
    "highlighted. {tail}|Panel {panel}: {type} with {objs} comparing control and knockout conditions.|{Type} "
    "containing {objs}, as described in the text.|Example {type} with {objs}. {tail}"
).split("|")
_WORDS = (
    "cell tissue expression protein signal patient cohort analysis response tumor receptor pathway "
    "treatment gene sample level increase decrease significant model control group clinical imaging "
    "marker mutation binding activity factor region observed measured compared associated baseline "
    "inflammation therapy diagnosis outcome dose concentration assay culture sequence structure"
).split()
_JOURNALS = ("PLoS One", "Sci Rep", "Nat Commun", "BMC Cancer", "Front Immunol", "J Biol Chem", "eLife")
_MESH = (
    "Humans|Animals|Mice|Female|Male|Neoplasms|Cell Line, Tumor|Radiography|Microscopy, Fluorescence|"
    "Ultrasonography|Gene Expression|Molecular Structure"
).split("|")
_SUBJECTS = ("Research Article", "Original Article", "Cell Biology", "Radiology", "Oncology", "Chemistry")
_SHARES = {name: n / sum(bm.SUBSET_PAIRS.values()) for name, n in bm.SUBSET_PAIRS.items()}
_MTIME = 1704067200  # fixed tar member mtime (2024-01-01): webdataset would stamp time.time()
_EVAL_SETS = ("synthetic_modality", "synthetic_color", "synthetic_retrieval")
# Smallest allowed argument values: one sample per licence subset, one eval image per figure type, and
# BIOMEDICA's own minimum image side.
_MINIMUM = dict(train_samples=3, samples_per_shard=1, eval_samples=6, seed=0, min_size=bm.MIN_IMAGE_SIZE)


def _slots(rng, box, n):
    """Centres and radii for n non-overlapping objects: distinct cells of a 3x2 grid inside box."""
    x0, y0, x1, y1 = box
    cols, rows = (3, 2) if x1 - x0 >= y1 - y0 else (2, 3)
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    cells = rng.choice(cols * rows, size=n, replace=False)
    jitter = rng.uniform(0.38, 0.62, size=(n, 2))
    radii = min(cw, ch) * rng.uniform(0.28, 0.4, size=n)
    xs, ys = x0 + (cells % cols + jitter[:, 0]) * cw, y0 + (cells // cols + jitter[:, 1]) * ch
    return list(zip(xs.tolist(), ys.tolist(), radii.tolist(), strict=True))  # python floats for PIL


def _ellipse(draw, cx, cy, rx, ry, **kw):
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], **kw)


def _rgb(arr):
    return tuple(int(v) for v in np.clip(arr, 0, 255))


def _fluorescence(rng, img, rgb, n):
    draw = ImageDraw.Draw(img)
    slots = _slots(rng, (0, 0, *img.size), n)
    for cx, cy, r in slots:
        _ellipse(draw, cx, cy, r * rng.uniform(0.8, 1.1), r * rng.uniform(0.65, 1.0), fill=_rgb(rgb * 0.8))
        _ellipse(draw, cx, cy, r * 0.45, r * 0.4, fill=_rgb(rgb * 1.15 + 30))
    return img.filter(ImageFilter.GaussianBlur(max(1.0, slots[0][2] * 0.2)))


def _histology(rng, img, rgb, n):
    w, h = img.size
    pink = np.array([238, 196, 214], dtype=np.float32)
    texture = rng.normal(0, 14, size=(h // 8 + 1, w // 8 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize((w, h), Image.BILINEAR))
    img.paste(Image.fromarray(np.clip(pink + texture[..., None], 0, 255).astype(np.uint8)))
    draw = ImageDraw.Draw(img)
    for x, y in rng.uniform((0, 0), (w, h), size=(w * h // 120, 2)):
        _ellipse(draw, x, y, 1.3, 1.3, fill=(72, 38, 118))
    for cx, cy, r in _slots(rng, (0, 0, w, h), n):
        rx, ry = r * rng.uniform(0.8, 1.1), r * rng.uniform(0.6, 1.0)
        _ellipse(draw, cx, cy, rx, ry, fill=_rgb(0.8 * rgb + 0.2 * pink), outline=_rgb(rgb * 0.6), width=2)
    return img


def _xray(rng, img, rgb, n):
    w, h = img.size
    gray = Image.new("L", (w, h), 18)
    draw = ImageDraw.Draw(gray)
    _ellipse(draw, w / 2, h * 0.55, w * 0.47, h * 0.5, fill=70)
    for side in (-1, 1):
        _ellipse(draw, w / 2 + side * w * 0.22, h * 0.5, w * 0.17, h * 0.36, fill=38)
    for y in np.linspace(0.18, 0.75, int(rng.integers(5, 8))) * h:
        draw.arc([w * 0.12, y, w * 0.88, y + h * 0.3], 195, 345, fill=165, width=2)
    draw.rectangle([w * 0.47, 0, w * 0.53, h], fill=185)
    img.paste(gray.filter(ImageFilter.GaussianBlur(1.0)).convert("RGB"))
    draw = ImageDraw.Draw(img)
    for cx, cy, r in _slots(rng, (w * 0.08, h * 0.1, w * 0.92, h * 0.9), n):
        _ellipse(draw, cx, cy, r * 0.8, r * 0.8, fill=_rgb(0.8 * rgb + 50))
    return img


def _ultrasound(rng, img, rgb, n):
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    apex, radius = (w / 2, -0.1 * h), h * 1.08  # the probe sits just above the top edge
    ImageDraw.Draw(mask).pieslice(
        [apex[0] - radius, apex[1] - radius, apex[0] + radius, apex[1] + radius], 55, 125, fill=255
    )
    speckle = np.clip(rng.rayleigh(45, size=(h, w)), 0, 255) * (np.asarray(mask) / 255.0)
    img.paste(Image.fromarray(speckle.astype(np.uint8)).convert("RGB"))
    draw = ImageDraw.Draw(img)
    for cx, cy, r in _slots(rng, (w * 0.25, h * 0.35, w * 0.75, h * 0.95), n):
        shade = rng.choice((0.6, 1.0))  # hypoechoic (dark) or hyperechoic (bright) lesion
        _ellipse(draw, cx, cy, r * rng.uniform(0.8, 1.1), r * rng.uniform(0.7, 1.0), fill=_rgb(rgb * shade))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _bar_chart(rng, img, rgb, n):
    w, h = img.size
    draw = ImageDraw.Draw(img)
    left, bottom, top = w * rng.uniform(0.1, 0.16), h * rng.uniform(0.84, 0.9), h * 0.08
    for y in np.linspace(bottom, top, 4)[1:]:
        draw.line([left, y, w * 0.97, y], fill=(222, 222, 222))
    slot = (w * 0.95 - left) / n
    for i, frac in enumerate(rng.uniform(0.25, 0.95, size=n)):
        x = left + (i + 0.2) * slot
        y = bottom - frac * (bottom - top)
        draw.rectangle([x, y, x + slot * 0.6, bottom], fill=_rgb(rgb))
        draw.line([x + slot * 0.3, y - h * 0.05, x + slot * 0.3, y], fill=(0, 0, 0))
    draw.line([left, top, left, bottom, w * 0.97, bottom], fill=(0, 0, 0), width=2)
    return img


def _chemical(rng, img, rgb, n):
    draw = ImageDraw.Draw(img)
    color, width = _rgb(rgb * 0.9), max(2, round(min(img.size) / 40))  # stays visible at 32 px
    rings = _slots(rng, (0, 0, *img.size), n)
    if n > 1:  # bonds linking the rings centre to centre; each ring's white fill hides the inner part
        draw.line([(x, y) for x, y, _ in rings], fill=(40, 40, 40), width=1)
    for cx, cy, r in rings:
        angles = rng.uniform(0, np.pi / 3) + np.arange(6) * np.pi / 3
        points = list(zip(cx + r * np.cos(angles), cy + r * np.sin(angles), strict=True))
        draw.polygon(points, fill=(255, 255, 255), outline=color, width=width)
        for k in (0, 2, 4):  # aromatic double bonds on alternate edges
            inner = [(cx + 0.7 * (x - cx), cy + 0.7 * (y - cy)) for x, y in (points[k], points[k + 1])]
            draw.line(inner, fill=color, width=width - 1)
    return img


_DRAW = (_fluorescence, _histology, _xray, _ultrasound, _bar_chart, _chemical)
_BACKGROUND = ((0, 0, 0), (238, 196, 214), (18, 18, 18), (0, 0, 0), (255, 255, 255), (255, 255, 255))


def draw_figure(rng, kind: int, color: int, count: int, size: tuple[int, int]) -> bytes:
    """JPEG bytes of one procedural figure of FIGURE_TYPES[kind] with `count` objects in COLORS[color]."""
    img = _DRAW[kind](rng, Image.new("RGB", size, _BACKGROUND[kind]), _RGB[color], count)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.9, 1.05) + rng.normal(0, 5, (size[1], size[0], 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def caption(kind: int, color: int, count: int, template: int, fig: int = 1, panel: int = 0) -> str:
    """Caption `_TEMPLATES[template]` stating the figure type, colour and object count."""
    noun = _OBJECTS[kind] + ("" if count == 1 else "s")
    objs = f"{count} {COLORS[color]}{_SUFFIX[kind]} {noun}"
    ftype, tail = FIGURE_TYPES[kind], _TAILS[(template + kind) % len(_TAILS)]
    fields = {"type": ftype, "Type": ftype[0].upper() + ftype[1:], "objs": objs, "tail": tail, "fig": fig}
    return _TEMPLATES[template].format(**fields, are="is" if count == 1 else "are", panel="ABCD"[panel % 4])


def _filler(rng, n_words: int) -> str:
    words = rng.choice(_WORDS, size=n_words)
    cuts = np.cumsum(rng.integers(8, 16, size=n_words // 8 + 1))
    sentences = [" ".join(words[a:b]) for a, b in zip(np.r_[0, cuts], cuts, strict=False) if a < n_words]
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _article(rng, index: int, subset: str) -> dict:
    """Article-level metadata shared by all figures of one synthetic paper."""
    year, month, day = int(rng.integers(2000, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    journal = str(rng.choice(_JOURNALS))
    n_refs = int(rng.integers(5, 30))
    ref_ids = [str(v) for v in rng.integers(10_000_000, 39_999_999, size=n_refs)]
    refs = [
        f"Author{k} A, Author{k + 1} B. {_filler(rng, 8)[:-1]}. {rng.choice(_JOURNALS)}. "
        f"{int(rng.integers(1990, year + 1))};{int(rng.integers(1, 60))}:{int(rng.integers(1, 999))}."
        for k in range(n_refs)
    ]
    return {
        # Disjoint ranges of 97 per article keep accession ids (and so sample keys) unique.
        "article_accession_id": f"PMC{1_000_000 + index * 97 + int(rng.integers(97))}",
        "article_title": _filler(rng, int(rng.integers(8, 14)))[:-1],
        "article_journal": journal,
        "article_date": f"{year:04d}-{month:02d}-{day:02d}",
        "article_abstract": _filler(rng, int(rng.integers(60, 120))),
        "article_mesh_terms": sorted(rng.choice(_MESH, size=int(rng.integers(3, 7)), replace=False).tolist()),
        "article_keywords": rng.choice(_WORDS, size=int(rng.integers(3, 6)), replace=False).tolist(),
        "article_reference_ids": ref_ids,
        "article_reference_count": n_refs,
        "article_reference_list": refs,
        "article_subject": rng.choice(_SUBJECTS, size=int(rng.integers(1, 3)), replace=False).tolist(),
        "article_citation": f"{journal}. {year};{int(rng.integers(1, 40))}:{int(rng.integers(1, 9999))}.",
        "article_license": str(rng.choice(bm.SUBSETS[subset])),
        "article_text": _filler(rng, int(rng.integers(200, 350))),
    }


def _sample(rng, article: dict, fig: int, panel: int, n_panels: int, sizes: tuple[int, int]) -> dict:
    """One WebDataset sample (key, jpg, txt, json) for panel `panel` of figure `fig` of `article`."""
    kind, color, count = int(rng.integers(6)), int(rng.integers(4)), int(rng.integers(1, 6))
    size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
    jpg = draw_figure(rng, kind, color, count, size)
    key = f"{article['article_accession_id']}_fig{fig}_panel{panel}"
    label_id = kind * 333 + color * 80 + int(rng.integers(80))  # clusters are visual: type and colour
    image = {
        "image_file_name": f"{key}.jpg",
        "image_cluster_id": str(label_id * 100 + int(rng.integers(100))),
        "image_hash": hashlib.md5(jpg).hexdigest(),
        "image_label_id": str(label_id),
        "image_panel_type": "single" if n_panels == 1 else "multiple",
        "image_panel_subtype": _LABELS[kind][1],
        "image_primary_label": [_LABELS[kind][0]],
        "image_secondary_label": [_LABELS[kind][1]],
        "image_size": list(size),
        "image_set": f"fig{fig}",
        "image_context": [f"As shown in Figure {fig}, {_filler(rng, 12).lower()}"],
    }
    meta = {**image, **article}
    meta = {field: meta[field] for field in bm.METADATA_FIELDS}
    txt = caption(kind, color, count, int(rng.integers(len(_TEMPLATES))), fig, panel)
    return {"__key__": key, "jpg": jpg, "txt": txt.encode(), "json": json.dumps(meta).encode()}


def _subset_samples(seed: int, subset: str, n: int, sizes: tuple[int, int]):
    """Yield n samples of one subset, article by article; each article has its own generator."""
    produced, slot = 0, list(bm.SUBSETS).index(subset)
    for k in range(n):
        index = k * len(bm.SUBSETS) + slot  # interleaved article numbers keep subsets' keys disjoint
        rng = np.random.default_rng([seed, 0, index])
        article = _article(rng, index, subset)
        for fig in range(1, int(rng.integers(1, 5)) + 1):
            n_panels = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            for panel in range(n_panels):
                if produced == n:
                    return
                yield _sample(rng, article, fig, panel, n_panels, sizes)
                produced += 1


def _write_train(out: Path, seed: int, train_samples: int, per_shard: int, sizes, log) -> dict:
    """Split train_samples over the subsets in the hub's proportions (>= 1 each) and write the shards."""
    counts = {name: max(1, round(train_samples * share)) for name, share in _SHARES.items()}
    counts["commercial"] = train_samples - counts["noncommercial"] - counts["other"]
    summary = {}
    for subset, n in counts.items():
        folder = out / "train" / subset
        folder.mkdir(parents=True, exist_ok=True)
        shards, samples = [], _subset_samples(seed, subset, n, sizes)
        while batch := [s for _, s in zip(range(per_shard), samples, strict=False)]:
            shards.append(folder / f"{len(shards):06d}.tar")
            with wds.TarWriter(str(shards[-1]), mtime=_MTIME) as sink:
                for sample in batch:
                    sink.write(sample)
        summary[subset] = {"samples": n, "shards": [str(p) for p in shards]}
        log(f"train/{subset}: {n} samples in {len(shards)} shards")
    return summary


def _write_eval(out: Path, name: str, stream: int, seed: int, n: int, sizes, log) -> dict:
    """One eval folder; stream separates its seeds from training (0) and the other eval sets."""
    folder = out / "eval" / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n_classes = {1: len(FIGURE_TYPES), 2: len(COLORS), 3: 1}[stream]
    labels = np.random.default_rng([seed, stream]).permutation(np.arange(n) % n_classes)
    rows = []
    for i, label in enumerate(labels.tolist()):
        rng = np.random.default_rng([seed, stream, i])
        kind, color, count = int(rng.integers(6)), int(rng.integers(4)), int(rng.integers(1, 6))
        kind, color = (label, color) if stream == 1 else (kind, label) if stream == 2 else (kind, color)
        size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
        image = f"images/{i:06d}.jpg"
        (folder / image).write_bytes(draw_figure(rng, kind, color, count, size))
        if stream == 3:
            for template in rng.choice(len(_TEMPLATES), size=2, replace=False).tolist():
                rows.append((image, caption(kind, color, count, template)))
        else:
            rows.append((image, label))
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as f:
        header = ("image", "caption") if stream == 3 else ("image", "label")
        csv.writer(f, lineterminator="\n").writerows([header, *rows])  # "\n": same bytes on every OS
    log(f"eval/{name}: {n} images, {len(rows)} rows")
    return {"csv": str(folder / "test.csv"), "images": n, "rows": len(rows)}


def _check(args: dict) -> None:
    for name, low in _MINIMUM.items():
        if args[name] < low:
            raise CorpusArgumentError(f"--{name.replace('_', '-')} must be >= {low}, got {args[name]}")
    if args["min_size"] > args["max_size"]:
        raise CorpusArgumentError(
            f"--min-size must be <= --max-size, got {args['min_size']} > {args['max_size']}"
        )


def write_corpus(
    out: Path,
    train_samples: int = 6000,
    samples_per_shard: int = 500,
    eval_samples: int = 120,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 160,
    verbose: bool = False,
) -> dict:
    """Write the synthetic corpus under `out` (layout in the module docstring); return a summary dict.

    Refuses an `out` that already holds `train/` or `eval/`: stale shards of a larger earlier run would
    otherwise be mixed into this one.
    """
    _check(dict(locals()))  # the arguments by name, so messages can name their flags
    out = Path(out)
    for sub in (out / "train", out / "eval"):
        if sub.exists():
            raise FileExistsError(f"{sub} already exists; delete it or choose another --out")
    log = print if verbose else (lambda *_: None)
    sizes = (min_size, max_size)
    train = _write_train(out, seed, train_samples, samples_per_shard, sizes, log)
    summary = {"out": str(out), "seed": seed, "train_samples": train_samples, "train": train, "eval": {}}
    for stream, name in enumerate(_EVAL_SETS, start=1):
        summary["eval"][name] = _write_eval(out, name, stream, seed, eval_samples, sizes, log)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bmca_clip.data.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/ and eval/ go here)")
    parser.add_argument("--train-samples", type=int, default=6000, help="image-caption pairs in train/")
    parser.add_argument("--samples-per-shard", type=int, default=500, help="pairs per train tar shard")
    parser.add_argument("--eval-samples", type=int, default=120, help="images per eval set")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus")
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side in px")
    parser.add_argument("--max-size", type=int, default=160, help="largest image side in px")
    args = vars(parser.parse_args(argv))
    start = time.perf_counter()
    try:
        write_corpus(**args, verbose=True)
    except (CorpusArgumentError, FileExistsError) as err:
        sys.exit(f"synthetic: {err}")  # one line on stderr, exit status 1
    print(f"wrote synthetic corpus to {args['out']} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
