"""Configurations of the small world's model components, in diffusers/transformers terms.

Sizes are set by the 2-core CPU budget (README.md, "Why these sizes"):

- VAE: 64×64×3 → 16×16×4 latents (×4; a ×8 VAE had learnt little more than
  mean colours after 300 steps, README.md).
- UNet: ``UNet2DConditionModel`` at 16×16, 8×8 and 4×4, with cross-attention
  at 16×16 and 8×8 and in the mid block (``attn2.to_k``/``attn2.to_v`` of 7
  transformer blocks).
- Text encoder: a 3-layer ``CLIPTextModel``, hidden size 128, 24 positions.
- Scheduler: Stable Diffusion's scaled-linear betas over 1000 steps,
  rescaled to zero terminal SNR, with v-prediction; sampling with
  DPM-Solver++ (paper, App. B) from the last step ("trailing").

>>> unet_config()["cross_attention_dim"] == text_encoder_config()["hidden_size"]
True
"""

from __future__ import annotations

from typing import Any

from trainer.world.vocabulary import MAX_LENGTH, vocabulary_size

LATENT_CHANNELS = 4
LATENT_SIZE = 16  # latent pixels per side for 64-pixel images
TEXT_HIDDEN = 128
#: The UNet's three block widths in the embedded world (pretrain.py --unet-channels widens them).
UNET_CHANNELS = (32, 64, 128)
CLIP_TEXT_HIDDEN = 256  # the frozen contrastive text encoder (clip_text_config)


def vae_config() -> dict[str, Any]:
    """``AutoencoderKL`` keyword arguments: 64 px RGB ↔ 16×16×4 latents.

    >>> vae_config()["latent_channels"]
    4
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


def unet_config(text_width: int = TEXT_HIDDEN, channels: tuple[int, ...] = UNET_CHANNELS) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments (16×16×4 latents, 128-d text, or ``text_width``).

    ``channels`` are the three blocks' widths (the embedded world's: ``UNET_CHANNELS``).

    >>> unet_config()["down_block_types"]
    ('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D')
    >>> unet_config(256, channels=(64, 128, 256))["block_out_channels"]
    (64, 128, 256)
    """
    return {
        "sample_size": LATENT_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "block_out_channels": tuple(channels),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": text_width,
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


def clip_text_config() -> dict[str, Any]:
    """``CLIPTextConfig`` of the contrastively pretrained, frozen text encoder (contrastive.py).

    Twice as wide as the jointly trained one and one layer deeper, with 8
    heads, as a small CLIP text tower: its features are trained to tell
    captions apart, not only to serve one UNet.

    >>> clip_text_config()["hidden_size"], clip_text_config()["num_hidden_layers"]
    (256, 4)
    """
    return text_encoder_config() | {
        "hidden_size": CLIP_TEXT_HIDDEN,
        "intermediate_size": 4 * CLIP_TEXT_HIDDEN,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "projection_dim": CLIP_TEXT_HIDDEN,
    }


def scheduler_config(zero_snr: bool = True) -> dict[str, Any]:
    """Noise schedule shared by training (``DDPMScheduler``) and sampling (DPM-Solver++).

    ``zero_snr=False`` gives Stable Diffusion 1.x's schedule (epsilon
    prediction), which the first 3,000 steps of the bundled model used.

    >>> scheduler_config()["prediction_type"], scheduler_config(zero_snr=False)["prediction_type"]
    ('v_prediction', 'epsilon')
    """
    sd = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
    }
    if not zero_snr:
        return sd | {"prediction_type": "epsilon", "steps_offset": 1}
    return sd | {
        # SD's betas leave sqrt(alpha_bar_T) = 0.068 of the signal at the last
        # step. On 16x16 latents the starting noise's mean over an object or
        # the background is then as informative as the signal's, so an
        # epsilon model learns to take colours from the noise instead of the
        # prompt (background colour judged at chance: 0.19 against 0.17).
        # Zero terminal SNR needs v-prediction and sampling that starts at the
        # last step (Lin et al., 2024, "Common Diffusion Noise Schedules and
        # Sample Steps are Flawed"); diffusers implements all three.
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
        "timestep_spacing": "trailing",
    }
