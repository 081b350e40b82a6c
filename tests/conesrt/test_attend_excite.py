"""Several subjects in one image (paper, appendix C.5; issue 14, point 7): diffusers' Attend-and-Excite
pipeline with two containers applied, its token indices taken from each concept's trigger."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionAttendAndExcitePipeline

import conesfmt
import conesrt
from tests.conesrt.helpers import assert_bit_identical, snapshot
from tests.tiny_models import cross_attention_keys, tiny_pipeline, tiny_tokenizer

PROMPT = "a sks cat by a zwx lake"


def subject(unet: torch.nn.Module, name: str, trigger: str, class_word: str, seed: int) -> conesfmt.Container:
    """A container as ``cones train`` writes one: random neurons, the trigger and class word recorded."""
    keys = cross_attention_keys(unet)
    rng = np.random.default_rng(seed)
    state = unet.state_dict()
    concept = conesfmt.Concept(
        {key: np.flatnonzero(rng.random(state[key].numel()) < 0.2) for key in keys},
        trigger=trigger,
        class_word=class_word,
    )
    layers = conesrt.layer_table(unet, keys)
    return conesfmt.Container(layers, {name: concept}, conesrt.fingerprint(unet, keys))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> StableDiffusionAttendAndExcitePipeline:
    folder = tmp_path_factory.mktemp("attend_excite")
    tiny_pipeline(folder)  # saved with save_pretrained to folder / "pipeline"
    loaded = StableDiffusionAttendAndExcitePipeline.from_pretrained(folder / "pipeline", safety_checker=None)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def run(pipe, token_indices: list[int]) -> np.ndarray:
    return pipe(
        PROMPT,
        token_indices=token_indices,
        height=32,  # 16 x 16 latents: the tiny UNet's cross-attention maps match attn_res
        width=32,
        num_inference_steps=2,
        max_iter_to_alter=2,
        attn_res=(16, 16),
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def test_token_indices_are_where_the_triggers_are(pipe) -> None:
    cat = subject(pipe.unet, "cat", "sks", "cat", seed=1)
    lake = subject(pipe.unet, "lake", "zwx", "lake", seed=2)
    indices = conesrt.token_indices(pipe.tokenizer, PROMPT, [cat, lake])
    tokens = pipe.get_indices(PROMPT)  # position -> token, start token at 0
    # The tiny tokenizer spells each word in characters, the last one marked </w>.
    assert [tokens[i] for i in indices] == ["s", "k", "s</w>", "z", "w", "x</w>"]
    assert conesrt.token_indices(pipe.tokenizer, PROMPT, [cat, lake], concepts=["lake"]) == indices[3:]


def test_a_refined_containers_joint_trigger_gives_every_subject(tmp_path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    joint = conesfmt.Container(
        {"w": (4, 4)}, {"cat + lake": conesfmt.Concept({"w": [1, 5]}, trigger="sks zwx")}
    )
    assert conesrt.token_indices(tokenizer, PROMPT, conesfmt.Container.from_bytes(joint.to_bytes())) == [
        2,
        3,
        4,
        11,
        12,
        13,
    ]


def test_a_trigger_missing_from_the_prompt_or_from_the_container_is_an_error(tmp_path) -> None:
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    dog = conesfmt.Container({"w": (4, 4)}, {"dog": conesfmt.Concept({"w": [1]}, trigger="qxv")})
    with pytest.raises(ValueError, match="'qxv', the trigger of concept 'dog'"):
        conesrt.token_indices(tokenizer, PROMPT, dog)
    anonymous = conesfmt.Container({"w": (4, 4)}, {"thing": {"w": [1]}})
    with pytest.raises(ValueError, match="records no trigger"):
        conesrt.token_indices(tokenizer, PROMPT, anonymous)


def test_attend_and_excite_runs_with_two_containers_applied_and_remove_restores_bits(pipe, tmp_path) -> None:
    cat = subject(pipe.unet, "cat", "sks", "cat", seed=1)
    lake = subject(pipe.unet, "lake", "zwx", "lake", seed=2)
    paths = [conesfmt.save(cat, tmp_path / "cat.cones"), conesfmt.save(lake, tmp_path / "lake.cones")]
    indices = conesrt.token_indices(pipe.tokenizer, PROMPT, paths)
    base = snapshot(pipe.unet)
    before = run(pipe, indices)
    with conesrt.apply(pipe, paths):
        both = run(pipe, indices)
    assert_bit_identical(pipe.unet, base)
    after = run(pipe, indices)
    assert np.isfinite(both).all()
    assert not np.array_equal(both, before)  # the two subjects' neurons are shut
    assert np.array_equal(after, before)  # and removing them gives the same image, bit for bit
    # The indices steer the excitation: other tokens give another image.
    assert not np.array_equal(run(pipe, [1]), before)
