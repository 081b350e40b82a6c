"""Values on concept neurons in the runtime (spec § 6.5): w = θ·ξ, strengths, order, bake = apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

import conesfmt
import conesrt
from conesrt.composition import Factors, compose_weights, encode_weights, product
from tests.conesrt.helpers import (
    assert_bit_identical,
    bits,
    random_container,
    reference_state,
    snapshot,
    valued_container,
)
from tests.tiny_models import cross_attention_keys, tiny_unet

WEIGHTS = "diffusion_pytorch_model.safetensors"
CONES = str(Path(sys.executable).parent / "cones")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def one_entry(unet, key: str, index: int, values=None, kind=None) -> conesfmt.Container:
    keys = cross_attention_keys(unet)
    concept = conesfmt.Concept({key: [index]}, values=values and {key: values}, value_kind=kind)
    return conesfmt.Container(
        conesrt.layer_table(unet, keys), {"c": concept}, conesrt.fingerprint(unet, keys)
    )


def test_an_entry_becomes_its_base_times_its_value() -> None:
    unet = tiny_unet(seed=0)
    key = cross_attention_keys(unet)[0]
    weight = unet.state_dict()[key].view(-1)
    theta = weight[7].item()
    container = one_entry(unet, key, 7, np.array([0.5], np.float32))
    with conesrt.apply(unet, container):
        assert weight[7].item() == np.float32(theta) * np.float32(0.5)
        assert container.values("c", key).tolist() == [0.5]
    assert weight[7].item() == theta


@pytest.mark.parametrize("dtype", DTYPES)
def test_strength_scales_the_effect(dtype: torch.dtype) -> None:
    """s = 0 changes nothing, s = 1 is the container as stored, a binary container at 0.5 halves entries."""
    unet = tiny_unet(seed=0, dtype=dtype)
    base = snapshot(unet)
    keys = cross_attention_keys(unet)
    binary = random_container(unet, seed=1, density=0.2)
    indices = {key: binary.indices("concept", key) for key in keys}
    with conesrt.apply(unet, binary, strength=0.0):
        assert_bit_identical(unet, base)
    with conesrt.apply(unet, binary, strength=0.5):
        for key in keys:
            half = base[key].view(-1)[indices[key]] * 0.5  # exact: halving a float only lowers its exponent
            assert torch.equal(bits(unet.state_dict()[key].view(-1)[indices[key]]), bits(half))
    with conesrt.apply(unet, binary, strength=1.0):
        assert all(int(bits(unet.state_dict()[key].view(-1)[indices[key]]).abs().sum()) == 0 for key in keys)
    valued = valued_container(unet, seed=2, kinds=("fp16", "q4"), density=0.2)
    with conesrt.apply(unet, valued):  # strength 1: the values as stored
        expected = reference_state(base, [(valued, name, 1.0) for name in valued.concepts], keys)
        assert_bit_identical(unet, expected, keys)
    assert_bit_identical(unet, base)


def test_a_strength_per_container_interpolates_two_subjects() -> None:
    """The paper's appendix C.6: subject A at s with subject B at 1 - s."""
    unet = tiny_unet(seed=0)
    base = snapshot(unet)
    keys = cross_attention_keys(unet)
    first = valued_container(unet, seed=3, kinds=("q4",), density=0.1)
    second = valued_container(unet, seed=4, kinds=("fp16",), density=0.1)
    for s in (0.0, 0.25, 0.5, 1.0):
        with conesrt.apply(unet, [first, second], strength=[s, 1 - s]):
            active = [(first, "q40", s), (second, "fp160", 1 - s)]
            assert_bit_identical(unet, reference_state(base, active, keys), keys)
    with pytest.raises(ValueError, match="2 strengths for 1 containers"):
        conesrt.apply(unet, first, strength=[0.5, 0.5])
    with pytest.raises(ValueError, match="strength must be finite"):
        conesrt.apply(unet, first, strength=float("nan"))
    assert_bit_identical(unet, base)


