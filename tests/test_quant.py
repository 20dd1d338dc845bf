"""QuantLinear, AdaRound, calibration, quantize_ and quantized checkpoints, on tiny replicas."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditaccel.errors import DitaccelError, QuantizedCheckpointError
from ditaccel.quant import (
    AdaRoundLinear,
    FP4DiTConfig,
    QuantLinear,
    check_kernel,
    collect_calibration,
    load_quantized,
    quantize_,
    quantize_groups,
    quantize_per_token,
    quantized_layers,
    save_quantized,
    weight_bytes,
)
from ditaccel.quant.adaround import beta_schedule, optimize_rounding, rectified_sigmoid
from ditaccel.quant.calib import calibration_from_images
from ditaccel.quant.io import CONFIG_NAME, TENSORS_NAME
from ditaccel.testing.replicas import build_pipeline, call_kwargs

FAST = {"progress": False}


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def _latents(pipe, family, prompt="a green tree"):
    return pipe(prompt, generator=_gen(), **call_kwargs(family))[0]


@pytest.fixture(scope="module")
def pixart():
    pipe = build_pipeline("pixart-alpha")
    calib = collect_calibration(pipe, ["a red fox", "a blue boat"], seeds=[0], **call_kwargs("pixart-alpha"))
    return pipe, calib


# --- QuantLinear -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["e2m1", "e3m0", "int4"])
def test_quant_linear_matches_fake_quant_and_stores_no_float_weight(fmt):
    torch.manual_seed(0)
    lin = nn.Linear(300, 64)
    q = QuantLinear.from_linear(lin, fmt, group_size=128)
    x = torch.randn(4, 7, 300)
    want = F.linear(x, quantize_groups(lin.weight.detach(), fmt, 128), lin.bias)
    assert torch.equal(q(x), want)
    names = dict(q.named_parameters()) | dict(q.named_buffers())
    assert "weight" not in names and q.qweight.dtype == torch.uint8
    assert q.qweight.shape == (64, 150)  # two codes per byte
    fp16 = 2 * lin.weight.numel()
    assert (q.qweight.numel() + q.scales.numel() * 4 + q.zeros.numel()) / fp16 <= 0.3
    assert 4.0 < q.bits_per_weight() <= 4.5


def test_quant_linear_keeps_fp32_scales_under_half():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(64, 8), "e2m1")
    scales = q.scales.clone()
    q.half()
    assert q.scales.dtype == torch.float32 and torch.equal(q.scales, scales)
    assert q.bias.dtype == torch.float16 and q.qweight.dtype == torch.uint8
    assert q(torch.randn(2, 64).half()).dtype == torch.float16


def test_quant_linear_activation_and_output_quant():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_linear(lin, "e2m1", act_format="e3m4", out_act_format="e3m4")
    x = torch.randn(3, 5, 64)
    y = q(x)
    w = q.dequantize()
    assert torch.equal(y, quantize_per_token(F.linear(quantize_per_token(x, "e3m4"), w, q.bias), "e3m4"))
    assert torch.equal(quantize_per_token(y, "e3m4"), y)  # Q/K/V leave the projection on the grid


# --- AdaRound -----------------------------------------------------------------------------


def test_rectified_sigmoid_and_beta_schedule():
    assert rectified_sigmoid(torch.tensor([-20.0, 20.0])).tolist() == [0.0, 1.0]
    betas = [beta_schedule(i, 100, 0.2) for i in range(100)]
    assert all(b is None for b in betas[:20])
    rest = betas[20:]
    assert rest[0] == pytest.approx(20.0) and rest[-1] == pytest.approx(2.0, abs=0.25)
    assert all(a >= b for a, b in zip(rest, rest[1:], strict=False))


@pytest.mark.parametrize("fmt", ["e2m1", "int4"])
def test_adaround_init_reproduces_weight_and_rounds_onto_grid(fmt):
    torch.manual_seed(0)
    lin = nn.Linear(256, 16)
    a = AdaRoundLinear(lin, fmt)
    with torch.no_grad():
        inside = (lin.weight > a.lo) & (lin.weight < a.hi)
        assert torch.allclose(a.soft_weight()[inside], lin.weight[inside], atol=1e-5)
        q = a.to_quant_linear()
        w = q.dequantize()
        assert torch.all((w >= a.lower - 1e-6) & (w <= a.lower + a.step + 1e-6))  # floor or ceil, nothing else
        assert torch.equal(quantize_groups(w, fmt, 128), w)  # exactly on the grid


def test_scale_aware_gradient_does_not_grow_with_step():
    """With V' = s * alpha, dL/dV' = dL/dW * dh/dz: no factor s (the paper's fix)."""
    torch.manual_seed(0)
    lin = nn.Linear(128, 8)
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 1, 128))  # many FP binades -> many step sizes
    a = AdaRoundLinear(lin, "e2m1")
    a.soft_weight().sum().backward()  # dL/dW = 1
    z = a.v.detach() / a.step
    sig = torch.sigmoid(z)
    h_raw = sig * 1.2 - 0.1
    dh_dz = sig * (1 - sig) * 1.2
    live = (h_raw > 0) & (h_raw < 1) & (a.lower + a.step < a.hi) & (a.lower > a.lo)
    assert live.sum() > 100 and a.step[live].max() / a.step[live].min() >= 3  # E2M1 steps span 4x
    assert torch.allclose(a.v.grad[live], dh_dz[live], rtol=1e-4, atol=1e-7)


