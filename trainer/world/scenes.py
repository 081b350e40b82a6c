"""Procedural captioned scenes: the whole visual world of the small model.

A scene is a background (colour + pattern) holding 0, 1 or 2 objects, each a
shape (at most one of each shape per scene) with a colour and a texture, at a
random position and size. Everything here is numpy + PIL, and every random
choice flows from one ``numpy.random.Generator``, so a seed fixes the data.

Rendering at 64×64: textures have an 8-pixel period (4-pixel stripes, checks,
dots), which survives the VAE's 4× downsampling (two latent pixels per period);
background patterns use a 16-pixel period, a milder contrast and a random
phase, so that an object's texture and the background's pattern never look
alike. Shapes are drawn at 4× and box-filtered down, for antialiased edges.

Empty scenes (a background alone, 8 %) exist so that the class prompt
"a photo of a background" has a prior, as the background subject needs.

>>> rng = np.random.default_rng(0)
>>> scene = sample_scene(rng)
>>> render(scene).shape, caption(scene, rng)[:2]
((64, 64, 3), 'a ')
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64  # pixels per side
SUPERSAMPLE = 4  # shapes are drawn at 4× and box-filtered down (antialiasing)

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "ring",
    "cross",
    "diamond",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "purple": (145, 55, 195),
    "white": (240, 240, 240),
    "black": (30, 30, 30),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
TEXTURES: tuple[str, ...] = ("solid", "striped", "checkered", "dotted")
BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")

OBJECT_PERIOD = 8  # pixels; one stripe/check is half of it
BACKGROUND_PERIOD = 16  # pixels
BACKGROUND_PATTERN_STRENGTH = 0.3  # fraction of the way to the contrast shade

# How many objects a scene holds, and how often.
OBJECT_COUNT_PROBABILITIES = {0: 0.08, 1: 0.52, 2: 0.40}
# Captions mention each attribute only sometimes, as real captions do, so that
# "a star" means "any star" and the model learns a prior over the rest.
P_MENTION_COLOUR = 0.8
P_MENTION_TEXTURE = 0.6
P_MENTION_BACKGROUND = 0.6
P_MENTION_BACKGROUND_COLOUR = 0.85
P_MENTION_BACKGROUND_PATTERN = 0.6
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "{}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
)
# Every word a caption can hold (the rare subject tokens live in vocabulary.py).
CAPTION_WORDS: tuple[str, ...] = (
    ("a", "an", "photo", "picture", "image", "drawing", "of", "and", "on", "background")
    + SHAPES
    + COLOUR_NAMES
    + TEXTURES
    + BACKGROUND_PATTERNS
)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene: what it is and where (centre and radius in pixels)."""

    shape: str
    colour: str
    texture: str
    centre_x: float
    centre_y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """A background and its objects; ``phase`` shifts the background pattern (pixels)."""

    background_colour: str
    background_pattern: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    phase: tuple[int, int] = (0, 0)


def contrast_shade(colour: str) -> tuple[int, int, int]:
    """The second tone of a texture: darker for light colours, lighter for dark ones.

    >>> contrast_shade("black")
    (147, 147, 147)
    """
    rgb = np.array(COLOURS[colour], dtype=np.float64)
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    shaded = rgb * 0.45 if luminance > 110 else rgb + (255 - rgb) * 0.52
    return tuple(int(round(v)) for v in shaded)


