"""One step tracker: timestep -> (step, call context), shared by the runtime, the search and the dynamic caches."""

from __future__ import annotations

import numpy as np
import torch

from ditaccel.caching.schedule import CacheSchedule, effective_bits
from ditaccel.caching.steps import StepTracker, timestep_reader


def test_tracker_counts_steps_contexts_and_new_generations() -> None:
    tr = StepTracker()
    seen = [(tr.advance(t), tr.step, tr.context) for t in (999.0, 999.0, 900.0, 900.0, 800.0, 999.0, 500.0, 700.0)]
    assert seen == [(True, 0, 0), (False, 0, 1), (False, 1, 0), (False, 1, 1), (False, 2, 0),
                    (True, 0, 0), (False, 1, 0), (True, 0, 0)]  # a larger timestep starts over
    state = tr.state()
    tr.advance(10.0)
    assert (tr.step, tr.context) == (1, 0)
    tr.restore(state)
    assert tr.state() == (0, 0, 700.0)
    tr.reset()
    assert tr.state() == (-1, 0, None) and tr.advance(700.0)


def test_timestep_reader_takes_keyword_or_position() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
            return x

    read = timestep_reader(M())
    assert read((1, torch.tensor([7.0, 7.0])), {}) == 7.0
    assert read((1,), {"timestep": 3}) == 3.0
    assert read((1,), {}) is None


def test_effective_bits_sets_only_step_zero_and_copies() -> None:
    bits = np.zeros((3, 2, 3), dtype=bool)
    eff = effective_bits(bits)
    assert eff[0].all() and not eff[1:].any() and not bits.any()
    s = CacheSchedule(bits, ("a", "b", "c"), "pixart")
    assert np.array_equal(s.effective_bits(), eff) and not s.bits.any()
    assert s.recompute_fraction() == 1 / 3


def test_runtime_handle_follows_the_tracker() -> None:
    """The runtime's handle reports the tracker's step/context, also across snapshot/restore."""
    from ditaccel.caching import apply_schedule, presets
    from ditaccel.testing.replicas import build_pipeline

    pipe = build_pipeline("pixart-alpha")
    t = pipe.transformer
    x = torch.randn(1, t.config.in_channels, 4, 4)
    enc = torch.randn(1, 4, t.config.caption_channels)
    kw = {"encoder_hidden_states": enc, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    with apply_schedule(pipe, presets.fora(pipe, 2, steps=3)) as h:
        t(x, timestep=torch.tensor([900]), **kw)
        t(x, timestep=torch.tensor([900]), **kw)
        assert (h.step, h.context) == (0, 1)
        snap = h.snapshot()
        t(x, timestep=torch.tensor([500]), **kw)
        assert (h.step, h.context) == (1, 0)
        h.restore(snap)
        assert (h.step, h.context) == (0, 1)
