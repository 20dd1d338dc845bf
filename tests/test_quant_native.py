"""The native CPU kernels (``ditaccel.quant.native``): bit-identical to the eager torch path they replace,
on hard inputs, in every vector build, through ``QuantLinear`` and a whole quantized model; and the
eager fallback when no kernel can be built."""

import copy
import platform
import shutil

import pytest
import torch
from torch import nn

from ditaccel.quant import FP4DiTConfig, QuantLinear, native, quantize_, quantize_per_token
from ditaccel.quant.formats import parse_format, per_token_levels
from ditaccel.quant.linear import group_projections
from ditaccel.testing.replicas import build_transformer, transformer_inputs

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels: {native.unavailable_reason()}")

ACT_FORMATS = ["e3m4", "e2m3", "e4m3", "e2m1", "int8", "int6"]


def _hard_rows(cols: int = 96) -> torch.Tensor:
    """Rows of every magnitude (1e-38 .. 3e38), all-zero rows, subnormals, a huge value, ties, signed zeros."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, cols, generator=g) * torch.logspace(-36, 36, 40).unsqueeze(1)
    x[0] = 0.0
    x[1] = -0.0
    x[2, :7] = torch.tensor([1e-45, -1e-45, 1e-40, 3e-39, -2e-42, 0.0, -0.0])  # subnormals only
    x[2, 7:] = 0.0
    x[3, 5] = 3.4e38  # the row absmax near float32's max
    x[4] = torch.arange(cols) * 0.125 - 6.0  # grid points and midpoints after scaling
    x[5] = torch.nextafter(x[4], x[4] + 1)
    return x


def _eager(fn, *args, **kwargs):
    with native.enabled(False):
        return fn(*args, **kwargs)


@needs_native
@pytest.mark.parametrize("name", ACT_FORMATS)
def test_rounding_is_bit_identical_to_the_eager_path(name):
    x = _hard_rows()
    assert torch.equal(quantize_per_token(x, name), _eager(quantize_per_token, x, name))
    lv, sc = per_token_levels(x, parse_format(name))
    lv0, sc0 = _eager(per_token_levels, x, parse_format(name))
    assert torch.equal(lv, lv0) and torch.equal(sc, sc0) and sc.shape == (40, 1)
    for shape in [(3, 5, 33), (1, 1), (7, 1)]:  # odd widths (vector tails), one-wide rows
        y = torch.randn(*shape) * 7
        assert torch.equal(quantize_per_token(y, name), _eager(quantize_per_token, y, name))


@needs_native
@pytest.mark.parametrize("name", ["e3m4", "int8"])
def test_rounding_keeps_the_eager_destinations_and_dtypes(name):
    x = _hard_rows()
    want = _eager(quantize_per_token, x, name)
    keep = x.clone()
    out = torch.empty_like(x)
    assert quantize_per_token(x, name, out=out) is out and torch.equal(out, want) and torch.equal(x, keep)
    v = x._version
    y = quantize_per_token(x, name, inplace=True)
    assert y is x and torch.equal(x, want) and x._version > v  # in place, and autograd is told
    t = keep.t()  # not contiguous: a copy is rounded, the input stays
    assert torch.equal(quantize_per_token(t, name), _eager(quantize_per_token, t, name)) and torch.equal(t, keep.t())
    for dtype in (torch.bfloat16, torch.float16):
        h = (keep.clamp(-6e4, 6e4)).to(dtype)
        r = quantize_per_token(h, name)
        assert r.dtype == dtype and torch.equal(r, _eager(quantize_per_token, h, name))
    g = torch.randn(4, 8, requires_grad=True)  # gradients: the eager path (autograd sees every op)
    assert quantize_per_token(g, name).requires_grad


@needs_native
def test_rounding_of_inf_and_nan_rows_matches_the_eager_nan_pattern():
    x = torch.randn(4, 40)
    x[0, 3] = float("inf")
    x[1, 5] = float("nan")
    x[2, 0] = float("-inf")
    for name in ("e3m4", "int8"):
        a, b = quantize_per_token(x, name), _eager(quantize_per_token, x, name)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
        assert not a[3].isnan().any()  # a finite row is unaffected


@needs_native
@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0", "int4", "int4sym"])
@pytest.mark.parametrize("shape", [(384, 512, 128), (5, 64, 32), (3, 48, 48), (2, 16, 16)])
def test_decode_is_bit_identical_to_the_pair_table(fmt, shape):
    out_f, in_f, group = shape  # group 48: 24 bytes, a vector body and a scalar tail
    m = QuantLinear.from_linear(nn.Linear(in_f, out_f), fmt, group)
    assert torch.equal(m.dequantize(), _eager(m.dequantize))
    assert m._native_weight(native.library()) is not None


@needs_native
@pytest.mark.parametrize("acts", [None, "e3m4", "e2m3", "int8"])
@pytest.mark.parametrize("weights", ["e2m1", "int4"])
def test_quant_linear_forward_is_bit_identical(weights, acts):
    m = QuantLinear.from_linear(nn.Linear(128, 96), weights, 64, act_format=acts, out_act_format=acts)
    for shape in [(2, 128), (3, 7, 128), (300, 128)]:  # 300 rows: the int8 GEMM path for int8 / e2m3
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(m(x), _eager(m, x))
    odd = QuantLinear.from_linear(nn.Linear(40, 8), weights, 32, act_format=acts)  # partial group: eager decode
    x = torch.randn(3, 40)
    assert odd._native_weight(native.library()) is None and torch.equal(odd(x), _eager(odd, x))


@needs_native
@pytest.mark.parametrize("acts", ["e3m4", "none"])
def test_quantized_model_is_bit_identical_with_grouped_projections(acts):
    t = build_transformer("pixart-alpha")
    quantize_(t, FP4DiTConfig(weights="e2m1", acts=acts, group_size=16, adaround=False, progress=False))
    assert group_projections(t) > 0
    assert all(m._native_weight(native.library()) is not None for m in t.modules() if isinstance(m, QuantLinear))
    for batch in (1, 4):
        kw = transformer_inputs("pixart-alpha", t, batch=batch)
        with torch.no_grad():
            assert torch.equal(t(**kw)[0], _eager(lambda: t(**kw)[0]))  # noqa: B023 (called at once)


def _other_build(tmp_path, flags):
    cc = native._compiler()
    path = tmp_path / "k.so"
    err = native._compile(cc, native._FLAGS + flags, path)
    assert err is None, err
    return native._load(path)


def _has_avx2() -> bool:
    try:
        return " avx2" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("gcc") or not _has_avx2(),
                    reason="x86 vector builds need gcc on an x86-64 CPU with AVX2")
@needs_native
@pytest.mark.parametrize("flags,simd", [(["-mavx2", "-mfma", "-mno-avx512f"], 256), (["-mno-avx2", "-mno-avx"], 0)])
def test_every_vector_build_gives_the_same_values(tmp_path, monkeypatch, flags, simd):
    """This machine's build is tested above; the AVX2 and plain builds (other CPUs) must agree too."""
    monkeypatch.setenv("CC", "gcc")
    lib = _other_build(tmp_path, flags)
    assert lib.dq_simd() == simd
    monkeypatch.setattr(native._STATE, "lib", lib)
    for fmt in ("e2m1", "int4"):
        m = QuantLinear.from_linear(nn.Linear(112, 24), fmt, 16)  # 8 bytes a group: one AVX2 step, no tail
        w = QuantLinear.from_linear(nn.Linear(96, 24), fmt, 48)  # 24 bytes: vector steps and a tail
        for q in (m, w):
            assert torch.equal(q.dequantize(), _eager(q.dequantize))
    x = _hard_rows(33)
    for name in ("e3m4", "int8"):
        assert torch.equal(quantize_per_token(x, name), _eager(quantize_per_token, x, name))