def sample_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | None = None,
    fixed_objects: tuple[dict, ...] = (),
    background: dict | None = None,
) -> Scene:
    """Draw a random scene; attributes given in ``fixed_objects``/``background`` are kept.

    ``fixed_objects`` are partial object specs (keys shape, colour, texture);
    the rest of each object, the other objects and the background are random.
    An object never shares the background's colour (it would be invisible).

    >>> scene = sample_scene(np.random.default_rng(1), fixed_objects=({"shape": "star"},))
    >>> any(o.shape == "star" for o in scene.objects)
    True
    """
    if n_objects is None:
        counts = list(OBJECT_COUNT_PROBABILITIES)
        probabilities = list(OBJECT_COUNT_PROBABILITIES.values())
        n_objects = int(rng.choice(counts, p=probabilities))
    n_objects = max(n_objects, len(fixed_objects))
    if n_objects > 2:
        raise ValueError(f"a scene holds at most 2 objects, asked for {n_objects}")
    background = dict(background or {})
    fixed_colours = {spec["colour"] for spec in fixed_objects if "colour" in spec}
    if "colour" not in background:
        free = [c for c in COLOUR_NAMES if c not in fixed_colours]
        background["colour"] = free[rng.integers(len(free))]
    if "pattern" not in background:
        # Plain backgrounds are the most common, as in photos.
        background["pattern"] = BACKGROUND_PATTERNS[rng.choice(4, p=[0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])]
    if background["colour"] in fixed_colours:
        raise ValueError(f"object and background share the colour {background['colour']!r}")

    specs = [dict(spec) for spec in fixed_objects]
    while len(specs) < n_objects:
        specs.append({})
    taken_shapes = {spec["shape"] for spec in specs if "shape" in spec}
    for spec in specs:
        if "shape" not in spec:
            free = [s for s in SHAPES if s not in taken_shapes]
            spec["shape"] = free[rng.integers(len(free))]
            taken_shapes.add(spec["shape"])
        if "colour" not in spec:
            free = [c for c in COLOUR_NAMES if c != background["colour"]]
            spec["colour"] = free[rng.integers(len(free))]
        if "texture" not in spec:
            spec["texture"] = TEXTURES[rng.integers(len(TEXTURES))]
    if len(taken_shapes) != len(specs):
        raise ValueError("a scene holds at most one object of each shape")

    placed = _place(rng, len(specs))
    objects = tuple(
        SceneObject(spec["shape"], spec["colour"], spec["texture"], x, y, r)
        for spec, (x, y, r) in zip(specs, placed, strict=True)
    )
    phase = (int(rng.integers(BACKGROUND_PERIOD)), int(rng.integers(BACKGROUND_PERIOD)))
    return Scene(background["colour"], background["pattern"], objects, phase)


def _place(rng: np.random.Generator, count: int) -> list[tuple[float, float, float]]:
    """Centres and radii (pixels) for ``count`` objects that do not overlap."""
    # One object may be large; two must share 64 pixels, so they are smaller.
    low, high = (10.0, 17.0) if count == 1 else (8.0, 12.5)
    while True:
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            r = float(rng.uniform(low, high))
            x = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            y = float(rng.uniform(r + 1, IMAGE_SIZE - r - 1))
            placed.append((x, y, r))
        if all(
            np.hypot(a[0] - b[0], a[1] - b[1]) > a[2] + b[2] + 2
            for i, a in enumerate(placed)
            for b in placed[i + 1 :]
        ):
            return placed