def test_adaround_lowers_layer_error():
    torch.manual_seed(0)
    lin = nn.Linear(128, 32)
    x = torch.randn(128, 128)
    with torch.no_grad():
        ref = lin(x)
    a = AdaRoundLinear(lin, "e2m1")

    def loss():
        return (a(x) - ref).pow(2).sum(-1).mean()

    optimize_rounding([a], loss, iters=100, lr=1e-3)
    rtn = QuantLinear.from_linear(lin, "e2m1")
    with torch.no_grad():
        assert (a.to_quant_linear()(x) - ref).pow(2).mean() < (rtn(x) - ref).pow(2).mean()


def test_adaround_lowers_block_mse_on_replica(pixart):
    pipe, calib = pixart
    tr = build_pipeline("pixart-alpha").transformer
    rep = quantize_(tr, FP4DiTConfig(iters=150, lr=1e-3, acts="none", **FAST), calib=calib)
    assert set(rep.block_mse) == {f"transformer_blocks.{i}" for i in range(3)}
    for b in rep.block_mse:
        assert rep.block_mse[b] < rep.block_mse_rtn[b], b
    assert rep.mean_block_mse < rep.mean_block_mse_rtn


# --- quantize_ ----------------------------------------------------------------------------


def test_quantize_keeps_embeddings_and_final_layer_and_uses_e3m0_before_gelu():
    tr = build_pipeline("pixart-alpha").transformer
    rep = quantize_(tr, FP4DiTConfig(adaround=False, acts="e3m4"))
    q = quantized_layers(tr)
    assert all(isinstance(tr.get_submodule(n), nn.Linear) for n in
               ("proj_out", "adaln_single.linear", "caption_projection.linear_1"))
    assert not any(n.startswith(("adaln_single", "caption_projection", "proj_out")) for n in q)
    assert rep.layer_formats["transformer_blocks.0.ff.net.0.proj"] == "e3m0"
    assert rep.layer_formats["transformer_blocks.0.ff.net.2"] == "e2m1"
    assert q["transformer_blocks.0.attn1.to_q"].out_act_format == "e3m4"
    assert q["transformer_blocks.0.ff.net.2"].out_act_format is None
    assert all(m.act_format == "e3m4" for m in q.values())


def test_flux_and_hunyuan_keep_patterns_are_top_level():
    flux = build_pipeline("flux").transformer
    rep = quantize_(flux, FP4DiTConfig(adaround=False))
    assert isinstance(flux.proj_out, nn.Linear)  # final layer kept
    assert rep.layer_formats["single_transformer_blocks.0.proj_out"] == "e2m1"  # a block layer: quantized
    assert rep.layer_formats["single_transformer_blocks.0.proj_mlp"] == "e3m0"
    assert not any(n.startswith(("x_embedder", "context_embedder", "time_text_embed", "norm_out"))
                   for n in rep.layer_formats)
    hy = build_pipeline("hunyuan").transformer
    rep = quantize_(hy, FP4DiTConfig(adaround=False))
    assert not any(n.startswith(("time_extra_emb", "text_embedder", "pos_embed", "norm_out", "proj_out"))
                   for n in rep.layer_formats)
    assert any(n.startswith("blocks.") for n in rep.layer_formats)


