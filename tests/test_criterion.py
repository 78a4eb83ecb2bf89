"""The ProxConnect++ criterion: accepts sound pairs, rejects unsound ones with the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biper.errors import BiperError
from biper.functional import signswish
from biper.quantizers import check_decomposition, check_pair, get_quantizer, synthesize_pair


@pytest.mark.parametrize("name", ["bc", "bnn++", "biper", "pc", "bnn"])
def test_registered_pairs_satisfy_the_criterion(name):
    res = check_pair(name)
    assert res.ok, res.reason
    assert res.backward["at_w"]
    assert np.all(np.diff(res.p) >= -1e-9)  # the P found is monotone


def test_biper_staircase_is_found_and_b_prime_at_p_vanishes():
    omega = 20.0
    res = check_pair(get_quantizer("biper", omega0=omega))
    inside = np.abs(np.sin(omega * res.w)) > 1e-3  # away from the jumps
    staircase = math.pi / (2 * omega) + (math.pi / omega) * np.floor(omega * res.w / math.pi)
    np.testing.assert_allclose(res.p[inside], staircase[inside], atol=1e-6)
    assert res.backward == {"at_w": True, "at_p": False}  # B'(P(w)) = omega0 cos(pi/2 + k pi) = 0


def test_bnn_pp_and_bc_are_sound_in_both_readings():
    assert check_pair("bnn++").backward == {"at_w": True, "at_p": True}
    assert check_pair("bc").backward == {"at_w": True, "at_p": True}


def test_periodic_forward_with_identity_backward_is_rejected():
    # BiPer's square wave trained with a plain STE (B = identity) would need a decreasing P
    q = get_quantizer("biper", omega0=5.0)
    res = check_decomposition(q.forward_fn, lambda w: w)
    assert not res.ok
    assert "P would have to decrease" in res.reason


def test_unattainable_forward_values_are_rejected():
    res = check_decomposition(torch.sign, torch.tanh)  # tanh never reaches +-1
    assert not res.ok and "is not attained by B" in res.reason


def test_explicit_non_monotone_p_is_rejected():
    res = check_decomposition(lambda w: -w, lambda w: w, P=lambda w: -w)
    assert not res.ok and res.reason.startswith("P is not monotone")


def test_backward_that_is_not_b_prime_is_rejected():
    res = check_decomposition(torch.sign, lambda w: w, backward=lambda w: 2 * torch.ones_like(w))
    assert not res.ok and "not B' evaluated at w" in res.reason


def test_synthesized_pair_is_sound_and_differentiates_b():
    q = synthesize_pair(lambda w: torch.clamp(3 * w, -1, 1), lambda x: signswish(x, 4.0), name="ss_of_clamp")
    assert check_pair(q).ok
    w = torch.linspace(-1, 1, 101, dtype=torch.float64, requires_grad=True)
    q(w).sum().backward()
    b = 4.0 * w.detach()
    expected = 4.0 * (2 - b * torch.tanh(b / 2)) / (1 + torch.cosh(b))
    torch.testing.assert_close(w.grad, expected)
    q_at_p = synthesize_pair(lambda w: torch.clamp(3 * w, -1, 1), lambda x: signswish(x, 4.0), backward_at="p")
    w.grad = None
    q_at_p(w).sum().backward()
    bp = 4.0 * torch.clamp(3 * w.detach(), -1, 1)
    torch.testing.assert_close(w.grad, 4.0 * (2 - bp * torch.tanh(bp / 2)) / (1 + torch.cosh(bp)))


def test_synthesizer_refuses_non_monotone_p():
    with pytest.raises(BiperError, match="P must be nondecreasing"):
        synthesize_pair(torch.sin, torch.tanh)
