"""The attribute classifier ("judge") that turns images of the small world into attributes.

It is how benchmarks measure subject fidelity and prior preservation without
CLIP: for each of the 8 shape classes it predicts whether the shape is present
and, if so, its colour and texture; for the background, its colour and pattern.
It is a small CNN trained on the world's own procedural images, some of them
passed through the world's VAE (so that model samples, which are VAE decodes,
look familiar to it). Its weights ship beside the model
(``model/judge.safetensors``, with its config and held-out accuracies in the
file's metadata).

Architecture: a dense classifier on a 16×16 grid of 4-pixel cells (what covers
the cell: background or which shape; its colour; its pattern), trained with the
scenes' exact cell labels (``scenes.scene_cells``) — dense labels teach far
faster than image-level ones. Image-level attributes come from the cells: a
shape is present if some cell is confidently that shape, and its colour and
texture are the cell predictions averaged over where the shape is, so "a red
star and a blue heart" never blends into "purple everything".

>>> from trainer.world import subjects
>>> star = subjects()[0]
>>> subject_score(star.images(), star) > 0.8  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainer.world.scenes import BACKGROUND_PATTERNS, COLOUR_NAMES, SHAPES, TEXTURES

if TYPE_CHECKING:
    from trainer.world import Subject

JUDGE_FILE = "judge.safetensors"
HEAD_NAMES = ("present", "colour", "texture", "background_colour", "background_pattern")


class JudgeNet(nn.Module):
    """CNN: (B, 3, 64, 64) in [-1, 1] → logits on a 16×16 grid of 4-pixel cells.

    Per cell: ``kind`` (background or one of the 8 shapes), ``colour`` (8) and
    ``pattern`` (4: plain/solid, striped, checkered, dotted). ``image_level``
    turns them into per-image attributes.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()

        def stage(channels_in: int, channels_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 3, padding=1),
                nn.GroupNorm(8, channels_out),
                nn.SiLU(),
                nn.Conv2d(channels_out, channels_out, 3, padding=1),
                nn.GroupNorm(8, channels_out),
                nn.SiLU(),
            )

        self.stage64 = stage(3, width)
        self.stage32 = stage(width, 2 * width)
        self.stage16 = stage(2 * width, 4 * width)
        # An 8×8 stage sees whole shapes (up to 34 pixels); its features return
        # to the 16×16 grid, as in a feature pyramid.
        self.stage8 = stage(4 * width, 4 * width)
        self.heads = nn.Conv2d(4 * width, 1 + len(SHAPES) + len(COLOUR_NAMES) + len(TEXTURES), 1)
        self.width = width

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cell logits: kind (B, 9, 16, 16), colour (B, 8, 16, 16), pattern (B, 4, 16, 16)."""
        x = self.stage32(F.avg_pool2d(self.stage64(images), 2))
        fine = self.stage16(F.avg_pool2d(x, 2))
        coarse = self.stage8(F.avg_pool2d(fine, 2))
        features = fine + F.interpolate(coarse, scale_factor=2, mode="nearest")
        kind, colour, pattern = self.heads(features).split(
            [1 + len(SHAPES), len(COLOUR_NAMES), len(TEXTURES)], dim=1
        )
        return {"kind": kind, "colour": colour, "pattern": pattern}


def image_level(cells: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image probabilities from cell logits.

    present[s] = max over cells of P(kind = s); colour/texture of shape s =
    cell distributions averaged with weights P(kind = s); the background's
    colour/pattern likewise with weights P(kind = background).
    Shapes: present (B, 8), colour (B, 8, 8), texture (B, 8, 4),
    background_colour (B, 8), background_pattern (B, 4).
    """
    kind = cells["kind"].softmax(1).flatten(2)  # (B, 9, L)
    colour = cells["colour"].softmax(1).flatten(2)  # (B, 8, L)
    pattern = cells["pattern"].softmax(1).flatten(2)  # (B, 4, L)
    weights = kind / kind.sum(-1, keepdim=True).clamp_min(1e-6)
    colour_by_kind = torch.einsum("bkl,bcl->bkc", weights, colour)
    pattern_by_kind = torch.einsum("bkl,bpl->bkp", weights, pattern)
    return {
        "present": kind[:, 1:].amax(-1),
        "colour": colour_by_kind[:, 1:],
        "texture": pattern_by_kind[:, 1:],
        "background_colour": colour_by_kind[:, 0],
        "background_pattern": pattern_by_kind[:, 0],
    }


