"""Synthetic long-tailed detection data in real LVIS v1 format.

Every class is a (texture x) colour x shape combination such as ``"red_circle"`` or
``"striped_blue_star"``: telling classes apart needs both the outline and the colour (some colour
pairs are close: red/orange, blue/purple), on a noisy, cluttered background. Objects are polygons
(a circle is a 24-gon), so the polygon segmentation in the json is the drawn shape; bounding boxes
of objects in one image never touch, so no object hides another.

Long tail: class ``k`` appears in exactly ``n_k`` training images, with ``n_k`` falling from
``max_train_images`` to ``min_train_images`` over the classes (``count_profile``), or following
the real LVIS v1 image-count distribution (``count_source``). Which class gets which count is
shuffled by the seed, so rarity is not tied to a shape or a colour. The json's ``image_count``,
``instance_count`` and ``frequency`` (LVIS rules: r <= 10 < c <= 100 < f training images) are
counted from the written training annotations. Validation has ``val_images_per_class`` images whose
main class is each class in turn, so every class is scored.

Layout written under ``out_dir``::

    lvis_v1_train.json   lvis_v1_val.json   train/000001.png ...   val/000831.png ...

Image records carry ``file_name`` (relative to ``train/`` or ``val/``) and a ``coco_url`` whose last
two parts are ``<split>/<file>``, so both lt_det's
``register_lvis_format(name, json_file, out_dir/train)`` and detectron2's stock LVIS loader
(``load_lvis_json(json_file, out_dir + "/")``) find the images.

Everything is drawn from ``numpy.random.default_rng`` streams keyed by ``(seed, split, image)``: the
same arguments give byte-identical json and PNG files.

A dataset is a :class:`SyntheticSpec` (every knob, with its default and meaning; ``PRESETS`` names
specs, ``dataclasses.replace`` overrides knobs) built in three steps: :func:`plan` (classes,
instances and placements of every image; no pixels), :func:`render` (pixels and annotations) and
:func:`write_dataset` (jsons and PNGs). :func:`generate_synthetic_lvis` runs all three.

The presets ``icons`` / ``icons_tiny`` write classes that each have their own appearance
(OpenMoji pictographs) instead of colour x shape combinations; their spec is
:class:`lt_det.data.synthetic_icons.IconSpec`.
"""
import importlib
import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from ..errors import LTDetError
from ..class_stats import frequency_group

__all__ = [
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "PRESETS",
    "ICON_PRESET_NAMES",
    "COUNT_PROFILES",
    "VAL_PROFILES",
    "SyntheticSpec",
    "ImagePlan",
    "DatasetPlan",
    "RenderedImage",
    "preset_spec",
    "plan",
    "render",
    "write_dataset",
    "class_image_counts",
    "generate_synthetic_lvis",
    "register_synthetic_lvis",
]

TRAIN_JSON = "lvis_v1_train.json"
VAL_JSON = "lvis_v1_val.json"


def _regular(n: int, phase: float = 0.0, radii: Sequence[float] = (1.0,)) -> np.ndarray:
    """Vertices of a regular (with several radii: star-like) polygon, first vertex at the top."""
    ang = -np.pi / 2 + phase + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii, dtype=np.float64), n)
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def _unit_shapes() -> Dict[str, np.ndarray]:
    a = 0.18  # half width of the cross arms
    quarter = np.array([(-a, -0.5), (a, -0.5), (a, -a)])
    turn = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) -> (-y, x): a quarter turn
    cross = np.concatenate([quarter @ np.linalg.matrix_power(turn, i) for i in range(4)])
    arrow_right = np.array([(0.0, -0.5), (0.4, -0.05), (0.15, -0.05), (0.15, 0.5)])
    arrow = np.concatenate([arrow_right, arrow_right[:0:-1] * (-1.0, 1.0)])
    shapes = {
        "circle": _regular(24),
        "triangle": _regular(3),
        "square": _regular(4, phase=np.pi / 4),
        "star": _regular(10, radii=(1.0, 0.42)),
        "hexagon": _regular(6, phase=np.pi / 6),
        "cross": cross,
        "diamond": np.array([(0.0, -0.5), (0.34, 0.0), (0.0, 0.5), (-0.34, 0.0)]),
        "ellipse": _regular(24) * np.array([1.0, 0.55]),
        "pentagon": _regular(5),
        "arrow": arrow,
    }
    out = {}
    for name, p in shapes.items():  # centre the bounding box at 0, longest side 1
        lo, hi = p.min(0), p.max(0)
        out[name] = (p - (lo + hi) / 2) / (hi - lo).max()
    return out


_UNIT_SHAPES = _unit_shapes()
#: Shape names in the order classes use them (``num_shapes`` takes the first ones).
SHAPES: Tuple[str, ...] = tuple(_UNIT_SHAPES)
#: (name, RGB) in the order classes use them; red/orange and blue/purple are deliberately close.
COLOURS: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("red", (212, 44, 40)),
    ("blue", (44, 88, 206)),
    ("yellow", (226, 204, 46)),
    ("green", (52, 160, 64)),
    ("orange", (230, 112, 36)),
    ("purple", (122, 62, 188)),
    ("cyan", (40, 184, 200)),
    ("pink", (232, 122, 170)),
    ("brown", (128, 84, 44)),
    ("white", (236, 236, 232)),
)
#: Texture names; "solid" classes carry no texture word in their name.
TEXTURES: Tuple[str, ...] = ("solid", "striped", "dotted")
COUNT_PROFILES = ("loglinear", "zipf")
VAL_PROFILES = ("per_class", "train")


