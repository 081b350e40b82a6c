"""Settings of a concept-neuron search, as plain values, and their cheap checks.

Everything a run needs is here; :func:`TrainConfig.validate` checks what can be
checked without loading a model (files, folders, option combinations), so bad
input fails in a second with one clear line.

>>> config = TrainConfig(model="sd15", images="cat/", token="sks", class_word="cat",
...                      sparsity=0.01, out="cat.cones")
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conesrt.families import searched_keys

from .errors import UsageError
from .families import family_of

#: Layer sets by name; anything else given to --layers is a comma-separated list of globs.
LAYER_PRESETS = {
    "cross": ("*attn2.to_k.weight", "*attn2.to_v.weight"),  # the paper's default (sec. 3.1)
    "self": ("*attn1.to_k.weight", "*attn1.to_v.weight"),
    "cross+self": ("*attn2.to_k.weight", "*attn2.to_v.weight", "*attn1.to_k.weight", "*attn1.to_v.weight"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(kw_only=True)
class SearchConfig:
    """What every concept-neuron search shares: the model, the descent, the hardware, the output.

    These are the defaults of ``cones train`` and ``cones refine`` too (the
    command line reads them from here). Units: ``steps`` are gradient steps
    K; ``lr`` is rho, the plain gradient-descent step on xi (None: calibrated
    on the first batches so that the entries with the largest gradients travel
    ``travel`` in K steps, trainer.search); ``tau`` is in units of the
    accumulated ``theta * dL/dtheta`` (eq. A19-A20); ``sparsity`` is a
    fraction of the searched entries (with neither, the count with the lowest
    held-out loss is kept); ``prior_weight`` is lambda (eq. 4);
    ``preserve_weight`` is mu, the weight of keeping the base model's
    predictions for the class and the empty prompt (trainer.objective);
    ``resolution`` in pixels (None: the model's own); ``batch_size`` subject
    images per step (and as many prior images) per subject. ``values`` is
    what the container stores on the neurons (trainer.values): ``binary``
    shuts them; ``q4``, ``fp16`` and ``fp32`` also train ξ on them for
    ``value_steps`` steps (None: a third of ``steps``) of Adam with step
    ``value_lr`` in ξ (None: 2 / value_steps).
    """

    model: str | Path
    out: str | Path = ""
    num_class_images: int = 100
    class_image_steps: int = 25
    prior_weight: float = 0.3  # DreamBooth uses 1; measured on the dev split (docs/method-notes.md)
    preserve_weight: float = 0.0
    steps: int = 300
    lr: float | None = None
    travel: float = 0.01  # xi stays near 1: gradients at the base model (docs/method-notes.md)
    tau: float | None = None
    sparsity: float | None = None
    values: str | None = "binary"  # binary | q4 | fp16 | fp32 (trainer.values)
    value_steps: int | None = None  # None: steps // 3
    value_lr: float | None = None  # None: 2 / value_steps
    batch_size: int = 2
    resolution: int | None = None  # pixels; None: the model's own (UNet sample size x VAE stride)
    flip: bool = True
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    overwrite: bool = False
    progress: bool = True

    #: Fields that say where things are rather than how the concept was made.
    _LOCAL = (
        "model",
        "images",
        "out",
        "class_images",
        "overwrite",
        "progress",
        "device",
        "name",
        "containers",
        "data",
    )

    #: Fields only a valued run records: a binary container is byte for byte what it was before values.
    _VALUED = ("values", "value_steps", "value_lr")

    @property
    def resolved_value_steps(self) -> int:
        """V: ``value_steps``, or a third of ``steps`` (at least 1)."""
        return self.value_steps if self.value_steps is not None else max(1, self.steps // 3)

    def settings(self) -> dict:
        """What the container records about how the concept was made (no local paths)."""
        recorded = {key: value for key, value in asdict(self).items() if key not in self._LOCAL}
        if self.values in (None, "binary"):
            for key in self._VALUED:
                recorded.pop(key)
        else:
            recorded["value_steps"] = self.resolved_value_steps
        return recorded

    def validate(self) -> None:
        """Raise :class:`UsageError` on anything wrong that needs no model to see."""
        check_model_folder(self.model)
        check_selection(self.tau, self.sparsity)
        check_out(self.out, self.overwrite)
        positive = {"steps": self.steps, "batch_size": self.batch_size, "resolution": self.resolution}
        for option, value in positive.items():
            if value is not None and value < 1:
                raise UsageError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
        if self.resolution is not None and self.resolution % 8:
            raise UsageError(
                f"--resolution must be a multiple of 8 (the VAE's stride), got {self.resolution}"
            )
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.travel <= 0:
            raise UsageError(f"--travel must be positive, got {self.travel}")
        if self.preserve_weight < 0:
            raise UsageError(f"--preserve-weight must be >= 0, got {self.preserve_weight}")
        if self.prior_weight < 0:
            raise UsageError(f"--prior-weight must be >= 0, got {self.prior_weight}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        check_values(self.values, self.value_steps, self.value_lr)


@dataclass(kw_only=True)
class TrainConfig(SearchConfig):
    """One search for the concept neurons of a subject (Algorithm A2).

    >>> TrainConfig(model="sd15", images="cat/", token="sks", class_word="cat",
    ...             sparsity=0.01, out="cat.cones")
    """

    images: str | Path
    token: str = "sks"
    class_word: str = ""
    prompt: str | None = None  # default: "photo of a {token} {class_word}"
    class_prompt: str | None = None  # default: "photo of a {class_word}"
    class_images: str | Path | None = None
    layers: str = "cross"
    keep_shut: list[str | Path] = field(default_factory=list)

    @property
    def instance_prompt(self) -> str:
        return self.prompt or f"photo of a {self.token} {self.class_word}".strip()

    @property
    def prior_prompt(self) -> str:
        return self.class_prompt or f"photo of a {self.class_word}".strip()

    @property
    def concept_name(self) -> str:
        return self.name or f"{self.token} {self.class_word}".strip()

    def settings(self) -> dict:
        return super().settings() | {"keep_shut": [Path(p).name for p in self.keep_shut]}

    def validate(self) -> None:
        super().validate()
        image_files(self.images)
        if not self.class_word and not (self.prompt and (self.class_prompt or self.prior_weight == 0)):
            raise UsageError("give --class-word (or both --prompt and --class-prompt)")
        check_class_images(self.class_images)
        if self.prior_weight > 0 and self.class_images is None and self.num_class_images < 1:
            raise UsageError("prior preservation needs --class-images DIR or --num-class-images N >= 1")
        for path in self.keep_shut:
            if not Path(path).is_file():
                raise UsageError(f"--keep-shut {path}: no such file")
        select_layers(unet_keys(self.model), self.layers)


@dataclass(kw_only=True)
class RefineConfig(SearchConfig):
    """A joint refine of several subjects (sec. 3.3) over the union of their concept neurons.

    ``containers`` are the single-subject (or merged) inputs; ``data`` maps each
    concept name to the folder of its images; ``class_images`` maps a class word
    to a folder of prior images, or is one folder for all when the subjects
    share one class.

    >>> RefineConfig(model="sd15", containers=["cat.cones", "lake.cones"],
    ...              data={"sks cat": "cat/", "zwx lake": "lake/"}, sparsity=0.02, out="both.cones")
    """

    containers: list[str | Path]
    data: dict[str, str | Path]
    class_images: dict[str, str | Path] | str | Path | None = None
    values: str | None = None  # None: the most precise kind among the inputs (trainer.values)

    def validate(self) -> None:
        super().validate()
        if len(self.containers) < 1:
            raise UsageError("give the containers to refine")
        for path in self.containers:
            if not Path(path).is_file():
                raise UsageError(f"{path}: no such container")
        for name, folder in self.data.items():
            try:
                image_files(folder)
            except UsageError as error:
                raise UsageError(f"--data {name}={folder}: {error}") from None
        if isinstance(self.class_images, dict):
            for word, folder in self.class_images.items():
                if not Path(folder).is_dir():
                    raise UsageError(f"--class-images {word}={folder}: no such folder")
        else:
            check_class_images(self.class_images)


def check_model_folder(model: str | Path) -> Path:
    """A local diffusers folder of a family the trainer takes (SD 1.x/2.x, SDXL, SD3, Flux; read
    from its model_index.json, trainer.families) with every part that family needs."""
    folder = Path(model)
    if not folder.is_dir():
        raise UsageError(
            f"--model {folder}: no such folder (a local diffusers SD 1.x/2.x, SDXL, SD3 or Flux folder)"
        )
    family = family_of(folder)
    missing = [part for part in family.parts if not (folder / part).is_dir()]
    if missing:
        parts = ", ".join(family.parts)
        raise UsageError(
            f"--model {folder}: missing {', '.join(missing)} (a diffusers {family.title} folder has {parts})"
        )
    return folder


def image_files(folder: str | Path) -> list[Path]:
    """The images of a folder (sorted), each opened and verified."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise UsageError(f"{path}: cannot read this image ({error})") from None
    return files


def check_class_images(folder: str | Path | None) -> None:
    """A prior-image folder may be missing (it is made and filled) but must not be a file."""
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise UsageError(
            f"--class-images {folder}: is a file; give a folder (existing images are used, "
            "missing ones generated into it)"
        )


def check_selection(tau: float | None, sparsity: float | None) -> None:
    """At most one of the two; with neither, the search keeps the count with the lowest held-out loss."""
    if tau is not None and sparsity is not None:
        raise UsageError(
            "give at most one of --tau (threshold, eq. A20) and --sparsity (fraction of entries to shut); "
            "with neither, the count with the lowest held-out loss is kept"
        )
    if sparsity is not None and not 0 < sparsity < 1:
        raise UsageError(f"--sparsity is a fraction in (0, 1), got {sparsity}")
    if tau is not None and tau <= 0:
        raise UsageError(f"--tau must be positive (Algorithm 1), got {tau}")


#: What --values takes (conesfmt.VALUE_KINDS), and what each stores per neuron.
VALUE_CHOICES = {
    "binary": "no value, the entry is shut",
    "q4": "2 bits, four levels per layer",
    "fp16": "16 bits",
    "fp32": "32 bits",
}


def check_values(values: str | None, value_steps: int | None, value_lr: float | None) -> None:
    """``values`` one of VALUE_CHOICES (None: refine's "as the inputs"); V >= 1; the step > 0."""
    if values is not None and values not in VALUE_CHOICES:
        kinds = "; ".join(f"{kind}: {what}" for kind, what in VALUE_CHOICES.items())
        raise UsageError(f"--values must be one of {', '.join(VALUE_CHOICES)} ({kinds}), got {values!r}")
    if value_steps is not None and value_steps < 1:
        raise UsageError(f"--value-steps must be at least 1, got {value_steps}")
    if value_lr is not None and value_lr <= 0:
        raise UsageError(f"--value-lr must be positive, got {value_lr}")


def check_out(out: str | Path, overwrite: bool) -> Path:
    if not out:
        raise UsageError("give --out FILE.cones")
    path = Path(out)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise UsageError(f"{path.parent}: no such folder for --out")
    return path


def select_layers(keys: Iterable[str], layers: str) -> list[str]:
    """The state-dict keys a layer preset or comma-separated globs select (in model order).

    ``cross`` is each family's default (conesrt.families): a UNet's
    cross-attention K/V, a transformer's joint-attention text K/V
    (``add_k_proj`` / ``add_v_proj``).
    """
    keys = list(keys)
    if layers == "cross":
        try:
            chosen = searched_keys(keys)
        except ValueError:
            chosen = []
    else:
        patterns = LAYER_PRESETS.get(layers) or tuple(p.strip() for p in layers.split(",") if p.strip())
        chosen = [key for key in keys if any(fnmatch.fnmatchcase(key, p) for p in patterns)]
    if not chosen:
        raise UsageError(
            f"--layers {layers!r} matches no weight of this model's denoiser "
            f"(presets: {', '.join(LAYER_PRESETS)}, or globs of state-dict keys)"
        )
    return chosen


def unet_keys(model: str | Path) -> list[str]:
    """The denoiser's state-dict keys (the UNet's; SD3's or Flux's transformer's), without loading
    its weights.

    From the safetensors headers when there are (no torch needed, instant),
    else by building the denoiser from its config on the meta device.
    """
    folder = check_model_folder(model)
    part = folder / family_of(folder).denoiser
    weights = sorted(part.glob("diffusion_pytorch_model*.safetensors"))
    if weights:
        from safetensors import safe_open

        keys: list[str] = []
        for path in weights:
            with safe_open(path, framework="numpy") as handle:
                keys += list(handle.keys())
        return keys
    import diffusers
    from accelerate import init_empty_weights

    config = diffusers.UNet2DConditionModel.load_config(part)
    kind = getattr(diffusers, config.get("_class_name", ""), diffusers.UNet2DConditionModel)
    with init_empty_weights():
        denoiser = kind.from_config(config)
    return list(denoiser.state_dict())
