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


# --------------------------------------------------------------------------- other families (issue 14)
#
# One function per family builds the real diffusers pipeline from configs
# (seeded), saves it with ``save_pretrained`` and loads it back, as
# ``tiny_pipeline`` does. Shapes follow the real models where it matters
# (which encoders, what is concatenated, what is pooled), at toy widths;
# each builds, saves and loads in under a second on one core, and draws a 32 x 32
# image in 2 steps in about 0.1 s.
#
# | function               | denoiser               | text encoders                      | searched K/V    |
# |------------------------|------------------------|------------------------------------|-----------------|
# | tiny_sd2_pipeline      | UNet, v-prediction     | CLIP (64 wide: 2 x SD 1.x's tiny)  | 14 attn2 to_k/v |
# | tiny_sdxl_pipeline     | UNet, text_time embeds | CLIP 16 + CLIP-with-projection 32  | 16 attn2 to_k/v |
# | tiny_sd3_pipeline      | SD3Transformer2DModel  | CLIP-proj 16 + CLIP-proj 16 + T5   | 4 add_k/v_proj  |
# | tiny_flux_pipeline     | FluxTransformer2DModel | CLIP 16 (pooled) + T5              | 4 add_k/v_proj  |
#
# (Flux also has 2 single-stream to_k/to_v, searched only on request: conesrt.searched_layers.)

T5_WIDTH = 32


def tiny_clip(seed: int, hidden_size: int, projection_dim: int | None = None) -> CLIPTextModel:
    """A 2-layer CLIP text encoder over the character tokenizer; with a projection
    (``CLIPTextModelWithProjection``, whose ``text_embeds`` SDXL and SD3 pool) when
    ``projection_dim`` is given."""
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=32,
        hidden_act="gelu",
        projection_dim=projection_dim or hidden_size,
    )
    model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return model.eval()


def write_t5_tokenizer(folder: Path) -> Path:
    """A character-level T5 (Unigram) tokenizer: ``▁`` + letter starts a word, any other character follows;
    32 tokens at most, as the tiny CLIPs (the trainer pads T5 prompts to that length)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(char, -2.0) for char in string.ascii_lowercase + string.digits + ".,'-"]
    pieces += [("\u2581" + char, -1.5) for char in string.ascii_lowercase + string.digits]
    T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=32).save_pretrained(folder)
    return folder


def tiny_t5(seed: int = 0):
    """A 2-layer T5 encoder, ``T5_WIDTH`` wide, over the character T5 tokenizer's 83 pieces."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=96,
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def tiny_flow_vae(seed: int = 0) -> AutoencoderKL:
    """The VAE of SD3 and Flux pipelines: no quant convs, a shift factor; 4 latent channels, stride 2."""
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
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def _save_and_load(pipe, folder: Path, **load_kwargs):
    """``save_pretrained`` to ``folder / "pipeline"`` and load it back with the pipeline's own class."""
    pipe.save_pretrained(folder / "pipeline")
    loaded = type(pipe).from_pretrained(folder / "pipeline", **load_kwargs)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def sd2_unet_config() -> dict:
    """SD 2.x's UNet in miniature: linear projections, per-level head sizes, 64-wide text features."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=2 * CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=16,
    )


def tiny_sd2_pipeline(folder: Path, seed: int = 0) -> StableDiffusionPipeline:
    """An SD 2.x-shaped StableDiffusionPipeline (v-prediction, text features twice as wide as SD 1.x's
    tiny ones), saved with ``save_pretrained`` to ``folder`` and loaded back."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd2_unet_config()).eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=tiny_vae(seed),
        text_encoder=tiny_clip(seed, 2 * CROSS_ATTENTION_DIM),
        tokenizer=tiny_tokenizer(folder / "_tokenizer"),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save_and_load(pipe, folder, safety_checker=None)


#: SDXL's text encoders in miniature: the first gives hidden states only, the second also
#: the projected pooled output; the UNet attends to both hidden states, concatenated.
SDXL_TEXT_WIDTHS = (16, 32)
SDXL_POOLED = 16
SDXL_TIME_EMBED = 8


