"""A CLIP-style text encoder for the small world, pretrained contrastively and then frozen, as in SD.

Stable Diffusion reads the features of a text encoder trained on its own
(CLIP), frozen while the UNet learns to read them. The first world model
trained its 128-wide encoder jointly with the UNet, and its token features
collapsed to what that UNet needed: 16 components hold 99.3 % of the
energy, and a rare token's features are as ordinary as any word's
(docs/method-notes.md). Here the text encoder learns from captions and
images alone, with CLIP's symmetric InfoNCE loss between its pooled (EOS)
output and an image embedding of the scene's latents; the UNet is then
trained on its frozen features (``pretrain.py --stages clip,unet``).

Captions that are equal as text within a batch count as positives of each
other's images ("a photo of a star" fits every star), so the loss never
asks the encoder to tell identical captions apart.

>>> encoder = LatentImageEncoder(width=256)
>>> encoder(torch.zeros(2, 4, 16, 16)).shape
torch.Size([2, 256])
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class LatentImageEncoder(nn.Module):
    """The image tower: a small CNN over the VAE's 16×16×4 latents, to one ``width``-d embedding."""

    def __init__(self, width: int = 256, channels: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        a, b, c = channels
        self.net = nn.Sequential(
            nn.Conv2d(4, a, 3, padding=1),
            nn.GroupNorm(16, a),
            nn.SiLU(),
            nn.Conv2d(a, a, 3, padding=1),
            nn.GroupNorm(16, a),
            nn.SiLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1),  # 8x8
            nn.GroupNorm(16, b),
            nn.SiLU(),
            nn.Conv2d(b, b, 3, padding=1),
            nn.GroupNorm(16, b),
            nn.SiLU(),
            nn.Conv2d(b, c, 3, stride=2, padding=1),  # 4x4
            nn.GroupNorm(16, c),
            nn.SiLU(),
        )
        self.head = nn.Linear(c * 16, width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(latents).flatten(1))


def pooled(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The EOS token's final hidden state (CLIP's pooled output)."""
    return text_encoder(input_ids).pooler_output


def same_caption_targets(captions: list[str]) -> torch.Tensor:
    """(n, n) row-stochastic targets: image j is a positive of caption i when their captions are equal."""
    codes = {text: number for number, text in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([codes[text] for text in captions])
    equal = (ids[:, None] == ids[None, :]).float()
    return equal / equal.sum(1, keepdim=True)


def contrastive_loss(
    text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with soft targets (equal captions are positives of each other)."""
    text = F.normalize(text, dim=-1)
    image = F.normalize(image, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * text @ image.T
    loss_text = -(targets * logits.log_softmax(1)).sum(1).mean()
    loss_image = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (loss_text + loss_image) / 2


def retrieval_accuracy(text: torch.Tensor, image: torch.Tensor, captions: list[str]) -> float:
    """Share of captions whose best-matching image has an equal caption (top-1, held out)."""
    text = F.normalize(text, dim=-1)
    image = F.normalize(image, dim=-1)
    best = (text @ image.T).argmax(1)
    return float(np.mean([captions[int(j)] == captions[i] for i, j in enumerate(best)]))


def initial_logit_scale() -> torch.Tensor:
    return torch.tensor(math.log(1 / 0.07))
