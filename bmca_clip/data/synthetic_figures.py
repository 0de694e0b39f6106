"""The synthetic figures and their captions: a procedural image of one of six `FIGURE_TYPES`, with 1-5
objects in one of four `COLORS`, and a caption that states type, colour and count, so a CLIP model can learn
the pairing in a few hundred steps. Pure pixels and words; synthetic_corpus.py and synthetic_eval.py put
them into BIOMEDICA's shard format and into eval sets.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
# Object nouns (plural adds "s") and the suffix after the colour word: "3 green-stained cells".
_OBJECTS = ("cell", "gland", "nodule", "lesion", "bar", "hexagonal ring")
_SUFFIX = ("-stained", "-tinted", "-marked", "-outlined", "", "")
_TAILS = (
    "Scale bar, 10 µm.|Arrows indicate regions of interest.|Data are representative of three independent "
    "experiments.|See Methods for acquisition details.|Images were acquired at baseline.|Values are mean ± SEM."
).split("|")
CAPTION_TEMPLATES = (  # each names the figure type verbatim and says "<count> <colour>..."
    "{Type} of {objs}. {tail}|Representative {type} showing {objs} (arrows).|{objs} {are} visible in this "
    "{type}. {tail}|Figure {fig}. {Type} from the treated group displaying {objs}.|In this {type}, {objs} {are} "
    "highlighted. {tail}|Panel {panel}: {type} with {objs} comparing control and knockout conditions.|{Type} "
    "containing {objs}, as described in the text.|Example {type} with {objs}. {tail}"
).split("|")


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
    """Caption `CAPTION_TEMPLATES[template]` stating the figure type, colour and object count."""
    noun = _OBJECTS[kind] + ("" if count == 1 else "s")
    objs = f"{count} {COLORS[color]}{_SUFFIX[kind]} {noun}"
    ftype, tail = FIGURE_TYPES[kind], _TAILS[(template + kind) % len(_TAILS)]
    fields = {"type": ftype, "Type": ftype[0].upper() + ftype[1:], "objs": objs, "tail": tail, "fig": fig}
    return CAPTION_TEMPLATES[template].format(
        **fields, are="is" if count == 1 else "are", panel="ABCD"[panel % 4]
    )