def knob(default: Any, help: str, **metadata: Any) -> Any:
    """A spec field: its default, its one-line ``help`` (the CLI flag's help too) and optional
    ``choices``."""
    return field(default=default, metadata=dict(metadata, help=help))


@dataclass(frozen=True)
class SyntheticSpec:
    """Every knob of the colour x shape dataset; the defaults are the ``"default"`` preset.

    ``PRESETS`` names specs; ``dataclasses.replace(spec, knob=value)`` overrides knobs. Build a
    dataset with :meth:`plan` (no pixels), :meth:`render` and :func:`write_dataset`, or all three
    with :func:`generate_synthetic_lvis`.
    """

    num_shapes: int = knob(8, f"first shapes of SHAPES (1..{len(SHAPES)})")
    num_colours: int = knob(6, f"first colours of COLOURS (1..{len(COLOURS)})")
    num_textures: int = knob(
        1, f"first textures of TEXTURES (1..{len(TEXTURES)}); K = shapes x colours x textures"
    )
    image_size: int = knob(96, "square image side in pixels (>= 32)")
    max_train_images: int = knob(350, "training images of the most frequent class")
    min_train_images: int = knob(1, "training images of the rarest class (>= 1)")
    count_profile: str = knob(
        "loglinear",
        "tail shape without count_source: log(count) linear in the rank (loglinear) or in "
        "log(rank) (zipf); see class_image_counts",
        choices=COUNT_PROFILES,
    )
    val_images_per_class: int = knob(
        8, "validation images whose main class is each class (val_profile per_class)"
    )
    co_occurrence: float = knob(
        0.3,
        "share of a class's training images in which it is a secondary class beside another "
        "class's objects, in [0, 1) (0: one class per image)",
    )
    max_classes_per_image: int = knob(3, "distinct classes in one image (1..4)")
    max_instances_per_class: int = knob(
        3, "instances of one class in one image (P(n) ~ 2^-n, only where they fit)"
    )
    neg_per_image: int = knob(8, "absent classes listed in an image's neg_category_ids")
    object_size: Tuple[float, float] = knob(
        (1 / 6, 1 / 2),
        "(min, max) object side as fractions of image_size, log-uniform, "
        "0 < min <= max <= 0.5",
    )
    max_objects: int = knob(
        6, "objects per image, all classes together, required ones first "
        "(>= max_classes_per_image)"
    )
    val_profile: str = knob(
        "per_class",
        "per_class: val_images_per_class val images per main class, secondary classes uniform; "
        "train: class c leads max(1, round(val_fraction m_c)) val images (m_c: train images it "
        "leads), secondary classes drawn in proportion to train counts",
        choices=VAL_PROFILES,
    )
    val_fraction: float = knob(
        0.2, "val / train share with val_profile train, in (0, 1] (LVIS v1: 19,809 / 100,170)"
    )
    appearance_jitter: float = knob(
        1.0,
        "scale j of the per-object colour variation, in [0, 5]: gain 1 - 0.18 j .. "
        "1 + 0.12 j, additive N(0, 8 j) per channel",
    )
    count_source: Optional[Union[str, Sequence[Dict[str, Any]]]] = knob(
        None,
        "LVIS v1 cat_info json (or its loaded list) giving the tail's shape, overriding "
        "count_profile; 'lvis_v1' = the file `make setup` installs "
        "(lt_det.data.lvis_v1_stats.default_cat_info_path())",
    )

    def check(self) -> None:
        """Raise :class:`LTDetError` naming every knob out of range (one line)."""
        p = {f.name: getattr(self, f.name) for f in fields(self)}
        checks = [
            (1 <= p["num_shapes"] <= len(SHAPES), f"num_shapes must be in 1..{len(SHAPES)}"),
            (1 <= p["num_colours"] <= len(COLOURS), f"num_colours must be in 1..{len(COLOURS)}"),
            (
                1 <= p["num_textures"] <= len(TEXTURES),
                f"num_textures must be in 1..{len(TEXTURES)}",
            ),
            (p["image_size"] >= 32, "image_size must be >= 32 pixels"),
            (p["min_train_images"] >= 1, "min_train_images must be >= 1"),
            (p["max_train_images"] >= p["min_train_images"], "max_train_images < min_train_images"),
            (p["val_images_per_class"] >= 1, "val_images_per_class must be >= 1"),
            (0 <= p["co_occurrence"] < 1, "co_occurrence must be in [0, 1)"),
            (1 <= p["max_classes_per_image"] <= 4, "max_classes_per_image must be in 1..4"),
            (p["max_instances_per_class"] >= 1, "max_instances_per_class must be >= 1"),
            (p["neg_per_image"] >= 0, "neg_per_image must be >= 0"),
            (
                0 < p["object_size"][0] <= p["object_size"][1] <= 0.5,
                "object_size must be (min, max) fractions of image_size with 0 < min <= max <= 0.5",
            ),
            (
                p["count_profile"] in COUNT_PROFILES,
                f"count_profile must be one of {COUNT_PROFILES}",
            ),
            (
                p["max_objects"] >= p["max_classes_per_image"],
                "max_objects must be >= max_classes_per_image",
            ),
            (p["val_profile"] in VAL_PROFILES, f"val_profile must be one of {VAL_PROFILES}"),
            (0 < p["val_fraction"] <= 1, "val_fraction must be in (0, 1]"),
            (0 <= p["appearance_jitter"] <= 5, "appearance_jitter must be in [0, 5]"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise LTDetError("generate_synthetic_lvis: " + "; ".join(bad) + f" (got {p}).")

    def unknown_knobs(self, preset: str, names: List[str]) -> str:
        """The line that refuses knobs this spec does not have."""
        return (
            f"preset '{preset}' has no knob(s) {names}; its knobs are "
            f"{[f.name for f in fields(self)]} (docs/synthetic.md)."
        )

    def plan(self, seed: int) -> "DatasetPlan":
        """See :func:`plan`."""
        return plan(self, seed)

    def render(self, dataset_plan: "DatasetPlan") -> Iterator["RenderedImage"]:
        """See :func:`render`."""
        return render(self, dataset_plan)

    def generate(self, out_dir: str, *, seed: int, preset: str, overwrite: bool) -> Dict[str, Any]:
        """Plan, render and write (:func:`generate_synthetic_lvis` with this spec)."""
        start = time.perf_counter()
        dataset_plan = self.plan(seed)
        info = {
            "description": "lt_det synthetic long-tailed detection dataset (LVIS v1 format)",
            "version": "1.0",
            "generator": "lt_det.data.synthetic.generate_synthetic_lvis",
            "seed": seed,
            "preset": preset,
            "params": spec_params(self),
            "count_source": _source_name(dataset_plan.count_source),
        }
        result = write_dataset(
            out_dir, self.render(dataset_plan), categories=dataset_plan.categories,
            planned_counts=dataset_plan.counts, info=info, licenses=[], overwrite=overwrite,
        )
        result["summary"]["seconds"] = round(time.perf_counter() - start, 3)
        return result


def _icon_preset(name: str) -> Callable[[], Any]:
    """The pictograph preset ``name``: its spec lives in lt_det.data.synthetic_icons, which
    builds on this module (so it is imported by name, when asked for)."""

    def icon_spec() -> Any:
        return importlib.import_module("lt_det.data.synthetic_icons").ICON_PRESETS[name]

    icon_spec.__doc__ = f"The ``{name}`` preset: ``lt_det.data.synthetic_icons.ICON_PRESETS``."
    return icon_spec


_DEFAULT = SyntheticSpec()
#: Named datasets: a spec, or a function returning one (the pictograph presets, whose module
#: builds on this one). ``preset_spec(name, **overrides)`` resolves either.
PRESETS: Dict[str, Union[SyntheticSpec, Callable[[], Any]]] = {
    "default": _DEFAULT,
    # Seconds-long tests and smoke runs.
    "tiny": replace(
        _DEFAULT,
        num_shapes=3,
        num_colours=2,
        image_size=48,
        max_train_images=20,
        val_images_per_class=2,
        max_instances_per_class=2,
        neg_per_image=2,
    ),
    # Closer to LVIS v1 in what docs/synthetic.md measured (tools/measure_dataset.py): the real
    # LVIS v1 tail (r/c/f shares), more classes and instances per image, rare classes among
    # frequent ones, a validation set whose class distribution follows training's (LVIS val:
    # same image source), and more within-class appearance variation (so same-shape classes of
    # close colours overlap).
    "lvis_like": replace(
        _DEFAULT,
        count_source="lvis_v1",
        co_occurrence=0.6,
        max_classes_per_image=4,
        max_instances_per_class=4,
        max_objects=10,
        object_size=(1 / 8, 3 / 8),
        val_profile="train",
        val_fraction=0.2,
        appearance_jitter=2.5,
    ),
}
#: Presets with pictograph classes (OpenMoji; lt_det.data.synthetic_icons.IconSpec).
ICON_PRESET_NAMES = ("icons", "icons_tiny")
for _name in ICON_PRESET_NAMES:
    PRESETS[_name] = _icon_preset(_name)


def preset_spec(preset: str, **overrides: Any) -> Any:
    """The spec of ``preset`` with ``overrides`` applied (``None`` values mean "the preset's").

    Returns:
        a :class:`SyntheticSpec`, or an ``IconSpec`` for the pictograph presets.

    Raises:
        LTDetError: unknown preset, or a knob the preset's spec does not have (values are checked
            when the spec is planned).
    """
    if preset not in PRESETS:
        raise LTDetError(f"preset '{preset}' is unknown; choose one of {list(PRESETS)}.")
    spec = PRESETS[preset]
    spec = spec if isinstance(spec, SyntheticSpec) else spec()
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(spec)})
    if unknown:
        raise LTDetError(spec.unknown_knobs(preset, unknown))
    return replace(spec, **given)