def test_without_a_compiler_the_eager_path_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    lib, reason = native._build()
    assert lib is None and "no C compiler" in reason
    monkeypatch.setenv(native.ENABLE_ENV, "0")
    assert native._build() == (None, f"{native.ENABLE_ENV}=0")
    monkeypatch.setattr(native._STATE, "lib", None)  # as if nothing could be built
    monkeypatch.setattr(native._STATE, "tried", True)
    assert native.library() is None
    m = QuantLinear.from_linear(nn.Linear(64, 32), "e2m1", 32, act_format="e3m4")
    x = torch.randn(5, 64)
    y = m(x)
    assert y.shape == (5, 32) and torch.isfinite(y).all() and torch.equal(y, _eager(m, x))


@needs_native
def test_a_failed_compile_is_reported_and_the_library_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", "gcc" if shutil.which("gcc") else native._compiler())
    lib, reason = native._build()
    assert lib is not None and reason is None
    built = sorted(tmp_path.glob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert native._build()[0] is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not list(tmp_path.glob("*.tmp*")) and not [p for p in tmp_path.iterdir() if p.is_dir()]
    monkeypatch.setattr(native, "_SOURCE", "this is not C")
    lib, reason = native._build()
    assert lib is None and reason.startswith("could not build the native kernels")


@needs_native
def test_compiled_layers_on_the_cpu_take_the_native_kernels(monkeypatch):
    """Bit-identical and measured faster than the compiled rounding (bench/results/quant_speed.md)."""
    from ditaccel.quant import fused
    from ditaccel.quant.kernels import compile_linears

    m = QuantLinear.from_linear(nn.Linear(64, 32), "e2m1", 32, act_format="e3m4", out_act_format="e3m4")
    x = torch.randn(6, 64)
    want = m(x)
    compile_linears(m)
    monkeypatch.setattr(fused, "_COMPILED", {})
    monkeypatch.setattr(fused.torch, "compile", lambda *a, **k: pytest.fail("compiled on the CPU"))
    assert m.compiled is not None and torch.equal(m(x), want)


@needs_native
def test_a_deep_copied_layer_decodes_its_own_buffers():
    """The decode's arguments are kept between calls: a copy must not read the original's memory."""
    m = QuantLinear.from_linear(nn.Linear(64, 32), "e2m1", 32)
    x = torch.randn(3, 64)
    m(x)  # the arguments are built
    c = copy.deepcopy(m)
    c.scales.mul_(2)  # the copy's own storage changes, the original's does not
    assert torch.equal(c(x), _eager(c, x)) and not torch.equal(c(x), m(x))
    c.load_state_dict({k: v.clone() for k, v in m.state_dict().items()})
    assert torch.equal(c(x), m(x))


@needs_native
def test_rows_split_over_threads_give_the_same_values():
    x = torch.randn(300, 128) * torch.rand(300, 1) * 9  # 38400 values: over native.PARALLEL_MIN
    m = QuantLinear.from_linear(nn.Linear(256, 160), "int4", 32)  # 40960 weights
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert x.numel() >= native.PARALLEL_MIN and m.out_features * m.in_features >= native.PARALLEL_MIN
        for name in ("e3m4", "int8"):
            assert torch.equal(quantize_per_token(x, name), _eager(quantize_per_token, x, name))
        assert torch.equal(m.dequantize(), _eager(m.dequantize))
    finally:
        torch.set_num_threads(before)


@needs_native
def test_a_bias_that_needs_grad_keeps_the_rounding_visible_to_autograd():
    m = QuantLinear.from_linear(nn.Linear(32, 16), "e2m1", 32, act_format="e3m4", out_act_format="e3m4")
    m.bias.requires_grad_(True)
    x = torch.randn(3, 32)
    y = m(x)
    assert y.requires_grad and y.grad_fn is not None and torch.equal(y, _eager(m, x))


@needs_native
def test_a_damaged_cached_library_is_built_again(monkeypatch, tmp_path):
    """A torn .so must never reach dlopen (it can kill the process): its sha256 sidecar no longer matches,
    so it is rebuilt under the same name."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    loads = []
    monkeypatch.setattr(native, "_load", lambda path: loads.append(path.read_bytes()) or "lib")  # no dlopen here
    assert native._build() == ("lib", None)
    (built,) = tmp_path.glob("*.so")
    good = built.read_bytes()
    built.write_bytes(good[: len(good) // 2])
    assert native._build() == ("lib", None) and built.read_bytes() == good and loads[-1] == good
    built.with_name(built.name + ".sha256").unlink()  # no sidecar (e.g. an older build): rebuilt as well
    assert native._build() == ("lib", None) and native._intact(built) and loads[-1] == good


def test_a_half_layer_takes_float32_input_as_the_eager_path_does():
    m = QuantLinear.from_linear(nn.Linear(64, 32), "e2m1", 32, act_format="e3m4").half()
    x = torch.randn(5, 64)
    y = m(x)
    assert y.dtype == torch.float32 and torch.equal(y, _eager(m, x))