def test_auto_picks_a_candidate_per_layer(pixart):
    _, calib = pixart
    tr = build_pipeline("pixart-alpha").transformer
    rep = quantize_(tr, FP4DiTConfig(weights="auto", iters=0, acts="none", **FAST), calib=calib)
    assert set(rep.layer_formats.values()) <= {"e2m1", "e1m2", "e3m0", "int4"}
    assert len(rep.layer_formats) == len(quantized_layers(tr))


def test_quantize_errors_are_one_line():
    tr = build_pipeline("pixart-alpha").transformer
    for make in (
        lambda: quantize_(tr, FP4DiTConfig()),  # AdaRound without calibration data
        lambda: FP4DiTConfig(weights="fp5"),
        lambda: FP4DiTConfig(acts="e5m10"),
        lambda: FP4DiTConfig(keep=("(",)),
        lambda: check_kernel("torchao-fp8") if not torch.cuda.is_available() else check_kernel("nope"),
    ):
        with pytest.raises(DitaccelError) as ei:
            make()
        assert "\n" not in str(ei.value)
    quantize_(tr, FP4DiTConfig(adaround=False))
    with pytest.raises(DitaccelError, match="already quantized"):
        quantize_(tr, FP4DiTConfig(adaround=False))


# --- calibration --------------------------------------------------------------------------


def test_calibration_records_every_step_with_cfg(pixart):
    _, calib = pixart
    steps = call_kwargs("pixart-alpha")["num_inference_steps"]
    assert len(calib) == steps  # PixArt: one CFG-batched call per step
    assert calib.num_samples == steps * 2 * 2  # 2 prompts x (cond + uncond)
    ts = [float(k["timestep"][0]) for _, k in calib.records]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == steps  # the sampler's own trajectory
    flux = build_pipeline("flux")
    fc = collect_calibration(flux, ["a red fox"], seeds=[0, 1], **call_kwargs("flux"))
    steps = call_kwargs("flux")["num_inference_steps"]
    assert len(fc) == 2 * steps  # true CFG: a cond and an uncond call per step (both seeds in one batch)
    assert fc.num_samples == 2 * 2 * steps


def test_calibration_from_real_images(pixart):
    pipe, _ = pixart
    img = (torch.rand(16, 16, 3, generator=_gen()) * 255).to(torch.uint8).numpy()
    cal = calibration_from_images(pipe, [img], ["a red fox"], **call_kwargs("pixart-alpha"))
    assert len(cal) == call_kwargs("pixart-alpha")["num_inference_steps"]
    x0, x1 = (a[0] if a else k["hidden_states"] for a, k in (cal.records[0], cal.records[-1]))
    assert x0.shape == (2, 4, 8, 8) and torch.equal(x0[0], x0[1])  # same noised latent for cond/uncond
    assert not torch.equal(x0, x1)


# --- save / load --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["pixart-alpha", "pixart-sigma", "hunyuan", "flux", "sd3"])
def test_quantize_save_load_generate_bitwise(family, tmp_path):
    pipe = build_pipeline(family)
    calib = collect_calibration(pipe, ["a red fox"], seeds=[0], **call_kwargs(family))
    ref = _latents(pipe, family)
    quantize_(pipe.transformer, FP4DiTConfig(iters=5, acts="e3m4", **FAST), calib=calib)
    out = _latents(pipe, family)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)
    stats = save_quantized(pipe.transformer, tmp_path, FP4DiTConfig())
    assert 4.0 < stats["bits_per_weight"] <= 6.0  # tiny replicas: one scale per <=128 inputs
    fresh = build_pipeline(family)
    fresh.transformer = None  # no full-precision weights at all
    load_quantized(tmp_path, fresh)
    assert torch.equal(_latents(fresh, family), out)
    other = build_pipeline(family, seed=0)  # or into a pipeline that has the fp transformer
    load_quantized(tmp_path, other)
    assert torch.equal(_latents(other, family), out)
    assert not any(isinstance(m, nn.Linear) and n in quantized_layers(pipe.transformer)
                   for n, m in other.transformer.named_modules())


