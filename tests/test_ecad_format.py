"""ECAD's schedule JSON: import, export, auto-detection and `ditaccel schedule convert`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditaccel.caching import CacheSchedule, apply_schedule, presets, schedule_macs
from ditaccel.caching.ecad_format import to_ecad_dict
from ditaccel.cli import main
from ditaccel.errors import ScheduleError
from ditaccel.testing.replicas import build_pipeline, build_transformer, call_kwargs

DATA = Path(__file__).resolve().parent / "data"


def _pixart_file() -> tuple[str, np.ndarray]:
    """An ECAD-format file for the 3-block PixArt replica, 4 steps, written out by hand."""
    t, f = True, False
    cells = {  # step -> block -> (attn1, attn2, ff)
        0: [(t, t, t), (t, t, t), (t, t, t)],
        1: [(f, t, f), (t, f, t), (f, f, f)],
        2: [(t, f, f), (f, f, f), (f, t, t)],
        3: [(f, f, t), (t, t, f), (f, t, f)],
    }
    d = {
        "cache_schedule": {
            "num_blocks": 3, "num_inference_steps": 4, "name": "hand-written",
            "attributes": {"num_affected_steps": 3},
            "schedule": {f"{s:03}": {str(b): dict(zip(("attn1", "attn2", "ff"), c, strict=True))
                                     for b, c in enumerate(blocks)} for s, blocks in cells.items()},
        },
        "config": {},
        "metrics": {"by_inference_step": {f"{s:03}": {"flops": 2 * (100 + s), "macs": 100 + s} for s in range(4)},
                    "total_macs": 406, "latency": {"avg": 84.09104492187501, "gpu": "NVIDIA RTX A6000"}},
    }
    return json.dumps(d, indent=4), np.array([cells[s] for s in range(4)], dtype=bool)


def _flux_file() -> tuple[str, np.ndarray]:
    """ECAD-format file for the FLUX replica (2 double + 2 single blocks), 3 steps, FLUX naming."""
    rng = np.random.default_rng(0)
    bits = rng.random((3, 4, 3)) < 0.5
    bits[0] = True
    names = [("0", ("full_attn", "full_ff", "full_ff_context")), ("1", ("full_attn", "full_ff", "full_ff_context")),
             ("single_0", ("single_attn", "single_proj_mlp", "single_proj_out")),
             ("single_1", ("single_attn", "single_proj_mlp", "single_proj_out"))]
    d = {
        "cache_schedule": {
            "num_blocks": 2, "num_inference_steps": 3, "name": "flux-hand", "attributes": {},
            "schedule": {f"{s:03}": {k: {c: bool(bits[s, b, i]) for i, c in enumerate(comps)}
                                     for b, (k, comps) in enumerate(names)} for s in range(3)},
            "num_single_blocks": 2,
        },
        "config": {"height": 256, "width": 256, "guidance_scale": 5},
        "metrics": {},
    }
    return json.dumps(d, indent=4), bits


def test_pixart_ecad_file_round_trips_bit_exactly(tmp_path):
    text, bits = _pixart_file()
    src, back = tmp_path / "ecad.json", tmp_path / "back.json"
    src.write_text(text)
    s = CacheSchedule.from_ecad(src)
    assert s.family == "pixart" and s.components == ("attn1", "attn2", "ff")
    assert np.array_equal(s.bits, bits) and s.resolution is None
    s.validate_for(build_transformer("pixart-alpha"))
    assert CacheSchedule.load(src) == s  # the ordinary loader detects the format
    s.to_ecad(back)
    assert back.read_bytes() == src.read_bytes()
    # through ditaccel's own file and back: still the same bytes
    s.save(tmp_path / "mine.json")
    CacheSchedule.load(tmp_path / "mine.json").to_ecad(tmp_path / "back2.json")
    assert (tmp_path / "back2.json").read_bytes() == src.read_bytes()


def test_flux_naming_maps_double_then_single_blocks(tmp_path):
    text, bits = _flux_file()
    (tmp_path / "f.json").write_text(text)
    s = CacheSchedule.load(tmp_path / "f.json")
    assert s.family == "flux" and s.components == ("attn", "ff|proj_mlp", "ff_context|proj_out")
    assert s.bits.shape == (3, 4, 3) and np.array_equal(s.bits, bits) and s.resolution == (256, 256)
    flux = build_transformer("flux")
    s.validate_for(flux)
    s.to_ecad(tmp_path / "back.json")
    assert (tmp_path / "back.json").read_text() == text


def test_ditaccel_schedule_exports_and_reimports(tmp_path):
    flux = build_transformer("flux")
    s = presets.fora(flux, 2, steps=5)
    s.metrics = {"quality": 0.9}
    with pytest.raises(ScheduleError, match="pass the model"):
        s.to_ecad(tmp_path / "x.json")  # 4 blocks: not FLUX.1's 19 + 38, the split is unknown
    s.to_ecad(tmp_path / "x.json", flux)
    d = json.loads((tmp_path / "x.json").read_text())
    assert d["cache_schedule"]["num_blocks"] == 2 and d["cache_schedule"]["num_single_blocks"] == 2
    assert d["cache_schedule"]["schedule"]["001"]["single_1"] == {
        "single_attn": False, "single_proj_mlp": False, "single_proj_out": False}
    assert CacheSchedule.load(tmp_path / "x.json") == s
    hunyuan = presets.fora(build_transformer("hunyuan"), 2, steps=3)
    with pytest.raises(ScheduleError, match="covers PixArt and FLUX"):
        to_ecad_dict(hunyuan)


def test_imported_schedule_runs_like_the_same_bits():
    text, _ = _pixart_file()
    imported = CacheSchedule.from_dict(json.loads(text))
    pipe = build_pipeline("pixart-alpha")
    kw = call_kwargs("pixart-alpha")
    mine = CacheSchedule(imported.bits, imported.components, "pixart")
    outs = []
    for s in (imported, mine):
        with apply_schedule(pipe, s):
            outs.append(pipe("a dog", generator=torch.Generator().manual_seed(0), **kw).images)
    with torch.no_grad():
        base = pipe("a dog", generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], base)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["cache_schedule"]["schedule"]["001"]["0"].update(custom_compute_attn={"name": "tgate"}),
     "custom compute"),
    (lambda d: d["cache_schedule"]["schedule"].pop("002"), "num_inference_steps says"),
    (lambda d: d["cache_schedule"]["schedule"]["001"]["1"].update(ff=1), "true or false"),
    (lambda d: d["cache_schedule"]["schedule"]["003"].pop("2"), "expected exactly"),
    (lambda d: d["cache_schedule"].update(num_blocks="3"), "positive integer"),
])
def test_malformed_ecad_files_are_one_line_errors(tmp_path, edit, match):
    d = json.loads(_pixart_file()[0])
    edit(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match=match) as e:
        CacheSchedule.load(tmp_path / "bad.json")
    assert "\n" not in str(e.value)


def test_rebuilt_paper_schedule_has_the_papers_macs_speedup():
    """The paper's PixArt-alpha 256 'fast' schedule: 2.68x MACs on PixArt-XL-2 geometry (ECAD's file: 2.68x)."""
    from diffusers import PixArtTransformer2DModel

    s = CacheSchedule.load(DATA / "ecad_pixart_alpha_256_fast.json")
    assert s.bits.shape == (20, 28, 3) and int(s.bits.sum()) == 598
    with torch.device("meta"):
        t = PixArtTransformer2DModel(
            sample_size=32, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
            out_channels=8, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
            norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
            use_additional_conditions=False)
    full = schedule_macs(t, presets.none(t, steps=20), 256, 256, batch=2, text_len=120)
    assert full / schedule_macs(t, s, 256, 256, batch=2, text_len=120) == pytest.approx(2.6804, abs=1e-4)
    assert CacheSchedule.from_dict(to_ecad_dict(s)) == s


def test_cli_convert_both_ways_and_generate_reads_ecad(tmp_path, capsys):
    from PIL import Image

    from ditaccel.pipeline import load_pipeline

    s = presets.fora(load_pipeline(device="cpu"), 2, steps=4)
    s.save(tmp_path / "mine.json")
    assert main(["schedule", "convert", str(tmp_path / "mine.json"), str(tmp_path / "ecad.json")]) == 0
    assert "cache_schedule" in json.loads((tmp_path / "ecad.json").read_text())
    assert main(["schedule", "convert", str(tmp_path / "ecad.json"), str(tmp_path / "again.json")]) == 0
    assert CacheSchedule.load(tmp_path / "again.json") == s
    assert main(["schedule", "convert", str(tmp_path / "ecad.json"), str(tmp_path / "again.json")]) == 2
    assert "exists" in capsys.readouterr().err
    imgs = []
    for name in ("mine", "ecad"):
        out = tmp_path / f"gen-{name}"
        assert main(["generate", "--prompt", "a large red circle in the top left", "--steps", "4",
                     "--schedule", str(tmp_path / f"{name}.json"), "--out", str(out)]) == 0
        imgs.append(np.asarray(Image.open(out / "00000.png")))
    assert np.array_equal(imgs[0], imgs[1])


def test_eval_schedule_rows_read_ecad_files(tmp_path):
    from ditaccel.evaluate import parse_methods
    from ditaccel.evaluate.methods import resolve_methods

    pipe = build_pipeline("pixart-alpha")
    s = presets.fora(pipe, 2, steps=4)
    s.to_ecad(tmp_path / "e.json")
    methods = resolve_methods(pipe, parse_methods(f"baseline,schedule:{tmp_path / 'e.json'}"), 4)
    assert np.array_equal(methods[1].schedule.bits, s.bits)