def spec_params(spec: Any) -> Dict[str, Any]:
    """The spec's knobs as the json's ``info["params"]`` records them (tuples as lists, a
    loaded ``count_source`` list as ``"<list>"``)."""
    out = {}
    for f in fields(spec):
        v = getattr(spec, f.name)
        if f.name == "count_source":
            v = _source_name(v)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _source_name(count_source: Any) -> Optional[str]:
    if count_source is None or isinstance(count_source, (str, os.PathLike)):
        return count_source and os.fspath(count_source)
    return "<list>"


def resolve_count_source(count_source: Any) -> Any:
    """``"lvis_v1"`` -> the installed LVIS v1 cat_info json; anything else as it is."""
    if isinstance(count_source, str) and count_source == "lvis_v1":
        from .lvis_v1_stats import default_cat_info_path

        return default_cat_info_path()
    return count_source

_MAX_ROTATION = math.radians(15)  # small, so a square never turns into a diamond
_GAP = 1.0  # pixels kept free between object boxes


# ----------------------------------------------------------------------------- class counts
def _read_count_source(count_source: Union[str, Sequence[Dict[str, Any]]]) -> np.ndarray:
    if isinstance(count_source, (str, os.PathLike)):
        path = os.fspath(count_source)
        if not os.path.isfile(path):
            raise LTDetError(
                f"count_source '{path}' not found. Pass the LVIS v1 cat_info json (a list of "
                "{'id', 'image_count', ...}; `make setup` puts it at "
                "lt_det.data.lvis_v1_stats.default_cat_info_path()) or None for count_profile."
            )
        with open(path) as f:
            info = json.load(f)
    else:
        path, info = "<list>", count_source
    if isinstance(info, dict):  # a whole LVIS json also works
        info = info.get("categories", [])
    try:
        counts = np.array([int(c["image_count"]) for c in info], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise LTDetError(
            f"count_source {path}: expected a list of dicts with an integer 'image_count'."
        ) from None
    counts = counts[counts > 0]
    if counts.size == 0:
        raise LTDetError(f"count_source {path}: no category with image_count > 0.")
    return counts


def _log_map(x: np.ndarray, lo: float, hi: float, new_lo: float, new_hi: float) -> np.ndarray:
    """Map [lo, hi] onto [new_lo, new_hi] linearly in log space."""
    if hi <= lo:
        return np.full_like(x, new_hi, dtype=np.float64)
    t = (np.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return np.exp(math.log(new_lo) + t * (math.log(new_hi) - math.log(new_lo)))


def class_image_counts(
    num_classes: int,
    *,
    max_train_images: int,
    min_train_images: int = 1,
    count_profile: str = "loglinear",
    count_source: Optional[Union[str, Sequence[Dict[str, Any]]]] = None,
) -> np.ndarray:
    """Training image count per class rank, largest first.

    Args:
        num_classes: K.
        max_train_images: count of the most frequent class.
        min_train_images: count of the rarest class (>= 1).
        count_profile: used when ``count_source`` is None.
            ``"loglinear"``: log(count) linear in the rank (geometric decay); 350 -> 1 over 48
            classes gives r/c/f = 19/18/11 classes and 2980 class-image pairs.
            ``"zipf"``: log(count) linear in log(rank) (power law); 350 -> 1 over 48 classes gives
            r/c/f = 38/8/2 and 801 class-image pairs.
        count_source: LVIS cat_info json path (or the loaded list of ``{"image_count", ...}``):
            the K counts are the source's counts at K evenly spaced ranks (its largest and smallest
            included). Counts <= 100 are kept as they are, so the r/c/f split of the source is kept;
            the head above 100 is compressed log-linearly so the largest becomes
            ``max_train_images`` (when ``max_train_images`` <= 100 the whole range is mapped
            log-linearly onto [min_train_images, max_train_images]).

    Returns:
        int64 array of shape (K,), non-increasing, in [min_train_images, max_train_images].
    """
    k, hi, lo = num_classes, float(max_train_images), float(min_train_images)
    if count_source is not None:
        src = np.sort(_read_count_source(count_source))[::-1].astype(np.float64)
        picked = src[np.round(np.linspace(0, src.size - 1, k)).astype(np.int64)]
        if hi > 100 and picked[0] > 100:
            head = picked > 100
            picked[head] = _log_map(picked[head], 100.0, picked[0], 100.0, hi)
        else:
            picked = _log_map(picked, picked[-1], picked[0], lo, hi)
        counts = picked
    elif count_profile in COUNT_PROFILES:
        rank = np.arange(1, k + 1, dtype=np.float64)
        if count_profile == "loglinear":
            t = (k - rank) / max(k - 1, 1)  # 1 for the top class, 0 for the last
        else:  # zipf
            t = 1.0 - np.log(rank) / math.log(max(k, 2))
        counts = lo * (hi / lo) ** t
    else:
        raise LTDetError(
            f"count_profile '{count_profile}' is unknown; choose one of {list(COUNT_PROFILES)}."
        )
    counts = np.clip(np.round(counts), lo, hi).astype(np.int64)
    return np.sort(counts)[::-1]


# ----------------------------------------------------------------------------- image plans
def _instances(rng: np.random.Generator, max_instances: int) -> int:
    """1 + truncated geometric(1/2): 1 instance half the time, then 2, 3, ..."""
    p = 0.5 ** np.arange(max_instances)
    return int(rng.choice(max_instances, p=p / p.sum())) + 1


def _plan_train(
    rng: np.random.Generator, counts: np.ndarray, co_occurrence: float, max_classes: int
) -> List[List[int]]:
    """Classes of every training image (main class first); class k is in exactly counts[k] images.

    A fraction ``co_occurrence`` of each class's images are images of another main class that
    the class joins as a secondary class (at most ``max_classes - 1`` of them per image).
    """
    k = counts.size
    extra = np.minimum(np.round(co_occurrence * counts).astype(np.int64), counts - 1)
    if max_classes <= 1:
        extra[:] = 0
    mains = np.repeat(np.arange(k), counts - extra)
    rng.shuffle(mains)
    images = [[int(c)] for c in mains]
    has = np.zeros((len(images), k), dtype=bool)
    has[np.arange(len(images)), mains] = True
    room = np.full(len(images), max_classes - 1, dtype=np.int64)
    for c in np.argsort(-extra, kind="stable"):
        need = int(extra[c])
        if need == 0:
            continue
        eligible = np.flatnonzero(~has[:, c] & (room > 0))
        take = rng.choice(eligible, size=min(need, eligible.size), replace=False)
        for i in np.sort(take):
            images[i].append(int(c))
        has[take, c] = True
        room[take] -= 1
        images.extend([int(c)] for _ in range(need - take.size))  # no room left: own images
    order = rng.permutation(len(images))
    return [list(images[i]) for i in order]


def _plan_val(
    rng: np.random.Generator,
    k: int,
    per_class: np.ndarray,
    extras_pool: np.ndarray,
    weights: Optional[np.ndarray] = None,
) -> List[List[int]]:
    """``per_class[c]`` images with main class c; as many secondary classes as a random training
    image has, drawn uniformly or, with ``weights`` (K,), with probability ~ weights."""
    images = []
    for c in np.repeat(np.arange(k), per_class):
        n_extra = min(int(rng.choice(extras_pool)) if extras_pool.size else 0, k - 1)
        others = np.delete(np.arange(k), c)
        if weights is None:
            extra = rng.choice(others, n_extra, False)
        else:
            w = weights[others] / weights[others].sum()
            extra = rng.choice(others, n_extra, False, p=w)
        images.append([int(c)] + [int(o) for o in np.sort(extra)])
    order = rng.permutation(len(images))
    return [images[i] for i in order]


# ----------------------------------------------------------------------------- drawing
def _shape_polygon(rng: np.random.Generator, unit: np.ndarray, size: float) -> np.ndarray:
    """Unit shape with aspect jitter and a small rotation, longest side about ``size`` pixels."""
    theta = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    p = (unit * rng.uniform(0.9, 1.1, size=2)) @ rot.T * size
    return p - p.min(0)


def _apart(a: Tuple[float, ...], b: Tuple[float, ...]) -> bool:
    """Boxes (x0, y0, x1, y1) at least ``_GAP`` pixels apart along x or y."""
    return a[0] >= b[2] + _GAP or b[0] >= a[2] + _GAP or a[1] >= b[3] + _GAP or b[1] >= a[3] + _GAP


def _layout(
    rng: np.random.Generator,
    classes: List[int],
    shape_of: np.ndarray,
    size: int,
    smin: float,
    smax: float,
    max_instances: int,
    max_objects: int = 6,
) -> List[Tuple[int, np.ndarray]]:
    """Non-touching polygons: one of every listed class (required), plus extra instances if room."""
    unit = [_UNIT_SHAPES[s] for s in SHAPES]
    wanted = [(c, True) for c in classes]
    for c in classes:
        wanted += [(c, False)] * (_instances(rng, max_instances) - 1)
    wanted = wanted[:max_objects]
    sizes = np.exp(rng.uniform(math.log(smin), math.log(smax), size=len(wanted)))
    # required objects first, big ones first, so they always fit
    order = sorted(range(len(wanted)), key=lambda i: (not wanted[i][1], -sizes[i]))
    for _attempt in range(20):
        boxes: List[Tuple[float, float, float, float]] = []
        objs: List[Tuple[int, np.ndarray]] = []
        ok = True
        for i in order:
            c, required = wanted[i]
            s = sizes[i] if _attempt == 0 else max(smin, sizes[i] * 0.8 ** _attempt)
            placed = None
            for t in range(30):
                if t == 15:
                    s = max(smin, s * 0.75)
                poly = _shape_polygon(rng, unit[shape_of[c]], s)
                w, h = poly.max(0)
                if w > size or h > size:
                    continue
                x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
                box = (x0, y0, x0 + w, y0 + h)
                if all(_apart(box, b) for b in boxes):
                    placed = np.clip(np.round(poly + (x0, y0), 2), 0, size)
                    boxes.append(box)
                    break
            if placed is not None:
                objs.append((c, placed))
            elif required:
                ok = False
                break
        if ok:
            return objs
    raise LTDetError(
        f"could not place {len(classes)} objects of at least {smin:.1f} px apart in a {size} px "
        "image; lower object_size or max_classes_per_image."
    )


def background_image(rng: np.random.Generator, size: int) -> Image.Image:
    """A (size, size) RGB background: muted random base colour, a linear gradient, then thin lines
    and blobs smaller than the smallest object as clutter (shared by every preset)."""
    base = rng.uniform(80, 175) + rng.uniform(-18, 18, size=3)
    ramp = np.linspace(-1, 1, size)
    gx, gy = rng.uniform(-22, 22, size=(2, 3))
    bg = base + ramp[None, :, None] * gx + ramp[:, None, None] * gy
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    scale = size / 96
    for _ in range(int(rng.integers(2, 7))):  # thin lines across the image
        pts = [tuple(p) for p in rng.uniform(0, size, size=(int(rng.integers(2, 4)), 2))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line(pts, fill=fill, width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 8))):  # blobs smaller than the smallest object
        r = rng.uniform(1.5, 4.5) * scale
        cx, cy = rng.uniform(0, size, size=2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r], fill=fill)
        else:
            pts = _regular(int(rng.integers(3, 6)), rng.uniform(0, 6.3)) * r + (cx, cy)
            draw.polygon([tuple(p) for p in pts], fill=fill)
    return img


