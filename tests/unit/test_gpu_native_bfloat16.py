"""bfloat16 as the native solver stores factors (worker/gpu/bfloat16.py): the rounding the reference
and the solver's uploads use must be the GPU's __float2bfloat16_rn, and widening exact."""

from __future__ import annotations

import numpy as np

from airflow_gpu.worker.gpu import bfloat16
from tests.support.native_data import bfloat16_test_values, nearest_bfloat16_bits


def test_rounding_gives_the_nearest_bfloat16_ties_to_even():
    values = bfloat16_test_values()
    with np.errstate(invalid="ignore"):
        expected = nearest_bfloat16_bits(values)
    ours = bfloat16.to_bits(values)
    assert ours.dtype == np.uint16
    assert np.array_equal(ours, expected), np.flatnonzero(ours != expected)[:5]


def test_the_rounding_edges_by_hand():
    one = np.float32(1.0)
    step = np.float32(2.0**-7)  # one bfloat16 step above 1
    cases = {
        one + step / 2: 0x3F80,  # a tie: to the even pattern, down
        one + 3 * step / 2: 0x3F82,  # a tie: to the even pattern, up
        np.float32(3.3895314e38): 0x7F7F,  # the largest bfloat16
        np.finfo(np.float32).max: 0x7F80,  # past it: infinity
        np.float32(-0.0): 0x8000,
        np.float32(np.nan): bfloat16.QUIET_NAN,
        np.float32(1e-40): 0x0001,  # a subnormal stays one (0x000116C2 rounds to 0x0001)
    }
    for value, bits in cases.items():
        assert int(bfloat16.to_bits(np.array([value]))[0]) == bits, (value, hex(bits))


def test_widening_is_exact_and_rounding_keeps_every_bfloat16():
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    widened = bfloat16.to_float(patterns)
    assert widened.dtype == np.float32
    assert np.array_equal(widened.view(np.uint32) >> np.uint32(16), patterns.astype(np.uint32))
    finite_or_inf = ~np.isnan(widened)
    assert np.array_equal(bfloat16.to_bits(widened)[finite_or_inf], patterns[finite_or_inf])
    assert np.all(bfloat16.to_bits(widened)[~finite_or_inf] == bfloat16.QUIET_NAN)


def test_round_float32_keeps_the_shape_and_moves_each_value_at_most_half_a_step():
    values = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    rounded = bfloat16.round_float32(values)
    assert rounded.shape == values.shape and rounded.dtype == np.float32
    assert np.all(np.abs(rounded - values) <= np.abs(values) * 2.0**-8)
