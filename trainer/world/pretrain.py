"""Pretrain the small world's text-to-image model and write it as a diffusers folder.

    python -m trainer.world.pretrain --out trainer/world/model --seed 0

Stages (``--stages``, default all three, each logging JSON lines to
``<out>/pretrain_log.<stages>.jsonl``):

- vae: ``--images`` procedural scenes (scenes.py, fixed by the seed), an
  ``AutoencoderKL`` trained on 32-pixel crops of them (MSE + ½ L1 + a small KL
  term), then ``scaling_factor`` = 1 / std of the latents, as Stable
  Diffusion's 0.18215. Written to ``<out>/vae``.
- unet: every image encoded once (posterior mean and std, so the encoder never
  runs again), then ``UNet2DConditionModel`` and ``CLIPTextModel`` trained
  jointly on noise prediction with random captions, 10 % empty (for
  classifier-free guidance), min-SNR weighting (γ = 5) and an EMA of both
  (decay 0.999). Written with ``StableDiffusionPipeline.save_pretrained``
  (fp16 storage for the diffusers components, fp32 text encoder).
- judge: the attribute classifier (judge.py) on clean images and VAE
  reconstructions; held-out accuracy per head goes to the log and to the
  metadata of ``<out>/judge.safetensors``.

Each stage seeds itself from ``--seed``, so running stages as separate
processes (unet and judge in parallel, say) gives what one run gives.
Deterministic for a seed and a thread count (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from trainer.world import components, judge, scenes, vocabulary

P_EMPTY_CAPTION = 0.1  # classifier-free guidance needs unconditional training
SNR_GAMMA = 5.0  # min-SNR weighting (Hang et al., 2023) speeds up small-budget training
VAE_CROP = 32  # pixels
STAGES = ("vae", "clip", "unet", "judge")


class Log:
    """Appends JSON lines to a file and keeps the wall clock of the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # appended to: a resumed run continues its log (each run starts with "start")

    def __call__(self, **record: object) -> None:
        record = {"elapsed_s": round(time.time() - self.start, 1), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 64, 64, 3) → float (N, 3, 64, 64) in [-1, 1].

    >>> to_model_range(np.zeros((1, 64, 64, 3), np.uint8)).min().item()
    -1.0
    """
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, 64, 64) in [-1, 1] → uint8 (N, 64, 64, 3).

    >>> to_uint8(torch.ones(1, 3, 64, 64)).max()
    np.uint8(255)
    """
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).numpy()