def test_overlapping_concepts_compose_in_sorted_order_whatever_the_order_of_application() -> None:
    """Three factors whose binary32 product depends on the order: every order gives the sorted one."""
    unet = tiny_unet(seed=0)
    key = cross_attention_keys(unet)[0]
    weight = unet.state_dict()[key].view(-1)
    theta = np.float32(weight[3].item())
    factors = [np.float32(f) for f in (1.4071239233016968, 0.423709899187088, 1.364941120147705)]
    a, b, c = factors
    assert len({float((a * b) * c), float((a * c) * b), float((b * c) * a)}) > 1  # the order matters
    expected = theta * ((factors[1] * factors[2]) * factors[0])  # ascending: 0.42, 1.36, 1.41
    containers = [one_entry(unet, key, 3, np.array([f], np.float32)) for f in factors]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        handles = [conesrt.apply(unet, containers[n]) for n in order]
        assert np.float32(weight[3].item()) == expected
        handles[1].remove()  # and with one removed, the sorted product of the two others
        rest = sorted(factors[n] for n in (order[0], order[2]))
        assert np.float32(weight[3].item()) == theta * (rest[0] * rest[1])
        for handle in handles:
            handle.remove()
        assert np.float32(weight[3].item()) == theta


def test_zero_values_shut_and_overflow_is_infinity_not_nan() -> None:
    """Spec § 6.5: a zero factor gives +0.0 (on a negative weight too, and on one made infinite)."""
    unet = tiny_unet(seed=0)
    keys = cross_attention_keys(unet)
    key = keys[0]
    weight = unet.state_dict(keep_vars=True)[key]
    with torch.no_grad():
        weight.view(-1)[:2] = torch.tensor([-0.5, 3.0e38])
    flat = weight.detach().view(-1)
    table, fingerprint = conesrt.layer_table(unet, keys), conesrt.fingerprint(unet, keys)

    def container(index: int, value: float) -> conesfmt.Container:
        concept = conesfmt.Concept({key: [index]}, values={key: np.array([value], np.float32)})
        return conesfmt.Container(table, {"c": concept}, fingerprint)

    with conesrt.apply(unet, container(0, -0.0)):
        assert int(flat[0].view(torch.int32)) == 0  # +0.0, not -0.0
    with conesrt.apply(unet, container(1, 1e38)):
        assert flat[1].item() == float("inf")  # overflow, as IEEE 754 rounds it
        with conesrt.apply(unet, container(1, 0.0)):
            assert int(flat[1].view(torch.int32)) == 0  # not inf * 0 = NaN
        assert flat[1].item() == float("inf")
    assert flat[1].item() == np.float32(3.0e38)
    nan = encode_weights(np.array([np.nan, -np.nan], np.float32), "BF16").view("<u2").reshape(-1).tolist()
    assert nan == [0x7FC0, 0x7FC0]  # the canonical NaN of step 6, whatever the sign


@pytest.mark.parametrize("dtype", DTYPES)
def test_baked_valued_containers_equal_apply_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    """bake (numpy) and apply (torch) give the same bits for every kind, strengths and overlaps."""
    model = tmp_path / "unet"
    tiny_unet(seed=0, dtype=dtype).save_pretrained(model)
    unet = UNet2DConditionModel.from_pretrained(model, dtype=dtype)
    containers = [
        valued_container(unet, seed=5, kinds=("binary", "q4"), density=0.3),
        valued_container(unet, seed=6, kinds=("fp16", "fp32"), density=0.3),
        valued_container(unet, seed=7, kinds=("q4",), density=0.3),
    ]
    paths = [conesfmt.save(c, tmp_path / f"c{n}.cones") for n, c in enumerate(containers)]
    for number, strengths in enumerate([1.0, [0.5, 1.0, 1.0], [2.0, -0.5, 0.3], [0.0, 1.0, 0.75]]):
        baked_folder = tmp_path / f"baked{number}"
        baked_folder.mkdir()
        (baked_folder / "config.json").write_bytes((model / "config.json").read_bytes())
        conesrt.bake(model, paths, baked_folder / WEIGHTS, strength=strengths)
        with conesrt.apply(unet, paths, strength=strengths):
            applied = snapshot(unet)
        baked = UNet2DConditionModel.from_pretrained(baked_folder, dtype=dtype)
        assert_bit_identical(baked, applied)