def judge_loss(cells: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the per-cell cross-entropies; cells labelled -1 (partly covered) are ignored."""
    return sum(
        F.cross_entropy(cells[name], targets[name], ignore_index=-1) for name in ("kind", "colour", "pattern")
    )


def head_accuracies(
    probabilities: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Image-level accuracy per head (colour/texture over present shapes only), as fractions.

    >>> # head_accuracies(image_level(net(images)), labels_to_tensors(labels))
    """
    present = labels["present"].bool()

    def hits(name: str) -> torch.Tensor:
        return probabilities[name].argmax(-1) == labels[name]

    return {
        "present": float(((probabilities["present"] > 0.5) == present).float().mean()),
        "colour": float(hits("colour")[present].float().mean()),
        "texture": float(hits("texture")[present].float().mean()),
        "background_colour": float(hits("background_colour").float().mean()),
        "background_pattern": float(hits("background_pattern").float().mean()),
    }


def save_judge(net: JudgeNet, path: str | Path, accuracies: dict | None = None) -> None:
    """Write the judge's weights (safetensors, fp32) with its config and accuracies as metadata.

    >>> save_judge(JudgeNet(), "/tmp/judge.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    metadata = {"width": str(net.width), "accuracies": json.dumps(accuracies or {})}
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def load_judge(path: str | Path | None = None) -> JudgeNet:
    """Load the judge (the bundled one by default), in eval mode on the CPU.

    >>> net = load_judge()  # doctest: +SKIP
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path is None:
        from trainer.world import MODEL_DIR

        path = MODEL_DIR / JUDGE_FILE
    with safe_open(str(path), framework="pt") as handle:
        width = int(handle.metadata()["width"])
    net = JudgeNet(width)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


_CACHED: dict[str, JudgeNet] = {}


def _default_judge() -> JudgeNet:
    if "default" not in _CACHED:
        _CACHED["default"] = load_judge()
    return _CACHED["default"]


def images_to_tensor(images: object) -> torch.Tensor:
    """PIL images, uint8 arrays (N, 64, 64, 3) or a float tensor in [-1, 1] → (N, 3, 64, 64).

    >>> images_to_tensor(np.zeros((2, 64, 64, 3), np.uint8)).shape
    torch.Size([2, 3, 64, 64])
    """
    if isinstance(images, torch.Tensor):
        return images.float()
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(image.convert("RGB")) for image in images])
    if images.shape[1:3] != (64, 64):
        raise ValueError(f"the judge reads 64×64 images, got shape {images.shape}")
    array = images.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class Attributes:
    """What the judge sees in one image.

    ``objects`` maps each shape it finds present to (colour, texture);
    ``probabilities`` holds the softmax/sigmoid outputs for soft scores.
    """

    objects: dict[str, tuple[str, str]]
    background_colour: str
    background_pattern: str
    probabilities: dict[str, np.ndarray]