def cosine_with_warmup(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup over ``warmup`` steps, then cosine to ``floor``.

    >>> cosine_with_warmup(0, 100, 10)
    0.1
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(images: np.ndarray, *, steps: int, batch_size: int, lr: float, seed: int, log: Log):
    """Train the ``AutoencoderKL`` on uint8 images; returns it with ``scaling_factor`` unset.

    >>> vae = train_vae(images, steps=1500, batch_size=16, lr=1e-3, seed=1, log=log)  # doctest: +SKIP
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(**components.vae_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    bar = tqdm(range(steps), desc="vae", mininterval=10)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_with_warmup(step, steps, warmup=100, floor=0.05)
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x = to_model_range(images[index.numpy()])
        # 32-pixel crops cost a quarter of full images; offsets on the 8-pixel
        # texture grid keep textures in phase with the latent grid.
        offset_x, offset_y = (torch.randint(0, 5, (2,), generator=generator) * 8).tolist()
        x = x[:, :, offset_y : offset_y + VAE_CROP, offset_x : offset_x + VAE_CROP]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        # L1 keeps edges and 4-pixel textures sharper than MSE alone would.
        reconstruction_loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent entry
        loss = reconstruction_loss + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(rec=f"{reconstruction_loss.item():.4f}", kl=f"{kl.item():.2f}", refresh=False)
        if step % 50 == 0 or step == steps - 1:
            log(stage="vae", step=step, reconstruction=reconstruction_loss.item(), kl=kl.item())
    return vae.eval()


@torch.no_grad()
def encode(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, (N, 4, 16, 16) each, unscaled."""
    means, stds = [], []
    for start in tqdm(range(0, len(images), 256), desc="encode", mininterval=10):
        posterior = vae.encode(to_model_range(images[start : start + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def encoded(vae, images: np.ndarray, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode``, cached in ``cache`` (encoding 100k images costs about 10 min on one thread)."""
    if cache.exists():
        mean, std = torch.load(cache)
        if len(mean) == len(images):
            return mean, std
    mean, std = encode(vae, images)
    temporary = cache.with_suffix(".tmp")
    torch.save((mean, std), temporary)
    temporary.replace(cache)
    return mean, std


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> np.ndarray:
    """Unscaled latents → uint8 images."""
    images = []
    for start in range(0, len(latents), 128):
        images.append(to_uint8(vae.decode(latents[start : start + 128]).sample))
    return np.concatenate(images)


def train_clip(
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scene_list: list[scenes.Scene],
    *,
    scaling_factor: float,
    tokenizer,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Log,
):
    """The contrastive text encoder (contrastive.py): InfoNCE between captions and scene latents.

    Returns the ``CLIPTextModel`` (its projection head and the image tower are
    only needed for training). Every 500 steps the log gets the held-out
    retrieval accuracy: for 256 scenes never trained on, how often a scene's
    full caption picks its own scene's latents among the 256.

    >>> text_encoder = train_clip(mean, std, scenes, ...)  # doctest: +SKIP
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainer.world import contrastive

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    caption_rng = np.random.default_rng(seed)
    config = components.clip_text_config()
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    projection = torch.nn.Linear(config["hidden_size"], config["projection_dim"], bias=False)
    image_encoder = contrastive.LatentImageEncoder(config["projection_dim"])
    logit_scale = torch.nn.Parameter(contrastive.initial_logit_scale())
    # As in train_unet: rare tokens never occur, and no weight decay keeps their random embeddings.
    embedding_params = list(text_encoder.get_input_embeddings().parameters())
    embedding_ids = {id(p) for p in embedding_params}
    decayed = [p for p in text_encoder.parameters() if id(p) not in embedding_ids]
    decayed += list(projection.parameters()) + list(image_encoder.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": 1e-2},
            {"params": embedding_params + [logit_scale], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    held_out_latents, held_out_scenes = latent_mean[-256:] * scaling_factor, scene_list[-256:]
    held_out_captions = [scenes.full_caption(scene) for scene in held_out_scenes]
    train_count = len(scene_list) - 256

    def ids(captions: list[str]) -> torch.Tensor:
        # Padded to the batch's longest caption (half the cost of 24 tokens): the loss reads the
        # EOS token, which never sees what follows it (causal attention), as in CLIP.
        return tokenizer(captions, padding="longest", return_tensors="pt").input_ids

    bar = tqdm(range(steps), desc="clip", mininterval=10)
    running = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_with_warmup(step, steps, warmup=200, floor=0.05)
        index = torch.randint(train_count, (batch_size,), generator=generator)
        latents = latent_mean[index] + latent_std[index] * torch.randn(
            latent_mean[index].shape, generator=generator
        )
        captions = [scenes.caption(scene_list[i], caption_rng) for i in index.tolist()]
        text = projection(contrastive.pooled(text_encoder, ids(captions)))
        image = image_encoder(latents * scaling_factor)
        loss = contrastive.contrastive_loss(
            text, image, logit_scale, contrastive.same_caption_targets(captions)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if step % 50 == 0 or step == steps - 1:
            record = {"loss": loss.item(), "smoothed_loss": running, "logit_scale": logit_scale.exp().item()}
            if step % 500 == 0 or step == steps - 1:
                with torch.no_grad():
                    text_out = projection(contrastive.pooled(text_encoder, ids(held_out_captions)))
                    image_out = image_encoder(held_out_latents)
                record["held_out_retrieval"] = contrastive.retrieval_accuracy(
                    text_out, image_out, held_out_captions
                )
            log(stage="clip", step=step, **record)
    return text_encoder.eval()


def matching_weights(model: torch.nn.Module, folder: Path) -> list[str]:
    """Load into ``model`` every weight of the saved model in ``folder`` whose name and shape match.

    Returns the names left at their initialisation (a frozen text encoder of
    another width changes the cross-attention ``to_k``/``to_v`` shapes, say).
    """
    from safetensors.torch import load_file

    saved = {}
    for path in sorted(folder.glob("*.safetensors")):
        saved |= load_file(path)
    own = model.state_dict()
    fitting = {k: v.float() for k, v in saved.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(set(own) - set(fitting))


def train_unet(
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scene_list: list[scenes.Scene],
    *,
    scaling_factor: float,
    tokenizer,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Log,
    checkpoint=None,
    checkpoint_every: int = 0,
    init_from: Path | None = None,
    zero_snr: bool = True,
    text_encoder=None,
    state_path: Path | None = None,
    channels: tuple[int, ...] = components.UNET_CHANNELS,
):
    """Noise-prediction training of the UNet (and, jointly, a text encoder); returns both (EMA weights).

    With ``text_encoder`` given (the contrastive stage's), it stays frozen, as
    SD's CLIP: only the UNet learns, to read its features. Without, a new
    ``CLIPTextModel`` is trained jointly with the UNet (the first world model).

    ``checkpoint(unet, text_encoder)`` is called with the EMA weights every
    ``checkpoint_every`` steps (0: never), so a stopped run still leaves a
    model; with ``state_path`` the whole training state (weights, EMA,
    optimizer, step, random generators) is written there too, atomically,
    and a run that finds it continues from it: the same steps, the same
    result, as an uninterrupted run for the same ``--threads``.

    >>> unet, text_encoder = train_unet(mean, std, scenes, ...)  # doctest: +SKIP
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    caption_rng = np.random.default_rng(seed)
    frozen_text = text_encoder is not None
    text_width = text_encoder.config.hidden_size if frozen_text else components.TEXT_HIDDEN
    unet = UNet2DConditionModel(**components.unet_config(text_width, channels))
    if not frozen_text:
        text_encoder = CLIPTextModel(CLIPTextConfig(**components.text_encoder_config()))
    if init_from is not None:  # continue from a saved model (its EMA weights), fresh optimizer and schedule
        fresh = matching_weights(unet, init_from / "unet")
        log(stage="unet_init", init_from=str(init_from), fresh_weights=len(fresh))
        if not frozen_text:
            text_encoder = CLIPTextModel.from_pretrained(init_from / "text_encoder", dtype=torch.float32)
    text_encoder.requires_grad_(not frozen_text)
    scheduler = DDPMScheduler(**components.scheduler_config(zero_snr))
    alphas_cumprod = scheduler.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    groups = [{"params": list(unet.parameters()), "weight_decay": 1e-2}]
    trained = list(unet.parameters())
    if not frozen_text:
        # Rare tokens never occur, so their embeddings get no gradient; no weight
        # decay on the token embeddings keeps them at their random initialisation,
        # the state "sks" is in for a concept-neuron search.
        embedding_params = list(text_encoder.get_input_embeddings().parameters())
        embedding_ids = {id(p) for p in embedding_params}
        decayed = [p for p in text_encoder.parameters() if id(p) not in embedding_ids]
        groups = [
            {"params": list(unet.parameters()) + decayed, "weight_decay": 1e-2},
            {"params": embedding_params, "weight_decay": 0.0},
        ]
        trained += list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    ema = EMAModel(trained, decay=0.999)
    first_step = 0
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        unet.load_state_dict(state["unet"])
        if not frozen_text:
            text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        caption_rng.bit_generator.state = state["caption_rng"]
        first_step = state["step"]
        log(stage="unet_resumed", step=first_step)

    def save_state(step: int) -> None:
        state = {
            "unet": unet.state_dict(),
            "text_encoder": None if frozen_text else text_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "generator": generator.get_state(),
            "caption_rng": caption_rng.bit_generator.state,
            "step": step,
        }
        temporary = state_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(state_path)

    unet.train()
    text_encoder.train(not frozen_text)
    bar = tqdm(range(first_step, steps), desc="unet", mininterval=10, initial=first_step, total=steps)
    running = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_with_warmup(step, steps, warmup=200)
        index = torch.randint(len(latent_mean), (batch_size,), generator=generator)
        latents = latent_mean[index] + latent_std[index] * torch.randn(
            latent_mean[index].shape, generator=generator
        )
        latents = latents * scaling_factor
        captions = [
            "" if caption_rng.random() < P_EMPTY_CAPTION else scenes.caption(scene_list[i], caption_rng)
            for i in index.tolist()
        ]
        input_ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        # Same call as StableDiffusionPipeline.encode_prompt: no attention mask.
        with torch.set_grad_enabled(not frozen_text):
            encoder_hidden_states = text_encoder(input_ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states).sample
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        # min-SNR's clip of the low-noise steps, γ / SNR above γ. The
        # high-noise steps keep weight 1: at zero terminal SNR they are where
        # the prompt alone sets the colours and the layout.
        weights = torch.clamp(SNR_GAMMA / snr[timesteps], max=1.0)
        loss = (F.mse_loss(prediction, target, reduction="none").mean((1, 2, 3)) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        ema.step(trained)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if step % 50 == 0 or step == steps - 1:
            log(stage="unet", step=step, loss=loss.item(), smoothed_loss=running)
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            if state_path is not None:
                save_state(step + 1)
            if checkpoint is not None:
                ema.store(trained)
                ema.copy_to(trained)
                checkpoint(unet, text_encoder)
                ema.restore(trained)
            log(stage="unet_checkpoint", step=step + 1)
    ema.copy_to(trained)
    return unet.eval(), text_encoder.eval()


def save_model(out: Path, vae, unet, text_encoder, tokenizer, zero_snr: bool = True) -> None:
    """Write the Stable Diffusion folder: fp16 diffusers weights, fp32 text encoder.

    >>> save_model(Path("model"), vae, unet, text_encoder, tokenizer)  # doctest: +SKIP
    """
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**components.scheduler_config(zero_snr))
    # fp16 storage keeps the folder small; from_pretrained loads it back as fp32.
    # (transformers would load an fp16 text encoder as fp16, so it stays fp32.)
    pipeline = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.half(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out, safe_serialization=True)
    vae.float()
    unet.float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="comma-separated subset of vae,unet,judge; unet and judge read <out>/vae "
        "when vae is not among them",
    )
    parser.add_argument("--images", type=int, default=40_000, help="procedural training scenes")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--judge-steps", type=int, default=3000)
    parser.add_argument("--judge-batch", type=int, default=32)
    parser.add_argument(
        "--judge-reconstructions",
        type=int,
        default=8000,
        help="training images also shown to the judge through the VAE",
    )
    parser.add_argument("--clip-steps", type=int, default=3000)
    parser.add_argument("--clip-batch", type=int, default=128)
    parser.add_argument("--clip-lr", type=float, default=5e-4)
    parser.add_argument(
        "--text-encoder",
        choices=("joint", "clip"),
        default="joint",
        help="unet stage: train a text encoder jointly (the first world model), or read the frozen "
        "contrastive one the clip stage wrote to <out>/text_encoder",
    )
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=8e-4)
    parser.add_argument(
        "--unet-channels",
        default=",".join(map(str, components.UNET_CHANNELS)),
        help="the UNet's three block widths (a wider world: 64,128,256)",
    )
    parser.add_argument(
        "--init-from", type=Path, help="continue the unet stage from this folder's unet and text encoder"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=500, help="write the model every N unet steps"
    )
    parser.add_argument(
        "--schedule",
        choices=("zero-snr", "sd"),
        default="zero-snr",
        help="noise schedule: zero terminal SNR with v-prediction, or SD 1.x's (epsilon)",
    )
    args = parser.parse_args(argv)
    stages = [stage for stage in args.stages.split(",") if stage]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")

    try:
        channels = tuple(int(c) for c in args.unet_channels.split(","))
    except ValueError:
        channels = ()
    if len(channels) != 3 or min(channels) < 16 or any(c % 16 for c in channels):
        parser.error(f"--unet-channels wants three multiples of 16, got {args.unet_channels!r}")
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / f"pretrain_log.{'+'.join(stages)}.jsonl")
    log(stage="start", args={k: str(v) for k, v in vars(args).items()}, torch=torch.__version__)

    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(vocabulary.write_tokenizer(out / "tokenizer"))
    images, scene_list = scenes.make_dataset(args.images, seed=args.seed)
    log(stage="scenes", count=len(scene_list))

    if "vae" in stages:
        vae = train_vae(
            images,
            steps=args.vae_steps,
            batch_size=args.vae_batch,
            lr=1e-3,
            seed=args.seed + 1,
            log=log,
        )
        latents = encode(vae, images)  # reused by the unet stage below
        # As Stable Diffusion's 0.18215: unit-variance latents for the UNet.
        vae.register_to_config(scaling_factor=float(1.0 / latents[0].std()))
        vae.save_pretrained(out / "vae")
        log(stage="vae_saved", scaling_factor=vae.config.scaling_factor)
    else:
        vae = AutoencoderKL.from_pretrained(out / "vae", dtype=torch.float32).eval()
        latents = None

    zero_snr = args.schedule == "zero-snr"
    if latents is None and ({"clip", "unet"} & set(stages)):
        latents = encoded(vae, images, out / f"latents-{args.images}-{args.seed}.pt")
    if "clip" in stages:
        clip_text = train_clip(
            *latents,
            scene_list,
            scaling_factor=vae.config.scaling_factor,
            tokenizer=tokenizer,
            steps=args.clip_steps,
            batch_size=args.clip_batch,
            lr=args.clip_lr,
            seed=args.seed + 4,
            log=log,
        )
        clip_text.save_pretrained(out / "text_encoder")
        log(stage="clip_saved")
    if "unet" in stages:
        from transformers import CLIPTextModel

        frozen = None
        if args.text_encoder == "clip":
            frozen = CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32).eval()
        latent_mean, latent_std = latents
        unet, text_encoder = train_unet(
            latent_mean,
            latent_std,
            scene_list,
            scaling_factor=vae.config.scaling_factor,
            tokenizer=tokenizer,
            steps=args.unet_steps,
            batch_size=args.unet_batch,
            lr=args.unet_lr,
            seed=args.seed + 3,
            log=log,
            checkpoint=lambda unet, text_encoder: save_model(
                out, vae, unet, text_encoder, tokenizer, zero_snr
            ),
            checkpoint_every=args.checkpoint_every,
            init_from=args.init_from,
            zero_snr=zero_snr,
            text_encoder=frozen,
            state_path=out / "unet_state.pt",
            channels=channels,
        )
        save_model(out, vae, unet, text_encoder, tokenizer, zero_snr)
        log(stage="saved")

    if "judge" in stages:
        # The judge sees clean images and VAE reconstructions (what model samples look like).
        count = min(args.judge_reconstructions, len(images))
        reconstructions = decode(vae, encode(vae, images[:count])[0])
        judge_images = np.concatenate([images, reconstructions])
        net = judge.train_judge(
            judge_images,
            scene_list + scene_list[:count],
            steps=args.judge_steps,
            batch_size=args.judge_batch,
            seed=args.seed + 2,
        )
        held_out_images, held_out_scenes = scenes.make_dataset(2000, seed=args.seed + 1000)
        held_out_reconstructions = decode(vae, encode(vae, held_out_images)[0])
        accuracies = {
            "clean": judge.evaluate_judge(net, held_out_images, held_out_scenes),
            "vae_reconstructions": judge.evaluate_judge(net, held_out_reconstructions, held_out_scenes),
        }
        error = held_out_reconstructions.astype(np.float32) - held_out_images
        log(
            stage="judge",
            held_out_accuracy=accuracies,
            vae_held_out_rmse_uint8=float(np.sqrt(np.mean(error**2))),
        )
        judge.save_judge(net, out / judge.JUDGE_FILE, accuracies)
        print(json.dumps({"judge_held_out_accuracy": accuracies}, indent=1))
    log(stage="done")


if __name__ == "__main__":
    main()