def test_cones_bake_takes_strengths(tmp_path: Path) -> None:
    model = tmp_path / "unet"
    tiny_unet(seed=0).save_pretrained(model)
    unet = UNet2DConditionModel.from_pretrained(model)
    first = conesfmt.save(valued_container(unet, seed=8, kinds=("q4",)), tmp_path / "a.cones")
    second = conesfmt.save(random_container(unet, seed=9), tmp_path / "b.cones")
    out = tmp_path / "out.safetensors"
    command = [CONES, "bake", str(first), str(second), "--model", str(model), "--out", str(out)]
    result = subprocess.run(
        [*command, "--strength", "0.5", "--strength", "0.25"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "reference.safetensors"
    conesrt.bake(model, [first, second], reference, strength=[0.5, 0.25])
    assert out.read_bytes() == reference.read_bytes()
    three = subprocess.run(
        [*command, "--overwrite"] + ["--strength", "1"] * 3, capture_output=True, text=True
    )
    assert (
        three.returncode == 1
        and three.stderr
        == "cones bake: error: 3 strengths for 2 containers: give one number, or one per container\n"
    )


def test_values_are_read_from_the_container_not_copied() -> None:
    """Memory kept while applied: base values and indices as for binary, and a reference to the q4 codes."""
    unet = tiny_unet(seed=0)
    keys = cross_attention_keys(unet)
    binary = random_container(unet, seed=10, density=0.2)
    q4 = conesfmt.Container(
        binary.layers,
        {
            "q": conesfmt.Concept(
                {k: binary.indices("concept", k) for k in keys},
                values={
                    k: conesfmt.quantize_q4(np.linspace(0, 1, binary.indices("concept", k).size))
                    for k in keys
                },
            )
        },
        binary.fingerprint,
    )
    with conesrt.apply(unet, binary) as shut, conesrt.apply(tiny_unet(seed=0), q4) as scaled:
        codes = q4.concepts["q"].values_nbytes
        assert scaled.saved_bytes == shut.saved_bytes + codes
        assert codes <= sum(binary.concepts["concept"].counts.values()) // 4 + len(keys) * (16 + 1)
        stored = q4.concepts["q"].values[keys[0]]
        assert any(shutting.factors.values is stored for _, _, shutting in scaled._shuttings)


def test_values_on_a_dtype_that_cannot_hold_them_are_refused_before_any_write() -> None:
    unet = tiny_unet(seed=0)
    keys = cross_attention_keys(unet)
    state = {
        key: value.detach().clone().to(torch.float8_e4m3fn)
        for key, value in unet.state_dict().items()
        if key in keys
    }
    valued = valued_container(unet, seed=11, kinds=("fp16",), fingerprint=False)
    before = {key: value.clone() for key, value in state.items()}
    with (
        pytest.raises(TypeError, match="can be shut .* but not scaled"),
        pytest.warns(conesrt.FingerprintWarning),
    ):
        conesrt.apply(state, valued, strict=False)
    assert all(torch.equal(state[k].view(torch.uint8), before[k].view(torch.uint8)) for k in keys)
    binary = random_container(unet, seed=12, fingerprint=False)  # binary at strength 1 only shuts: allowed
    with pytest.warns(conesrt.FingerprintWarning), conesrt.apply(state, binary, strict=False):
        shut = binary.indices("concept", keys[0])
        assert int(state[keys[0]].view(-1)[shut].view(torch.uint8).sum()) == 0
    assert all(torch.equal(state[k].view(torch.uint8), before[k].view(torch.uint8)) for k in keys)


def test_composition_helpers_follow_spec_6_5() -> None:
    xi, zero = product([np.array([1.1, 0.0, 1.0], np.float32), np.array([0.3, 5.0, 1.0], np.float32)])
    assert xi[0] == np.float32(0.3) * np.float32(1.1) and zero.tolist() == [False, True, False] and xi[2] == 1
    assert Factors(None, 2, 0.25).constant == np.float32(0.75) and Factors(None, 2, 1.0).shuts
    q4 = conesfmt.Q4([0.0, 0.5, 1.0, 2.0], [3, 2, 1, 0, 3])
    assert Factors(q4, 5, 0.5).at(np.array([0, 3, 4])).tolist() == [1.5, 0.5, 1.5]
    raw = np.array([1.5, -2.0, 7.0], "<f2").view(np.uint8).reshape(3, 2)
    out = compose_weights(raw, "F16", np.array([0.5, 1.0, 3.0], np.float32), np.array([False, False, True]))
    assert out.view("<f2").reshape(-1).tolist() == [0.75, -2.0, 0.0]
    with pytest.raises(ValueError, match="can only be shut"):
        compose_weights(np.zeros((1, 1), np.uint8), "F8_E4M3", np.array([0.5], np.float32), np.array([False]))