_SUPERSAMPLE = 4


def _paint(
    canvas: np.ndarray,
    rng: np.random.Generator,
    poly: np.ndarray,
    rgb: Tuple[int, int, int],
    texture: str,
    jitter: float = 1.0,
) -> None:
    """Composite one object onto ``canvas`` (H, W, 3 float), anti-aliased by supersampling.
    ``jitter`` scales the per-object colour variation (gain range and additive noise)."""
    size = canvas.shape[0]
    x0, y0 = np.floor(poly.min(0)).astype(int)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int), size)
    cw, ch = max(x1 - x0, 1), max(y1 - y0, 1)
    s = _SUPERSAMPLE
    mask = Image.new("L", (cw * s, ch * s), 0)
    pts = (poly - (x0, y0)) * s
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts], fill=255)
    alpha = np.asarray(mask, dtype=np.float32).reshape(ch, s, cw, s).mean((1, 3)) / 255.0
    lo, hi = (0.82, 1.12) if jitter == 1.0 else (1 - 0.18 * jitter, 1 + 0.12 * jitter)
    colour = np.clip(np.asarray(rgb) * rng.uniform(lo, hi) + rng.normal(0, 8 * jitter, 3), 0, 255)
    layer = np.broadcast_to(colour, (ch, cw, 3)).astype(np.float32)
    if texture != "solid":
        period = max(3, int(round(max(cw, ch) / 5)))
        yy, xx = np.mgrid[0:ch, 0:cw] + rng.integers(0, period, size=2)[:, None, None]
        if texture == "striped":
            dark = ((xx + yy) % period) < period / 2
        else:  # dotted
            dark = ((xx % period) < period / 2) & ((yy % period) < period / 2)
        layer = np.where(dark[..., None], layer * 0.45, layer)
    a = alpha[..., None]
    region = canvas[y0 : y0 + ch, x0 : x0 + cw]
    region *= 1 - a
    region += layer * a


