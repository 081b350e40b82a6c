"""Configurations of the small world's model components, in diffusers/transformers terms.

Sizes are set by the 2-core CPU budget (README.md, "Why these sizes"):

- VAE: 64×64×3 → 8×8×16 latents (×8, like Stable Diffusion's, with 16 channels
  as in SD3 so that an 8-pixel texture period still fits in a latent pixel).
  The UNet then runs at 8×8 and 4×4, which makes one forward+backward at
  batch 2 about 50 ms on 2 CPU threads, half the cost of 16×16×4 latents for
  twice the channels.
- UNet: ``UNet2DConditionModel`` with cross-attention at both resolutions and
  in the mid block (``attn2.to_k``/``attn2.to_v`` of 5 transformer blocks).
- Text encoder: a 3-layer ``CLIPTextModel``, hidden size 128, 24 positions.
- Scheduler: Stable Diffusion's training schedule (scaled-linear betas,
  1000 steps, epsilon prediction); sampling with DPM-Solver++ (paper, App. B).

>>> unet_config()["cross_attention_dim"] == text_encoder_config()["hidden_size"]
True
"""

from __future__ import annotations

from typing import Any

from trainer.world.vocabulary import MAX_LENGTH, vocabulary_size

LATENT_CHANNELS = 4
LATENT_SIZE = 16  # latent pixels per side for 64-pixel images
TEXT_HIDDEN = 128


def vae_config() -> dict[str, Any]:
    """``AutoencoderKL`` keyword arguments: 64 px RGB ↔ 8×8×16 latents.

    >>> vae_config()["latent_channels"]
    16
    """
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 16,
        "sample_size": 64,
        # No attention: the autoencoder stays fully convolutional, so it trains
        # on 32-pixel crops and runs on 64-pixel images alike.
        "mid_block_add_attention": False,
        # Set after training to 1 / std of the training latents (pretrain.py),
        # as Stable Diffusion's 0.18215 was.
        "scaling_factor": 1.0,
    }


def unet_config() -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments (8×8×16 latents, 128-d text).

    >>> unet_config()["down_block_types"]
    ('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D')
    """
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": (32, 64, 128),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN,
        # diffusers' historical name: this is the number of heads (as SD's 8).
        "attention_head_dim": 4,
        "norm_num_groups": 16,
    }


def text_encoder_config() -> dict[str, Any]:
    """``CLIPTextConfig`` keyword arguments for the word-level vocabulary.

    >>> text_encoder_config()["max_position_embeddings"]
    24
    """
    from trainer.world.vocabulary import BOS_TOKEN, EOS_TOKEN, _vocab_and_merges

    vocab = _vocab_and_merges()[0]
    return {
        "vocab_size": vocabulary_size(),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
        "projection_dim": TEXT_HIDDEN,
    }


def scheduler_config() -> dict[str, Any]:
    """Noise schedule shared by training (``DDPMScheduler``) and sampling (DPM-Solver++).

    >>> scheduler_config()["num_train_timesteps"]
    1000
    """
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
    }