def _shape_mask(obj: SceneObject) -> np.ndarray:
    """Antialiased coverage in [0, 1] of one shape, shape (64, 64)."""
    s = SUPERSAMPLE
    size = IMAGE_SIZE * s
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = obj.centre_x * s, obj.centre_y * s, obj.radius * s
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = 0.5 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif obj.shape == "square":
        half = 0.82 * r
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=255)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], 255)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)], 255)
    elif obj.shape == "cross":
        arm = 0.34 * r
        draw.rectangle([cx - r, cy - arm, cx + r, cy + arm], fill=255)
        draw.rectangle([cx - arm, cy - r, cx + arm, cy + r], fill=255)
    elif obj.shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        points = [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles, strict=True)]
        draw.polygon(points, 255)
    elif obj.shape == "heart":
        t = np.linspace(0, 2 * np.pi, 120)
        hx = 16 * np.sin(t) ** 3
        hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        scale = r / 16.5
        points = [(cx + scale * x, cy + scale * (y + 1.5)) for x, y in zip(hx, hy, strict=True)]
        draw.polygon(points, 255)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _pattern(kind: str, period: int, phase: tuple[int, int]) -> np.ndarray:
    """Where the second tone goes, in [0, 1], shape (64, 64): stripes, checks or dots."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    x = x + phase[0]
    y = y + phase[1]
    half = period // 2
    if kind in ("solid", "plain"):
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    if kind == "striped":
        # Objects carry horizontal stripes, backgrounds vertical ones.
        axis = y if period == OBJECT_PERIOD else x
        return ((axis // half) % 2).astype(np.float32)
    if kind == "checkered":
        return (((x // half) + (y // half)) % 2).astype(np.float32)
    if kind == "dotted":
        dx = (x % period) - (period - 1) / 2
        dy = (y % period) - (period - 1) / 2
        radius = period * 0.26
        # Soft edge of one pixel: dots stay round at this size.
        return np.clip(radius + 0.5 - np.hypot(dx, dy), 0.0, 1.0)
    raise ValueError(f"unknown texture {kind!r}")


def render(scene: Scene) -> np.ndarray:
    """Draw a scene as uint8 RGB, shape (64, 64, 3).

    >>> render(sample_scene(np.random.default_rng(0))).dtype
    dtype('uint8')
    """
    base = np.array(COLOURS[scene.background_colour], np.float32)
    shade = np.array(contrast_shade(scene.background_colour), np.float32)
    second = base + BACKGROUND_PATTERN_STRENGTH * (shade - base)
    weight = _pattern(scene.background_pattern, BACKGROUND_PERIOD, scene.phase)[..., None]
    image = base * (1 - weight) + second * weight
    for obj in scene.objects:
        tone = _pattern(obj.texture, OBJECT_PERIOD, (0, 0))[..., None]
        main = np.array(COLOURS[obj.colour], np.float32)
        other = np.array(contrast_shade(obj.colour), np.float32)
        fill = main * (1 - tone) + other * tone
        alpha = _shape_mask(obj)[..., None]
        image = image * (1 - alpha) + fill * alpha
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(
    shape: str, colour: str | None = None, texture: str | None = None, token: str | None = None
) -> str:
    """A noun phrase with its article, e.g. "an orange dotted star" or "a sks star".

    >>> object_phrase("star", "orange", "dotted")
    'an orange dotted star'
    """
    words = [w for w in (token, colour, texture, shape) if w]
    return f"{_article(words[0]) if not token else 'a'} {' '.join(words)}"


def background_phrase(colour: str | None = None, pattern: str | None = None) -> str:
    """The background's noun phrase, e.g. "a green striped background".

    >>> background_phrase("green", None)
    'a green background'
    """
    words = [w for w in (colour, pattern, "background") if w]
    return f"{_article(words[0])} {' '.join(words)}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption for a scene: a template, all objects, some of their attributes.

    >>> rng = np.random.default_rng(3)
    >>> caption(sample_scene(rng, n_objects=1), rng).split()[-1] in SHAPES + ("background",)
    True
    """
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    objects = list(scene.objects)
    rng.shuffle(objects)  # caption order says nothing about position
    phrases = []
    for obj in objects:
        colour = obj.colour if rng.random() < P_MENTION_COLOUR else None
        texture = obj.texture if rng.random() < P_MENTION_TEXTURE else None
        phrases.append(object_phrase(obj.shape, colour, texture))
    bg_colour = scene.background_colour if rng.random() < P_MENTION_BACKGROUND_COLOUR else None
    bg_pattern = scene.background_pattern if rng.random() < P_MENTION_BACKGROUND_PATTERN else None
    background = background_phrase(bg_colour, bg_pattern)
    if not phrases:
        return template.format(background)
    text = " and ".join(phrases)
    if rng.random() < P_MENTION_BACKGROUND:
        text += " on " + background
    return template.format(text)


