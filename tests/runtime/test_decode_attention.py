"""Decode-only attention in exact arithmetic: a run equals its single launches bit for bit, and both
equal the fitted formula on the features up to the coefficients' rounding."""
import numpy as np
import pytest

from simulator.runtime.decode_attention import QUANTUM_MS, DecodeAttention, exact
from simulator.runtime.features import ATTENTION_FEATURES, AttentionShape, batch_attention_features

COLUMN = {name: j for j, name in enumerate(ATTENTION_FEATURES)}
GROUPED = AttentionShape(q_heads=32, kv_heads=8, num_sms=132)  # FA2 may split the KV (llama-3-8b's shard)
UNGROUPED = AttentionShape(q_heads=32, kv_heads=32, num_sms=132)  # never splits; many blocks per sequence


def coefficients(rng, rows: int, negative: str = "") -> np.ndarray:
    """Random coefficients on every decode feature of every row (the additive one first, then branches)."""
    coef = np.zeros((rows, len(ATTENTION_FEATURES)))
    for name in ("launch", "num_decodes", "decode_kv_tokens", "sm_load_tokens", "unsplit_decode_critical",
                 "split_decode_critical", "split_decode_blocks", "decode_list_bound"):
        coef[:, COLUMN[name]] = rng.uniform(1e-7, 1e-4, rows)
    if negative == "max-min terms":  # c * max(x, y) = min(c x, c y) when c < 0
        coef[:, COLUMN["sm_load_tokens"]] *= -0.05
        coef[:, COLUMN["split_decode_critical"]] *= -0.05
    elif negative == "clamped":  # a launch constant so negative that short contexts predict below zero
        coef[0, COLUMN["launch"]] = -0.05
    return coef


def formula_ms(coef: np.ndarray, kv: np.ndarray, shape: AttentionShape) -> float:
    """The fitted model on the launch's features, unrounded: additive row + max over branch rows."""
    x = np.asarray(batch_attention_features(np.ones_like(kv), kv, shape))
    t = coef[0] @ x + (max(row @ x for row in coef[1:]) if len(coef) > 1 else 0.0)
    return max(t, 0.0)


CASES = [(shape, n, longest) for shape in (GROUPED, UNGROUPED) for n in (1, 3, 12, 40, 300)
         for longest in (1, 127, 128, 129, 700, 5000)]


@pytest.mark.parametrize("negative", ["", "max-min terms", "clamped"])
@pytest.mark.parametrize("rows", [1, 3])
def test_runs_equal_single_launches_bit_for_bit(negative, rows):
    rng = np.random.default_rng(11)
    coef = coefficients(rng, rows, negative)
    clamped = split = 0
    for shape, n, longest in CASES:
        attention = DecodeAttention(coef, shape)
        kv = rng.integers(0, longest, size=n)
        kv[0] = longest - 1
        assert attention.run_ms(kv, 0).shape == (0,)
        for steps in (1, 5, 130, 300):
            run = attention.run_ms(kv, steps)
            singles = np.array([attention.ms(kv + k) for k in range(steps)])
            np.testing.assert_array_equal(run, singles)
            np.testing.assert_allclose(singles[[0, -1]], [formula_ms(coef, kv, shape),
                                                          formula_ms(coef, kv + steps - 1, shape)],
                                       rtol=1e-7, atol=1e-12)
            clamped += int((run == 0).sum())
            split += len(attention._segments(n, longest, steps)) > 1
    assert split > 0  # some runs crossed a KV block where FA2's split choice changes
    assert (clamped > 0) == (negative == "clamped")


def test_rounded_coefficients_are_multiples_of_the_quantum():
    for c in (1.0339292732771875e-06, 2.9520812549614295e-08, 0.009823209202698076, -3e-7):
        q = exact(c)
        assert abs(q - c) <= QUANTUM_MS / 2
        assert (q / QUANTUM_MS).is_integer()