def sdxl_unet_config() -> dict:
    """SDXL's UNet in miniature: no attention at the top level, 1 then 2 transformer layers, text_time
    embeddings of 6 size/crop ids plus the pooled text (``projection_class_embeddings_input_dim``)."""
    return dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=sum(SDXL_TEXT_WIDTHS),
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED + SDXL_POOLED,
        norm_num_groups=16,
    )


def tiny_sdxl_pipeline(folder: Path, seed: int = 0):
    """A StableDiffusionXLPipeline (two text encoders, pooled output, size and crop time ids, Euler,
    epsilon), saved with ``save_pretrained`` to ``folder`` and loaded back."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sdxl_unet_config()).eval()
    tokenizer_folder = write_tokenizer(folder / "_tokenizer")
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=tiny_vae(seed),
        text_encoder=tiny_clip(seed, SDXL_TEXT_WIDTHS[0]),
        text_encoder_2=tiny_clip(seed + 1, SDXL_TEXT_WIDTHS[1], projection_dim=SDXL_POOLED),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=32),
        # SDXL's second tokenizer pads with "!" rather than the end token.
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=32, pad_token="!"),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,
    )
    return _save_and_load(pipe, folder)


#: SD3's two CLIP encoders (projected; their hidden states are concatenated and padded to T5's width).
SD3_CLIP_WIDTH = 16


def sd3_transformer_config() -> dict:
    """SD3's MMDiT in miniature: 2 joint blocks (the last one context-pre-only), 4 heads of 8."""
    return dict(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * SD3_CLIP_WIDTH,
        pos_embed_max_size=16,
    )


def tiny_sd3_pipeline(folder: Path, seed: int = 0):
    """A StableDiffusion3Pipeline (CLIP-with-projection x 2 + T5, flow matching), saved with
    ``save_pretrained`` to ``folder`` and loaded back. Call it with ``max_sequence_length`` <= 32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**sd3_transformer_config()).eval()
    tokenizer_folder = write_tokenizer(folder / "_tokenizer")
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae(seed),
        text_encoder=tiny_clip(seed, SD3_CLIP_WIDTH, projection_dim=SD3_CLIP_WIDTH),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=32),
        text_encoder_2=tiny_clip(seed + 1, SD3_CLIP_WIDTH, projection_dim=SD3_CLIP_WIDTH),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=32),
        text_encoder_3=tiny_t5(seed + 2),
        tokenizer_3=T5Tokenizer.from_pretrained(write_t5_tokenizer(folder / "_t5_tokenizer")),
    )
    return _save_and_load(pipe, folder)


#: Flux's CLIP (its pooled output conditions the transformer).
FLUX_CLIP_WIDTH = 16


def flux_transformer_config(guidance_embeds: bool = False) -> dict:
    """Flux's transformer in miniature: 2 double-stream blocks, 1 single-stream block, 2 heads of 16
    (rotary axes 4 + 4 + 8), over 2x2-packed latents of 4 channels."""
    return dict(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=FLUX_CLIP_WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_flux_pipeline(folder: Path, seed: int = 0, guidance_embeds: bool = False):
    """A FluxPipeline (CLIP pooled + T5, flow matching; ``guidance_embeds=True`` is FLUX.1-dev's
    distilled guidance), saved with ``save_pretrained`` to ``folder`` and loaded back. Call it with
    ``max_sequence_length`` <= 32 and a height and width divisible by 4."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Tokenizer

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**flux_transformer_config(guidance_embeds)).eval()
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_flow_vae(seed),
        text_encoder=tiny_clip(seed, FLUX_CLIP_WIDTH),
        tokenizer=tiny_tokenizer(folder / "_tokenizer"),
        text_encoder_2=tiny_t5(seed + 2),
        tokenizer_2=T5Tokenizer.from_pretrained(write_t5_tokenizer(folder / "_t5_tokenizer")),
    )
    return _save_and_load(pipe, folder)
