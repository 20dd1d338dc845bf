"""The dominance report's "matched" verdict: a peer schedule bit-identical to a frontier point."""

from __future__ import annotations

import numpy as np

from ditaccel.caching import presets
from ditaccel.evaluate import MethodResult
from ditaccel.evaluate.report import dominance, dominance_markdown, schedule_key
from ditaccel.testing.replicas import build_pipeline


def _row(label: str, speed: float, adh: float, psnr: float, group: str | None = None, key: str | None = None):
    return MethodResult(label=label, kind="schedule" if group or key else "peer", name=label, speedup=speed,
                        group=group, metrics={"adherence": adh, "psnr": psnr}, schedule_key=key)


def test_schedule_key_ignores_step_zero_and_tells_schedules_apart():
    pipe = build_pipeline("pixart-alpha")
    fora = presets.fora(pipe, 2, 10).bits
    other = presets.fora(pipe, 3, 10).bits
    zero = fora.copy()
    zero[0] = False  # the runtime computes step 0 whatever the bits say
    assert schedule_key(fora) == schedule_key(zero)
    assert schedule_key(fora) != schedule_key(other)
    assert schedule_key(fora) != schedule_key(np.concatenate([fora, fora]))  # another step count
    assert schedule_key(fora, "residual") != schedule_key(fora)  # the same bits skipping the block stack
    assert schedule_key(fora, "residual") == schedule_key(zero, "residual")


def test_a_bit_identical_peer_is_matched_not_dominated_nor_undominated():
    g = "ECAD frontier (runs/x)"
    ecad = [_row("ECAD point p14", 4.15, 0.52, 20.13, g, "k14"), _row("ECAD point p15", 4.26, 0.5, 19.99, g, "k15")]
    # FORA(10) runs the very schedule of p15; measured a little faster, so plain dominance says "not dominated"
    peers = [_row("FORA, recompute every 10 steps", 4.36, 0.5, 19.99, key="k15"),
             _row("FORA, recompute every 8 steps", 3.5, 0.35, 18.77, key="k8"),
             _row("FirstBlockCache 0.8", 4.2, 0.7, 23.7)]
    doms = {d.peer.label: d for d in dominance([*ecad, *peers])}
    m = doms["FORA, recompute every 10 steps"]
    assert m.matched.label == "ECAD point p15" and not m.dominated and m.speed_ratio is None
    assert doms["FORA, recompute every 8 steps"].by.label == "ECAD point p15"  # other keys: judged as before
    assert doms["FirstBlockCache 0.8"].matched is None and not doms["FirstBlockCache 0.8"].dominated
    md = dominance_markdown(list(doms.values()))
    assert "**matched**: the frontier holds this same schedule (ECAD point p15)" in md
    assert "1 of 3 peer points dominated; 1 matched" in md