def full_caption(scene: Scene) -> str:
    """The caption that names every attribute (for evaluation), e.g.
    "a photo of a red striped star on a green plain background".

    >>> full_caption(Scene("green", "plain", (SceneObject("star", "red", "solid", 30, 30, 10),)))
    'a photo of a red solid star on a green plain background'
    """
    background = background_phrase(scene.background_colour, scene.background_pattern)
    if not scene.objects:
        return f"a photo of {background}"
    objects = " and ".join(object_phrase(o.shape, o.colour, o.texture) for o in scene.objects)
    return f"a photo of {objects} on {background}"


def scene_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Integer labels of a scene for the attribute classifier (judge.py).

    ``present[s]`` is 1 if shape s is in the scene; ``colour[s]``/``texture[s]``
    index COLOUR_NAMES/TEXTURES, or -1 where the shape is absent.

    >>> scene_labels(sample_scene(np.random.default_rng(0)))["present"].shape
    (8,)
    """
    present = np.zeros(len(SHAPES), np.int64)
    colour = np.full(len(SHAPES), -1, np.int64)
    texture = np.full(len(SHAPES), -1, np.int64)
    for obj in scene.objects:
        s = SHAPES.index(obj.shape)
        present[s] = 1
        colour[s] = COLOUR_NAMES.index(obj.colour)
        texture[s] = TEXTURES.index(obj.texture)
    return {
        "present": present,
        "colour": colour,
        "texture": texture,
        "background_colour": np.int64(COLOUR_NAMES.index(scene.background_colour)),
        "background_pattern": np.int64(BACKGROUND_PATTERNS.index(scene.background_pattern)),
    }


CELL = 4  # pixels per side of one judge cell (64 / 4 = 16 cells per side)


def scene_cells(scene: Scene) -> dict[str, np.ndarray]:
    """Dense labels on the 16×16 grid of 4-pixel cells, for training the judge.

    ``kind``: 0 background, 1 + index in SHAPES for a shape; ``colour``: index in
    COLOUR_NAMES of what covers the cell; ``pattern``: index in TEXTURES (objects)
    or BACKGROUND_PATTERNS (background), which share the order plain/solid,
    striped, checkered, dotted. Cells a shape covers only partly are -1 (ignored).

    >>> scene_cells(sample_scene(np.random.default_rng(0)))["kind"].shape
    (16, 16)
    """
    side = IMAGE_SIZE // CELL
    coverage = np.zeros((side, side), np.float32)
    kind = np.zeros((side, side), np.int64)
    colour = np.full((side, side), COLOUR_NAMES.index(scene.background_colour), np.int64)
    pattern = np.full((side, side), BACKGROUND_PATTERNS.index(scene.background_pattern), np.int64)
    for obj in scene.objects:
        cover = _shape_mask(obj).reshape(side, CELL, side, CELL).mean(axis=(1, 3))
        inside = cover > 0.6
        kind[inside] = SHAPES.index(obj.shape) + 1
        colour[inside] = COLOUR_NAMES.index(obj.colour)
        pattern[inside] = TEXTURES.index(obj.texture)
        coverage += cover
    ambiguous = (coverage >= 0.1) & (kind == 0)
    for array in (kind, colour, pattern):
        array[ambiguous] = -1
    return {"kind": kind, "colour": colour, "pattern": pattern}


def make_dataset(count: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """``count`` random scenes and their images (uint8, (count, 64, 64, 3)), fixed by ``seed``.

    Captions are drawn separately (``caption``), so that each epoch can word a
    scene differently.

    >>> images, scenes = make_dataset(4, seed=0)
    >>> images.shape, len(scenes)
    ((4, 64, 64, 3), 4)
    """
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    images = np.stack([render(scene) for scene in scenes]) if scenes else np.zeros((0, 64, 64, 3), np.uint8)
    return images, scenes