def _render(
    rng: np.random.Generator,
    objs: List[Tuple[int, np.ndarray]],
    size: int,
    colour_of: np.ndarray,
    texture_of: np.ndarray,
    jitter: float = 1.0,
) -> np.ndarray:
    canvas = np.asarray(background_image(rng, size), dtype=np.float32).copy()
    for c, poly in objs:
        _paint(canvas, rng, poly, COLOURS[colour_of[c]][1], TEXTURES[texture_of[c]], jitter)
    canvas *= rng.uniform(0.92, 1.08, size=3).astype(np.float32)  # colour cast of the "camera"
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(3, 9)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ---------------------------------------------------------------------- plan / render / write
@dataclass
class ImagePlan:
    """One image to draw.

    Attributes:
        split: "train" or "val".
        classes: class indices in [0, K) the image must hold (a train image's main class first).
        objects: (class index, polygon (n, 2) float64 in pixels) per placed object.
        rng_state: state of the image's random stream after placing the objects; the pixels and
            the negative classes are drawn from it (``numpy.random.PCG64.state``).
    """

    split: str
    classes: List[int]
    objects: List[Tuple[int, np.ndarray]]
    rng_state: Dict[str, Any]


@dataclass
class DatasetPlan:
    """Everything about a dataset but its pixels.

    Attributes:
        counts: int64 (K,): training images planned per class.
        categories: LVIS category records (counts and ``frequency`` are filled when written).
        images: the train images, then the val images.
        count_source: the count source used (a path, a list, or None).
    """

    counts: np.ndarray
    categories: List[Dict[str, Any]]
    images: List[ImagePlan]
    count_source: Any = None