def test_loaded_weight_memory_is_packed(tmp_path):
    """Quantized layers hold 4.25 bits/weight in memory after loading (no float copy)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(sample_size=4, num_layers=4, attention_head_dim=64, num_attention_heads=4,
                                  in_channels=4, out_channels=8, cross_attention_dim=256, caption_channels=32,
                                  norm_type="ada_norm_single", use_additional_conditions=False).eval()
    names = [n for n, m in tr.named_modules() if isinstance(m, nn.Linear) and n.startswith("transformer_blocks")]
    fp16 = sum(2 * tr.get_submodule(n).weight.numel() for n in names)
    quantize_(tr, FP4DiTConfig(adaround=False))
    save_quantized(tr, tmp_path)
    tr2 = load_quantized(tmp_path, PixArtTransformer2DModel.from_config(tr.config))
    q = quantized_layers(tr2)
    held = sum(weight_bytes(m) - (m.bias.numel() * 4 if m.bias is not None else 0) for m in q.values())
    assert set(q) == set(names)
    assert held / fp16 == pytest.approx(4.25 / 16)


def _saved(tmp_path):
    pipe = build_pipeline("pixart-alpha")
    quantize_(pipe.transformer, FP4DiTConfig(adaround=False))
    save_quantized(pipe.transformer, tmp_path)
    return tmp_path


def _one_line_error(path, target):
    with pytest.raises(QuantizedCheckpointError) as ei:
        load_quantized(path, target)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


def test_bad_folders_give_one_line_errors(tmp_path):
    d = _saved(tmp_path / "q")
    fresh = lambda family="pixart-alpha": build_pipeline(family)  # noqa: E731
    assert "does not exist" in _one_line_error(tmp_path / "nowhere", fresh())
    # another model family, then the same family with another config
    assert "PixArtTransformer2DModel" in _one_line_error(d, fresh("flux"))
    from diffusers import PixArtTransformer2DModel

    cfg = dict(fresh().transformer.config)
    cfg["num_layers"] = 2
    assert "another" in _one_line_error(d, PixArtTransformer2DModel.from_config(cfg))
    # a truncated tensor file
    t = d / TENSORS_NAME
    data = t.read_bytes()
    t.write_bytes(data[:-50])
    assert "truncated" in _one_line_error(d, fresh())
    # a same-size but corrupt header
    t.write_bytes(b"\xff" * len(data))
    assert "damaged" in _one_line_error(d, fresh())
    t.write_bytes(data)
    load_quantized(d, fresh())  # restored: loads again
    if not torch.cuda.is_available():  # torchao kernels need a GPU: a clear one-line refusal here
        with pytest.raises(DitaccelError) as ei:
            load_quantized(d, fresh(), kernel="torchao-fp8")
        assert "\n" not in str(ei.value) and "portable" in str(ei.value)
    # a missing file
    os.remove(t)
    assert "missing" in _one_line_error(d, fresh())
    t.write_bytes(data)
    meta = json.loads((d / CONFIG_NAME).read_text())
    (d / CONFIG_NAME).write_text("{not json")
    assert "JSON" in _one_line_error(d, fresh())
    os.remove(d / CONFIG_NAME)
    assert "missing" in _one_line_error(d, fresh())
    # a tensor file that lacks one of the tensors the config names
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(t))
    del tensors["transformer_blocks.0.attn1.to_q.scales"]
    save_file(tensors, str(t))
    meta["tensors_bytes"] = t.stat().st_size
    (d / CONFIG_NAME).write_text(json.dumps(meta))
    assert "checksum" in _one_line_error(d, fresh())  # the config no longer matches its checksum
    from ditaccel._io import file_sha256, with_checksum

    meta["tensors_sha256"] = file_sha256(t)  # consistent, checksummed, but short of one tensor
    (d / CONFIG_NAME).write_text(json.dumps(with_checksum(meta)))
    assert "lacks tensor" in _one_line_error(d, fresh())


def test_chained_propagation_matches_full_capture(pixart, monkeypatch):
    """PixArt blocks chain (O(blocks) propagation); the results equal re-running the model prefix."""
    import ditaccel.quant.api as api
    from ditaccel.quant.reconstruct import chain_links, find_blocks

    pipe, calib = pixart
    links = chain_links(pipe.transformer, calib.records[0], find_blocks(pipe.transformer))
    assert set(links) == {"transformer_blocks.1", "transformer_blocks.2"}
    cfg = FP4DiTConfig(adaround=False, acts="none", **FAST)
    fast = quantize_(build_pipeline("pixart-alpha").transformer, cfg, calib=calib)
    monkeypatch.setattr(api, "chain_links", lambda *a, **k: {})
    slow = quantize_(build_pipeline("pixart-alpha").transformer, cfg, calib=calib)
    assert fast.block_mse == slow.block_mse
    hy = build_pipeline("hunyuan")
    hc = collect_calibration(hy, ["a red fox"], seeds=[0], **call_kwargs("hunyuan"))
    hl = chain_links(hy.transformer, hc.records[0], find_blocks(hy.transformer))
    assert "blocks.3" not in hl  # a long-skip block needs the full capture


def test_set_activation_quant_switches_formats():
    from ditaccel.quant import set_activation_quant

    tr = build_pipeline("pixart-alpha").transformer
    quantize_(tr, FP4DiTConfig(adaround=False, acts="e3m4"))
    set_activation_quant(tr, "e2m3")
    q = quantized_layers(tr)
    assert {m.act_format for m in q.values()} == {"e2m3"}
    assert q["transformer_blocks.1.attn2.to_k"].out_act_format == "e2m3"
    set_activation_quant(tr, "none")
    assert all(m.act_format is None and m.out_act_format is None for m in q.values())


def test_quantized_pipeline_accepts_a_cache_schedule():
    from ditaccel.caching import apply_schedule, presets

    pipe = build_pipeline("pixart-alpha")
    steps = call_kwargs("pixart-alpha")["num_inference_steps"]
    quantize_(pipe.transformer, FP4DiTConfig(adaround=False))
    ref = _latents(pipe, "pixart-alpha")
    handle = apply_schedule(pipe, presets.none(pipe, steps=steps))
    assert torch.equal(_latents(pipe, "pixart-alpha"), ref)  # all-recompute: bit-identical
    handle.remove()
    handle = apply_schedule(pipe, presets.fora(pipe, 2, steps=steps))
    cached = _latents(pipe, "pixart-alpha")
    handle.remove()
    assert torch.isfinite(cached).all() and not torch.equal(cached, ref)


def test_standalone_linear_gets_layer_reconstruction(pixart):
    """A linear outside the blocks (here the caption projection, un-kept) is fitted on its own output."""
    from ditaccel.quant import DEFAULT_KEEP

    _, calib = pixart
    tr = build_pipeline("pixart-alpha").transformer
    keep = tuple(p.replace("caption_projection|", "") for p in DEFAULT_KEEP)
    rep = quantize_(tr, FP4DiTConfig(iters=60, lr=1e-3, acts="none", keep=keep, **FAST), calib=calib)
    for name in ("caption_projection.linear_1", "caption_projection.linear_2"):
        assert isinstance(tr.get_submodule(name), QuantLinear)
        assert rep.block_mse[name] <= rep.block_mse_rtn[name]


def test_schedule_macs_unchanged_by_quantization():
    """The adapters count QuantLinear like the Linear it replaced, so search cost stays right."""
    from ditaccel.caching import presets, schedule_macs
    from ditaccel.quant import FP4DiTConfig, quantize_
    from ditaccel.testing.replicas import build_pipeline

    pipe = build_pipeline("pixart-alpha")
    sched = presets.fora(pipe, 2, steps=4)
    before = schedule_macs(pipe, sched, 16, 16, 2)
    quantize_(pipe.transformer, FP4DiTConfig(adaround=False, acts="none", progress=False))
    assert schedule_macs(pipe, sched, 16, 16, 2) == before > 0


def test_int8_rows_are_idempotent_and_close():
    from ditaccel.quant.io import int8_rows

    w = torch.randn(16, 40, generator=_gen(3)) * torch.logspace(-3, 1, 16)[:, None]
    codes, scale = int8_rows(w)
    back = codes.float() * scale[:, None]
    codes2, scale2 = int8_rows(back)
    assert torch.equal(codes, codes2) and torch.equal(scale, scale2)  # re-encoding the decoded weight is exact
    assert codes.abs().amax(dim=1).min() >= 64  # a power-of-two scale still uses at least 7 of the 8 bits
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-12).all()


@pytest.mark.parametrize("storage", ["model", "float16", "int8"])
def test_kept_storage_is_exact_on_reload_and_shrinks_the_file(storage, tmp_path):
    pipe = build_pipeline("pixart-alpha")
    fp = {n: t.clone() for n, t in pipe.transformer.state_dict().items()}
    cfg = FP4DiTConfig(adaround=False, kept_storage=storage)
    quantize_(pipe.transformer, cfg)
    kept = pipe.transformer.adaln_single.linear.weight.detach()
    if storage == "model":
        assert torch.equal(kept, fp["adaln_single.linear.weight"])
    else:  # rounded in memory to what the file holds, within that storage's precision
        assert not torch.equal(kept, fp["adaln_single.linear.weight"])
        tol = 1e-3 if storage == "float16" else 1e-2
        assert torch.allclose(kept, fp["adaln_single.linear.weight"], atol=tol * float(kept.abs().max()))
    out = _latents(pipe, "pixart-alpha")
    stats = save_quantized(pipe.transformer, tmp_path / storage, cfg)
    assert stats["kept_storage"] == storage
    fresh = build_pipeline("pixart-alpha")
    fresh.transformer = None
    load_quantized(tmp_path / storage, fresh)
    assert torch.equal(_latents(fresh, "pixart-alpha"), out)
    sizes = {}
    for s in ("model", "float16", "int8"):  # the same quantized model under each storage
        sizes[s] = save_quantized(pipe.transformer, tmp_path / f"size-{s}", cfg, kept_storage=s)["file_bytes"]
    assert sizes["int8"] < sizes["float16"] < sizes["model"]


def test_bad_kept_storage_is_refused():
    with pytest.raises(DitaccelError, match="kept_storage"):
        FP4DiTConfig(kept_storage="int3")


def test_saved_files_get_the_usual_mode(tmp_path):
    """Atomic writes go through a 0600 temp file; the result must not stay private to the owner."""
    d = _saved(tmp_path / "q")
    mask = os.umask(0)
    os.umask(mask)
    for name in (TENSORS_NAME, CONFIG_NAME):
        assert (d / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_load_image_folder_reads_captions_and_fits_the_size(tmp_path):
    import numpy as np
    from PIL import Image

    from ditaccel.quant import load_image_folder

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(d / "a.png")
    (d / "a.txt").write_text("a red fox\n")
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(d / "b.jpg")
    with pytest.raises(DitaccelError, match=r"b\.jpg has no caption"):
        load_image_folder(d, 16, 24)
    (d / "b.txt").write_text("a blue boat")
    images, captions = load_image_folder(d, 16, 24)
    assert captions == ["a red fox", "a blue boat"]
    assert all(np.asarray(i).shape == (16, 24, 3) for i in images)
    (d / "images.jsonl").write_text('{"file": "b.jpg", "prompt": "from the index"}\n')  # an index wins
    assert load_image_folder(d, 8, 8)[1] == ["from the index"]
    (d / "images.jsonl").write_text('{"name": "b.jpg"}\n')
    with pytest.raises(DitaccelError, match="line 1"):
        load_image_folder(d, 8, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DitaccelError, match="holds no images"):
        load_image_folder(empty, 8, 8)
    with pytest.raises(DitaccelError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", 8, 8)


def test_calibration_sets_add_up(pixart):
    _, calib = pixart
    both = calib + calib.subsample(2)
    assert len(both) == len(calib) + len(calib.subsample(2))
    assert both.num_samples == calib.num_samples + calib.subsample(2).num_samples
