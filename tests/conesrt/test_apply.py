"""conesrt.apply / remove / active: semantics, targets, dtypes, fingerprints, failures."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import conesfmt
import conesrt
from conesfmt.fingerprint import sample_positions
from conesrt import ledger
from tests.conesrt.helpers import assert_bit_identical, expected_state, random_container, snapshot, union
from tests.tiny_models import cross_attention_keys, tiny_pipeline, tiny_unet


@pytest.fixture
def unet():
    return tiny_unet(seed=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_apply_shuts_and_remove_restores_bit_exactly(dtype: torch.dtype) -> None:
    unet = tiny_unet(seed=0, dtype=dtype)
    base = snapshot(unet)
    container = random_container(unet, seed=1)
    keys = cross_attention_keys(unet)
    parameters = {key: (p, p.data_ptr()) for key, p in unet.state_dict(keep_vars=True).items()}

    handle = conesrt.apply(unet, container)
    assert_bit_identical(unet, expected_state(base, union([container], keys)))
    handle.remove()
    assert_bit_identical(unet, base)
    # Same Parameter objects over the same memory all along: no wrappers, no copies.
    for key, (parameter, pointer) in parameters.items():
        assert unet.state_dict(keep_vars=True)[key] is parameter and parameter.data_ptr() == pointer
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_targets_module_pipeline_and_state_dict(tmp_path) -> None:
    pipe = tiny_pipeline(tmp_path)
    base = snapshot(pipe.unet)
    container = random_container(pipe.unet, seed=2)
    for target in (pipe, pipe.unet, pipe.unet.state_dict(keep_vars=True)):
        with conesrt.apply(target, container) as handle:
            assert handle.active
            assert [(a.source, a.concept) for a in conesrt.active(pipe.unet)] == [("container #0", "concept")]
            assert not torch.equal(
                pipe.unet.state_dict()[cross_attention_keys(pipe.unet)[0]],
                base[cross_attention_keys(pipe.unet)[0]],
            )
        assert_bit_identical(pipe.unet, base)
        assert conesrt.active(pipe) == []


def test_paths_bytes_and_containers(unet, tmp_path) -> None:
    base = snapshot(unet)
    first, second = random_container(unet, seed=3), random_container(unet, seed=4)
    conesfmt.save(first, tmp_path / "cat.cones")
    handle = conesrt.apply(unet, [tmp_path / "cat.cones", second.to_bytes()])
    assert handle.concepts == [("cat.cones", "concept"), ("container #1", "concept")]
    assert_bit_identical(unet, expected_state(base, union([first, second], cross_attention_keys(unet))))
    handle.remove()
    handle.remove()  # harmless
    assert_bit_identical(unet, base)


def test_an_entry_shut_twice_stays_shut_until_both_are_removed(unet) -> None:
    keys = cross_attention_keys(unet)
    key = keys[0]
    base = snapshot(unet)
    a = conesfmt.Container(
        conesrt.layer_table(unet, keys), {"a": {key: [1, 2, 3]}}, conesrt.fingerprint(unet, keys)
    )
    b = conesfmt.Container(
        conesrt.layer_table(unet, keys), {"b": {key: [3, 4]}}, conesrt.fingerprint(unet, keys)
    )
    weight = unet.state_dict()[key].view(-1)
    handle_a = conesrt.apply(unet, a)
    handle_b = conesrt.apply(unet, b)
    handle_a.remove()  # entry 3 is still shut by b
    assert weight[3] == 0 and torch.equal(weight[1:3], base[key].view(-1)[1:3])
    assert [a.concept for a in conesrt.active(unet)] == ["b"]
    handle_b.remove()
    assert_bit_identical(unet, base)


def test_signed_zeros_in_the_base_come_back(unet) -> None:
    keys = cross_attention_keys(unet)
    key = keys[0]
    with torch.no_grad():
        unet.state_dict(keep_vars=True)[key].view(-1)[:4] = torch.tensor([0.0, -0.0, 0.0, -0.0])
    base = snapshot(unet)
    table = conesrt.layer_table(unet, keys)
    one = conesfmt.Container(table, {"one": {key: [0, 1, 2, 5]}}, conesrt.fingerprint(unet, keys))
    two = conesfmt.Container(table, {"two": {key: [1, 3, 5]}}, conesrt.fingerprint(unet, keys))
    first, second = conesrt.apply(unet, one), conesrt.apply(unet, two)
    first.remove()
    second.remove()
    assert_bit_identical(unet, base)


def test_memory_kept_is_small(unet) -> None:
    containers = [random_container(unet, seed=s, density=d) for s, d in [(5, 0.05), (6, 0.2), (7, 0.3)]]
    handles = [conesrt.apply(unet, c) for c in containers]
    distinct = sum(v.size for v in union(containers, cross_attention_keys(unet)).values())
    kept = sum(h.saved_bytes for h in handles)
    assert kept <= distinct * (4 + 4) + 64 * 1024, (kept, distinct)
    # never a copy of whole tensors: far below the K/V weights themselves
    whole = sum(unet.state_dict()[k].numel() * 4 for k in cross_attention_keys(unet))
    assert kept < whole
    for handle in handles:
        handle.remove()


def test_concepts_selects_inside_a_multi_concept_container(unet) -> None:
    base = snapshot(unet)
    container = random_container(unet, seed=8, names=("cat", "lake", "hat"))
    keys = cross_attention_keys(unet)
    with conesrt.apply(unet, container, concepts=["lake", "cat"]) as handle:
        assert handle.concepts == [("container #0", "cat"), ("container #0", "lake")]
        wanted = conesfmt.Container(container.layers, {n: container.concepts[n] for n in ("cat", "lake")})
        assert_bit_identical(unet, expected_state(base, union([wanted], keys)))
    with pytest.raises(ValueError, match="no concept 'dog'"):
        conesrt.apply(unet, container, concepts=["dog"])
    assert_bit_identical(unet, base)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fingerprint_accepts_the_same_weights_in_another_dtype(dtype: torch.dtype) -> None:
    container = random_container(tiny_unet(seed=0), seed=9)
    with conesrt.apply(tiny_unet(seed=0, dtype=dtype), container):
        pass


def test_fingerprint_made_in_half_precision_accepts_fp32() -> None:
    container = random_container(tiny_unet(seed=0, dtype=torch.bfloat16), seed=9)
    with conesrt.apply(tiny_unet(seed=0), container):
        pass


def noisy(unet: torch.nn.Module, relative: float) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key in cross_attention_keys(unet):
            weight = unet.state_dict(keep_vars=True)[key]
            weight.mul_(1 + relative * torch.randn(weight.shape, generator=generator))
    return unet


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: tiny_unet(seed=1), "other weights in 14 of 14 layers"),
        (lambda: noisy(tiny_unet(seed=0), 0.01), "other weights in"),
    ],
    ids=["another-init", "one-percent-noise"],
)
def test_fingerprint_rejects_other_weights_and_touches_nothing(model, message) -> None:
    container = random_container(tiny_unet(seed=0), seed=10)
    unet = model()
    base = snapshot(unet)
    with pytest.raises(conesrt.FingerprintMismatch, match=message) as raised:
        conesrt.apply(unet, container)
    assert "made for 'tiny'" in str(raised.value) and "sampled weights differ" in str(raised.value)
    assert_bit_identical(unet, base)
    with pytest.warns(UserWarning, match="other weights"):
        handle = conesrt.apply(unet, container, strict=False)
    handle.remove()
    assert_bit_identical(unet, base)


def test_python_errors_and_warnings_name_strict_false() -> None:
    container = random_container(tiny_unet(seed=0), seed=10)
    unet = tiny_unet(seed=1)
    with pytest.raises(conesrt.FingerprintMismatch) as raised:
        conesrt.apply(unet, container)
    error = raised.value
    assert error.overridable and str(error) == error.reason + "; pass strict=False to use it anyway"
    assert error.reason.startswith("container #0 does not fit this model") and "strict" not in error.reason
    with pytest.warns(conesrt.FingerprintWarning) as caught:
        conesrt.apply(unet, container, strict=False).remove()
    (warning,) = caught
    assert str(warning.message) == error.reason + "; using it anyway (strict=False)"
    assert warning.message.reason == error.reason and issubclass(warning.category, UserWarning)


def test_the_fingerprint_compares_the_sampled_entries_only(unet) -> None:
    """What the README says it catches: one changed weight passes unless it is a sampled one."""
    container = random_container(unet, seed=14)
    key = cross_attention_keys(unet)[0]
    weight = unet.state_dict(keep_vars=True)[key]
    sampled = sample_positions(weight.numel(), container.fingerprint.samples_per_layer)
    unsampled = int(sampled[3]) + 1
    assert unsampled not in sampled
    with torch.no_grad():
        weight.view(-1)[unsampled] += 0.5
    conesrt.apply(unet, container).remove()  # not compared: it fits
    with torch.no_grad():
        weight.view(-1)[int(sampled[3])] += 0.5
    layers = len(container.layers)
    with pytest.raises(
        conesrt.FingerprintMismatch,
        match=rf"other weights in 1 of {layers} layers: {re.escape(key)}: 1 of 8 sampled weights differ",
    ):
        conesrt.apply(unet, container)


def test_another_architecture_is_rejected_even_when_not_strict() -> None:
    unet = tiny_unet(seed=0)
    keys = cross_attention_keys(unet)
    table = dict(conesrt.layer_table(unet, keys))
    missing = conesfmt.Container({**table, "extra.attn2.to_k.weight": (4, 4)}, {"c": {keys[0]: [1]}})
    reshaped = conesfmt.Container({**table, keys[0]: conesfmt.Layer((16, 64), "F32")}, {"c": {keys[0]: [1]}})
    for container, message in [
        (missing, "extra.attn2.to_k.weight: missing from the model"),
        (reshaped, "shape"),
    ]:
        for strict in (True, False):
            with pytest.raises(conesrt.FingerprintMismatch, match=message):
                conesrt.apply(unet, container, strict=strict)


def test_a_container_without_fingerprint_needs_strict_false(unet) -> None:
    container = random_container(unet, seed=11, fingerprint=False)
    with pytest.raises(conesrt.FingerprintMismatch, match="no fingerprint"):
        conesrt.apply(unet, container)
    with pytest.warns(UserWarning, match="no fingerprint"):
        conesrt.apply(unet, container, strict=False).remove()


def test_nothing_changes_when_an_input_is_bad(unet, tmp_path) -> None:
    base = snapshot(unet)
    good = random_container(unet, seed=12)
    corrupt = bytearray(random_container(unet, seed=13).to_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(conesfmt.FormatError, match="container #1: .*checksum"):
        conesrt.apply(unet, [good, bytes(corrupt)])
    with pytest.raises(FileNotFoundError):
        conesrt.apply(unet, [good, tmp_path / "missing.cones"])
    with pytest.raises(TypeError, match="expected a path"):
        conesrt.apply(unet, [good, 42])
    with pytest.raises(TypeError, match="cannot apply to a str"):
        conesrt.apply("unet", good)
    assert_bit_identical(unet, base)
    assert conesrt.active(unet) == []


def test_a_failure_while_writing_is_rolled_back(unet, monkeypatch) -> None:
    base = snapshot(unet)
    container = random_container(unet, seed=14, names=("a", "b"))
    real_shut, calls = ledger.shut, []

    def failing_shut(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise RuntimeError("device lost")
        return real_shut(*args, **kwargs)

    monkeypatch.setattr("conesrt.handles.shut", failing_shut)
    with pytest.raises(RuntimeError, match="device lost"):
        conesrt.apply(unet, container)
    assert_bit_identical(unet, base)
    assert conesrt.active(unet) == []


def test_a_state_dict_copy_cannot_shadow_the_module(unet) -> None:
    container = random_container(unet, seed=15)
    with (
        conesrt.apply(unet, container),
        pytest.raises(RuntimeError, match="another tensor object over the same memory"),
    ):
        conesrt.apply(unet.state_dict(), container)


def test_moving_the_model_after_apply_still_restores(unet) -> None:
    container = random_container(unet, seed=16)
    base = {k: v.to(torch.float16) for k, v in snapshot(unet).items()}
    handle = conesrt.apply(unet, container)
    unet.half()
    handle.remove()
    assert_bit_identical(unet, base)


def test_applying_to_a_dropped_state_dict_copy_still_restores(unet) -> None:
    import gc

    container = random_container(unet, seed=18)
    base = snapshot(unet)
    handle = conesrt.apply(unet.state_dict(), container)  # the dict and its tensors are dropped at once
    gc.collect()
    assert not torch.equal(
        unet.state_dict()[cross_attention_keys(unet)[0]], base[cross_attention_keys(unet)[0]]
    )
    handle.remove()
    assert_bit_identical(unet, base)


def test_memory_reused_after_a_move_is_not_mistaken_for_the_old_weight(unet) -> None:
    container = random_container(unet, seed=19)
    key = cross_attention_keys(unet)[0]
    parameter = unet.state_dict(keep_vars=True)[key]
    handle = conesrt.apply(unet, container)
    shut_fp32 = snapshot(unet)
    stranger = parameter.data  # another tensor object that will sit on the old memory
    unet.half()  # the parameter object stays, its storage moves
    assert stranger.data_ptr() != parameter.data_ptr()
    # Asked first about the stranger: the stale memory key must not lead to the UNet's ledger.
    assert ledger.existing_ledger(stranger) is None
    positions = np.arange(stranger.numel())
    assert torch.equal(ledger.base_values(stranger, positions), stranger.reshape(-1))  # its own zeros
    assert torch.equal(stranger, shut_fp32[key])
    assert ledger.existing_ledger(parameter) is not None  # the ledger followed the object
    handle.remove()
    base_half = {k: v.half() for k, v in snapshot(tiny_unet(seed=0)).items()}
    assert_bit_identical(unet, base_half)


def test_compiled_unet_sees_the_change_without_recompiling(unet) -> None:
    import torch._dynamo

    container = random_container(unet, seed=17, density=0.3)
    sample, timestep = torch.randn(1, 4, 16, 16), torch.tensor([10])
    text = torch.randn(1, 5, 32)
    compiled = torch.compile(unet, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        before = compiled(sample, timestep, text).sample
        with torch._dynamo.config.patch(error_on_recompile=True):
            with conesrt.apply(unet, container):
                shut = compiled(sample, timestep, text).sample
                eager = unet(sample, timestep, text).sample
            after = compiled(sample, timestep, text).sample
    assert not torch.equal(before, shut)
    torch.testing.assert_close(shut, eager)
    assert torch.equal(before, after)
    warnings.simplefilter("default")


def test_handle_repr_and_saved_bytes(unet) -> None:
    handle = conesrt.apply(unet, random_container(unet, seed=18, names=("cat",)))
    assert "active" in repr(handle) and "'cat'" in repr(handle) and handle.saved_bytes > 0
    handle.remove()
    assert "removed" in repr(handle) and handle.saved_bytes == 0
    assert np.isfinite(handle.saved_bytes)


def test_a_merged_container_applies_like_its_parts(unet) -> None:
    singles = [random_container(unet, seed=s, names=(f"s{s}",)) for s in (21, 22, 23)]
    merged = conesfmt.merge(singles)
    with conesrt.apply(unet, singles):
        together = snapshot(unet)
    with conesrt.apply(unet, merged):
        assert_bit_identical(unet, together)
    with conesrt.apply(unet, [singles[0], singles[2]]):
        subset = snapshot(unet)
    with conesrt.apply(unet, merged, concepts=["s21", "s23"]):
        assert_bit_identical(unet, subset)


def test_a_dropped_model_is_freed_even_with_a_handle_not_removed() -> None:
    import gc
    import weakref

    unet = tiny_unet(seed=0)
    handle = conesrt.apply(unet, random_container(unet, seed=20))
    gone = weakref.ref(unet.state_dict(keep_vars=True)[cross_attention_keys(unet)[0]])
    del unet, handle
    gc.collect()
    assert gone() is None  # neither the handle nor the runtime's ledgers keep the weights alive
