"""Wire formats: round-trip error bounds, payload sizes, side information, receiver sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlab.channel import BITS_PER_ELEMENT, decode, encode, payload_bits, quantise_dequantise, token_bits
from splitlab.channel.quantisation import lost_elements


def _hidden(shape=(2, 16, 64)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(*shape, generator=g) * torch.logspace(-3, 2, shape[-1])  # many magnitudes
    return h


def test_fp32_is_exact():
    h = _hidden()
    assert torch.equal(quantise_dequantise(h, "fp32"), h)


@pytest.mark.parametrize(("quant", "significand_bits"), [("fp16", 11), ("bf16", 8)])
def test_float_formats_relative_error_bound(quant, significand_bits):
    h = _hidden()
    err = (quantise_dequantise(h, quant) - h).abs()
    # Round to nearest: half an ulp, i.e. 2^-significand_bits relative; fp16 subnormals below 2^-14
    # have an absolute spacing of 2^-24.
    bound = h.abs() * 2.0**-significand_bits + (2.0**-25 if quant == "fp16" else 0.0)
    assert (err <= bound).all()
    assert err.max() > 0  # the format does lose precision


def test_fp16_saturates_instead_of_overflowing():
    h = torch.tensor([[1e6, -1e6, 1.0]])
    out = quantise_dequantise(h, "fp16")
    assert torch.equal(out, torch.tensor([[65504.0, -65504.0, 1.0]]))


def test_int8_error_at_most_half_a_step_per_token():
    h = _hidden()
    out = quantise_dequantise(h, "int8")
    scale = h.abs().amax(dim=-1, keepdim=True) / 127
    assert ((out - h).abs() <= scale / 2 * (1 + 1e-6)).all()
    # Each token's largest element survives exactly up to float rounding.
    assert torch.allclose(out.abs().amax(-1), h.abs().amax(-1), rtol=1e-6)


def test_int8_all_zero_token_stays_zero():
    h = torch.zeros(1, 2, 8)
    h[0, 1] = torch.arange(8.0)
    out = quantise_dequantise(h, "int8")
    assert not out[0, 0].any() and torch.allclose(out[0, 1], h[0, 1], atol=7 / 127 / 2 + 1e-6)


@pytest.mark.parametrize("quant", ["fp32", "fp16", "bf16", "int8"])
def test_payload_size_counts_side_information(quant):
    h = _hidden((3, 5, 576))
    payload = encode(h, quant)
    side = 32 if quant == "int8" else 0
    assert payload.dtype == np.uint8 and payload.shape == (15, (576 * BITS_PER_ELEMENT[quant] + side) // 8)
    assert token_bits(quant, 576) == 576 * BITS_PER_ELEMENT[quant] + side
    assert payload_bits(quant, 15, 576) == payload.size * 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_decode_matches_input_dtype_and_shape(dtype):
    h = _hidden((2, 3, 8)).to(dtype)
    for quant in ("fp32", "fp16", "bf16", "int8"):
        out = quantise_dequantise(h, quant)
        assert out.dtype == dtype and out.shape == h.shape


@pytest.mark.parametrize(("quant", "bad"), [("fp32", np.float32(np.nan)), ("fp16", np.float16(np.inf)), ("bf16", None)])
def test_receiver_replaces_non_finite_values_with_zero(quant, bad):
    h = torch.ones(1, 1, 4)
    payload = encode(h, quant)
    if quant == "bf16":  # 0x7FC0 is a bf16 NaN
        payload[0, 2:4] = np.array([0x7FC0], dtype=np.int16).view(np.uint8)
    else:
        size = payload.shape[1] // 4
        payload[0, size : 2 * size] = np.array([bad]).view(np.uint8)
    out = decode(payload, quant, h)
    assert torch.equal(out, torch.tensor([[[1.0, 0.0, 1.0, 1.0]]]))


def test_decode_rejects_wrong_payload_shape():
    with pytest.raises(ValueError, match="payload must have shape"):
        decode(np.zeros((1, 5), np.uint8), "fp16", torch.zeros(1, 1, 4))


def test_lost_scale_loses_whole_int8_token_and_lost_bytes_lose_elements():
    lost = np.zeros((2, 4 + 3), dtype=bool)
    lost[0, 1] = True  # a byte of token 0's scale
    lost[1, 4 + 2] = True  # element 2 of token 1
    assert np.array_equal(lost_elements(lost, "int8", 3), [[True, True, True], [False, False, True]])
    lost16 = np.zeros((1, 6), dtype=bool)
    lost16[0, 3] = True  # second byte of element 1
    assert np.array_equal(lost_elements(lost16, "fp16", 3), [[False, True, False]])
