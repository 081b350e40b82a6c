"""Tiny, real diffusers models built offline from configs: the one fixture module of the tests.

Everything is seeded and small enough for a laptop CPU. The CLIP tokenizer is
written to disk (``vocab.json`` + ``merges.txt``) and loaded with
``from_pretrained``, as a real model folder would be; its vocabulary is
character-level, so any ASCII prompt tokenizes without merges.

>>> unet = tiny_unet(seed=0)
>>> pipe = tiny_pipeline(tmp_path)            # saved with save_pretrained, loaded back
>>> image = pipe("photo of a sks cat", num_inference_steps=2, output_type="np").images
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

CROSS_ATTENTION_DIM = 32


def unet_config() -> dict:
    """Two resolutions, cross-attention at both: 8 attn2 to_k/to_v weights in all."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_unet(seed: int = 0, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config()).to(dtype).eval()


def cross_attention_keys(unet: torch.nn.Module) -> list[str]:
    """The attn2 to_k / to_v weight keys: what the trainer searches by default."""
    return [k for k in unet.state_dict() if ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k]


def write_tokenizer(folder: Path) -> Path:
    """A character-level CLIP tokenizer: every printable ASCII character, alone or word-final."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    for char in string.ascii_lowercase + string.digits + ".,'-":
        tokens += [char, char + "</w>"]
    vocab = {token: number for number, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_tokenizer(folder), model_max_length=32)


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=32,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def tiny_pipeline(folder: Path, seed: int = 0) -> StableDiffusionPipeline:
    """Build a StableDiffusionPipeline, ``save_pretrained`` it to ``folder``, and load it back."""
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(seed),
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=tiny_tokenizer(folder / "_tokenizer"),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipeline")
    loaded = StableDiffusionPipeline.from_pretrained(folder / "pipeline", safety_checker=None)
    loaded.set_progress_bar_config(disable=True)
    return loaded