@torch.no_grad()
def _probabilities(images: object, net: JudgeNet | None) -> dict[str, np.ndarray]:
    net = net or _default_judge()
    batch = images_to_tensor(images)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in HEAD_NAMES}
    for start in range(0, len(batch), 256):
        probabilities = image_level(net(batch[start : start + 256]))
        for name in HEAD_NAMES:
            outputs[name].append(probabilities[name].numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def judge(images: object, net: JudgeNet | None = None) -> list[Attributes]:
    """Attributes of each image: shapes present with colour and texture, and the background.

    ``images``: PIL images, uint8 array (N, 64, 64, 3) or tensor in [-1, 1].

    >>> from trainer.world.scenes import render, sample_scene
    >>> judge(render(sample_scene(np.random.default_rng(0))))[0].background_colour  # doctest: +SKIP
    'green'
    """
    probabilities = _probabilities(images, net)
    results = []
    for i in range(len(probabilities["present"])):
        objects = {}
        for s, shape in enumerate(SHAPES):
            if probabilities["present"][i, s] > 0.5:
                objects[shape] = (
                    COLOUR_NAMES[int(probabilities["colour"][i, s].argmax())],
                    TEXTURES[int(probabilities["texture"][i, s].argmax())],
                )
        results.append(
            Attributes(
                objects=objects,
                background_colour=COLOUR_NAMES[int(probabilities["background_colour"][i].argmax())],
                background_pattern=BACKGROUND_PATTERNS[int(probabilities["background_pattern"][i].argmax())],
                probabilities={name: values[i] for name, values in probabilities.items()},
            )
        )
    return results


def subject_scores(images: object, subject: Subject | dict, net: JudgeNet | None = None) -> np.ndarray:
    """Per-image probability, in [0, 1], that the image shows the subject's identity.

    Object subject: P(shape present) × P(colour | shape) × P(texture | shape).
    Background subject: P(background colour) × P(background pattern).
    ``subject`` is a ``trainer.world.Subject`` or its ``identity`` dict.

    >>> identity = {"shape": "star", "colour": "orange", "texture": "dotted"}
    >>> subject_scores(images, identity)  # doctest: +SKIP
    array([0.97, 0.99])
    """
    identity = subject if isinstance(subject, dict) else subject.identity
    p = _probabilities(images, net)
    if "shape" in identity:
        s = SHAPES.index(identity["shape"])
        return (
            p["present"][:, s]
            * p["colour"][:, s, COLOUR_NAMES.index(identity["colour"])]
            * p["texture"][:, s, TEXTURES.index(identity["texture"])]
        )
    return (
        p["background_colour"][:, COLOUR_NAMES.index(identity["background_colour"])]
        * p["background_pattern"][:, BACKGROUND_PATTERNS.index(identity["background_pattern"])]
    )


def subject_score(images: object, subject: Subject | dict, net: JudgeNet | None = None) -> float:
    """Mean of ``subject_scores`` over the images: subject fidelity in [0, 1].

    >>> from trainer.world import subjects
    >>> star = subjects()[0]
    >>> round(subject_score(star.images(), star), 2)  # doctest: +SKIP
    0.99
    """
    return float(np.mean(subject_scores(images, subject, net)))


def labels_to_tensors(labels: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack ``scenes.scene_labels`` (or ``scene_cells``) outputs into a batch of tensors."""
    return {name: torch.from_numpy(np.stack([lab[name] for lab in labels])) for name in labels[0]}


def train_judge(
    images: np.ndarray,
    scene_list: list,
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> JudgeNet:
    """Train a judge on uint8 images (N, 64, 64, 3) of the given scenes (dense cell labels).

    Augmentation: light Gaussian noise and colour gain, so that the small
    colour shifts of model samples do not flip predictions.

    >>> net = train_judge(images, scene_list, steps=1500)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from trainer.world.scenes import scene_cells

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = JudgeNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1
    )
    cells = labels_to_tensors([scene_cells(scene) for scene in scene_list])
    bar = tqdm(range(steps), desc="judge", disable=not progress, mininterval=10)
    for _ in bar:
        index = torch.randint(len(images), (batch_size,), generator=generator)
        batch = images_to_tensor(images[index.numpy()])
        gain = 1 + 0.06 * torch.randn(batch_size, 3, 1, 1, generator=generator)
        batch = (batch + 1) * gain - 1 + 0.03 * torch.randn(batch.shape, generator=generator)
        loss = judge_loss(net(batch), {k: v[index] for k, v in cells.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return net.eval()


@torch.no_grad()
def evaluate_judge(net: JudgeNet, images: np.ndarray, scene_list: list) -> dict[str, float]:
    """Held-out image-level accuracy per head on uint8 images of the given scenes.

    >>> evaluate_judge(net, images, scene_list)["colour"]  # doctest: +SKIP
    0.99
    """
    from trainer.world.scenes import scene_labels

    probabilities = {name: torch.from_numpy(p) for name, p in _probabilities(images, net).items()}
    labels = labels_to_tensors([scene_labels(scene) for scene in scene_list])
    return head_accuracies(probabilities, labels)