@dataclass
class RenderedImage:
    """One drawn image: ``pixels`` uint8 (H, W, 3); ``annotations`` LVIS records without
    ``id`` / ``image_id`` (``category_id``, ``bbox``, ``area``, ``segmentation``);
    ``neg_category_ids`` sorted category ids absent from the image."""

    split: str
    pixels: np.ndarray
    annotations: List[Dict[str, Any]]
    neg_category_ids: List[int]


def _class_factors(spec: SyntheticSpec) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shape, colour, texture) index of every class, each int (K,), classes in product order."""
    combos = list(
        itertools.product(
            range(spec.num_shapes), range(spec.num_colours), range(spec.num_textures)
        )
    )
    return tuple(np.array([combo[i] for combo in combos], dtype=np.int64) for i in range(3))


def plan(spec: SyntheticSpec, seed: int) -> DatasetPlan:
    """Classes, object placements and random streams of every image; no pixels, no files.

    Class counts and the train / val class lists come from ``default_rng([seed, 0])``; image
    ``i`` of split ``s`` (0 train, 1 val) is placed with ``default_rng([seed, 1 + s, i])``.

    Raises:
        LTDetError: a knob out of range, an unreadable ``count_source``, or objects that do not
            fit an image.
    """
    spec.check()
    count_source = resolve_count_source(spec.count_source)
    size = int(spec.image_size)
    smin, smax = (float(f) * size for f in spec.object_size)
    shape_of, colour_of, texture_of = _class_factors(spec)
    k = shape_of.size

    rng = np.random.default_rng([seed, 0])
    ranked = class_image_counts(
        k,
        max_train_images=int(spec.max_train_images),
        min_train_images=int(spec.min_train_images),
        count_profile=spec.count_profile,
        count_source=count_source,
    )
    counts = np.empty(k, dtype=np.int64)
    counts[rng.permutation(k)] = ranked  # which class is rare is up to the seed
    train_plan = _plan_train(
        rng, counts, float(spec.co_occurrence), int(spec.max_classes_per_image)
    )
    extras_pool = np.array([len(c) - 1 for c in train_plan], dtype=np.int64)
    if spec.val_profile == "train":
        mains = np.bincount([c[0] for c in train_plan], minlength=k)  # images led by class c
        val_counts = np.maximum(1, np.round(float(spec.val_fraction) * mains)).astype(np.int64)
        val_plan = _plan_val(rng, k, val_counts, extras_pool, weights=counts.astype(np.float64))
    else:
        val_counts = np.full(k, int(spec.val_images_per_class), dtype=np.int64)
        val_plan = _plan_val(rng, k, val_counts, extras_pool)

    categories = []
    for cid, (s, c, t) in enumerate(zip(shape_of, colour_of, texture_of), start=1):
        words = ([] if TEXTURES[t] == "solid" else [TEXTURES[t]]) + [COLOURS[c][0], SHAPES[s]]
        categories.append(
            {
                "id": cid,
                "name": "_".join(words),
                "synonyms": ["_".join(words)],
                "def": f"a {' '.join(words)} drawn on a noisy background",
                "synset": f"{'_'.join(words)}.n.01",
                "frequency": None,
                "image_count": 0,
                "instance_count": 0,
            }
        )
    images = []
    for split_index, (split, class_lists) in enumerate((("train", train_plan), ("val", val_plan))):
        for index, classes in enumerate(class_lists):
            img_rng = np.random.default_rng([seed, 1 + split_index, index])
            objs = _layout(
                img_rng, classes, shape_of, size, smin, smax, int(spec.max_instances_per_class),
                int(spec.max_objects),
            )
            images.append(ImagePlan(split, classes, objs, img_rng.bit_generator.state))
    return DatasetPlan(counts, categories, images, count_source)


def render(spec: SyntheticSpec, dataset_plan: DatasetPlan) -> Iterator[RenderedImage]:
    """Draw the planned images one by one (background, objects, camera noise) and list their
    annotations: bbox = polygon extent, area = polygon area (shoelace), negatives drawn last."""
    size = int(spec.image_size)
    _, colour_of, texture_of = _class_factors(spec)
    k = colour_of.size
    for im in dataset_plan.images:
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = im.rng_state
        jitter = float(spec.appearance_jitter)
        pixels = _render(rng, im.objects, size, colour_of, texture_of, jitter)
        absent = np.setdiff1d(np.arange(k), im.classes)
        neg = rng.choice(absent, size=min(int(spec.neg_per_image), absent.size), replace=False)
        annotations = []
        for c, poly in im.objects:
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append(
                {
                    "category_id": int(c) + 1,
                    "bbox": [float(x0), float(y0), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round(_poly_area(poly), 2),
                    "segmentation": [[float(v) for v in poly.reshape(-1)]],
                }
            )
        yield RenderedImage(im.split, pixels, annotations, sorted(int(n) + 1 for n in neg))


def write_dataset(
    out_dir: str,
    images: Iterable[RenderedImage],
    *,
    categories: List[Dict[str, Any]],
    planned_counts: np.ndarray,
    info: Dict[str, Any],
    licenses: List[Dict[str, Any]],
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Write ``images`` (train first, then val; drawn as they are written) as LVIS v1 jsons and
    PNGs under ``out_dir`` (layout in the module docstring).

    Category ``image_count``, ``instance_count`` and ``frequency`` (LVIS rule, r <= 10 < c <= 100
    < f) are counted from the written train annotations; val carries them too, as in LVIS v1.

    Returns:
        ``{"train_json", "val_json", "train_image_root", "val_image_root", "summary"}`` (summary
        as :func:`generate_synthetic_lvis`'s, without ``seconds``).

    Raises:
        LTDetError: ``out_dir`` is not empty and not ``overwrite`` (checked before writing).
        RuntimeError: a class's written train image count differs from ``planned_counts``.
    """
    prepare_out_dir(out_dir, overwrite)
    categories = [dict(c) for c in categories]
    records: Dict[str, List[Dict[str, Any]]] = {"train": [], "val": []}
    annotations: Dict[str, List[Dict[str, Any]]] = {"train": [], "val": []}
    image_id = ann_id = 0
    for image in images:
        image_id += 1
        split = image.split
        file_name = f"{image_id:06d}.png"
        # noisy pixels barely compress: level 1 is as small as the default and 3x faster
        Image.fromarray(image.pixels, "RGB").save(
            os.path.join(out_dir, split, file_name), format="PNG", compress_level=1
        )
        height, width = image.pixels.shape[:2]
        records[split].append(
            {
                "id": image_id,
                "file_name": file_name,
                "coco_url": f"synthetic://lt_det/{split}/{file_name}",
                "height": height,
                "width": width,
                "neg_category_ids": image.neg_category_ids,
                "not_exhaustive_category_ids": [],
            }
        )
        for ann in image.annotations:
            ann_id += 1
            annotations[split].append({"id": ann_id, "image_id": image_id, **ann})

    images_of = [set() for _ in categories]
    for ann in annotations["train"]:
        images_of[ann["category_id"] - 1].add(ann["image_id"])
        categories[ann["category_id"] - 1]["instance_count"] += 1
    for cat, ims, target in zip(categories, images_of, planned_counts):
        cat["image_count"] = len(ims)
        cat["frequency"] = frequency_group(len(ims))
        if len(ims) != target:  # the plan guarantees this; a failure is a bug here
            raise RuntimeError(f"class {cat['name']}: {len(ims)} train images, planned {target}")

    paths = {
        "train_json": os.path.join(out_dir, TRAIN_JSON),
        "val_json": os.path.join(out_dir, VAL_JSON),
        "train_image_root": os.path.join(out_dir, "train"),
        "val_image_root": os.path.join(out_dir, "val"),
    }
    for split in ("train", "val"):
        data = {
            "info": info,
            "licenses": licenses,
            "images": records[split],
            "annotations": annotations[split],
            "categories": categories,  # val carries the train counts, as in LVIS v1
        }
        with open(paths[f"{split}_json"], "w") as f:
            f.write(json.dumps(data, separators=(",", ":")))  # C encoder: dumps, not dump

    summary = {
        "num_classes": len(categories),
        "groups": {g: sum(c["frequency"] == g for c in categories) for g in "rcf"},
        "train_images": len(records["train"]),
        "train_instances": len(annotations["train"]),
        "val_images": len(records["val"]),
        "val_instances": len(annotations["val"]),
        "image_count_max": int(planned_counts.max()),
        "image_count_min": int(planned_counts.min()),
    }
    return dict(paths, summary=summary)


def prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """Make ``out_dir/{train,val}``; a non-empty ``out_dir`` is refused (:class:`LTDetError`)
    unless ``overwrite``, which removes only the dataset's own files (the two jsons and the two
    image folders)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise LTDetError(
                f"output folder '{out_dir}' exists and is not empty; choose another folder or "
                "pass --overwrite (overwrite=True from Python) to replace the dataset in it."
            )
        for name in (TRAIN_JSON, VAL_JSON):
            if os.path.isfile(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        for name in ("train", "val"):
            if os.path.isdir(os.path.join(out_dir, name)):
                shutil.rmtree(os.path.join(out_dir, name))
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LTDetError(f"output path '{out_dir}' exists and is not a folder.")
    for name in ("train", "val"):
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)


# ----------------------------------------------------------------------------- public API
def generate_synthetic_lvis(
    out_dir: str,
    *,
    seed: int = 0,
    preset: str = "default",
    overwrite: bool = False,
    **overrides: Any,
) -> Dict[str, Any]:
    """Write a long-tailed LVIS v1-format dataset (train + val) of coloured shapes or, with the
    ``icons`` / ``icons_tiny`` presets, of pictographs.

    Args:
        out_dir: output folder; created; must be empty unless ``overwrite``.
        seed: everything (class counts, their assignment to classes, layouts, pixels) follows it.
        preset: a name in ``PRESETS``: "default" (48 classes, 96 px), "tiny" (6 classes, 48 px,
            for tests), "lvis_like", or "icons" / "icons_tiny" (pictograph classes,
            :class:`lt_det.data.synthetic_icons.IconSpec`).
        overwrite: replace the dataset files (the two jsons, ``train/``, ``val/``) in a non-empty
            ``out_dir``; other files there are left alone.
        **overrides: knobs of the preset's spec (:class:`SyntheticSpec` fields, documented there,
            or ``IconSpec``'s); a ``None`` value keeps the preset's.

    Returns:
        ``{"train_json", "val_json", "train_image_root", "val_image_root", "summary"}``; summary
        has ``num_classes``, ``groups`` ({"r", "c", "f"}: number of classes), ``train_images``,
        ``train_instances``, ``val_images``, ``val_instances``, ``image_count_max``,
        ``image_count_min`` and ``seconds`` (wall time).

    Raises:
        LTDetError: unknown preset or knob, a knob out of range (all checked before anything is
            written), a non-empty ``out_dir`` without ``overwrite``.
    """
    spec = preset_spec(preset, **overrides)
    return spec.generate(out_dir, seed=seed, preset=preset, overwrite=overwrite)


def register_synthetic_lvis(out_dir: str, prefix: str = "synthetic_lvis") -> Tuple[str, str]:
    """Register ``<prefix>_train`` and ``<prefix>_val`` from a generated ``out_dir``.

    Args:
        out_dir: a folder written by ``generate_synthetic_lvis``.
        prefix: dataset name prefix.

    Returns:
        (train name, val name), registered with ``lt_det.data.register_lvis_format``.
    """
    from .lvis_format import register_lvis_format  # lazy, as lt_det.data imports this module

    names = []
    for split, json_name in (("train", TRAIN_JSON), ("val", VAL_JSON)):
        json_file = os.path.join(out_dir, json_name)
        if not os.path.isfile(json_file):
            raise LTDetError(
                f"'{json_file}' not found: generate the dataset first "
                f"(python tools/make_synthetic_lvis.py --out {out_dir})."
            )
        name = f"{prefix}_{split}"
        register_lvis_format(name, json_file, os.path.join(out_dir, split))
        names.append(name)
    return names[0], names[1]
