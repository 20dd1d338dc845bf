"""The fast portable path: bit-exact rounding from exponent bits, pair-table decode, shared
activation quantization, the compiled kernel, and ``auto`` over FP and INT."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditaccel.errors import DitaccelError
from ditaccel.quant import (
    FP4DiTConfig,
    QuantLinear,
    collect_calibration,
    native,
    quantize_,
    quantize_per_token,
)
from ditaccel.quant import linear as linear_mod
from ditaccel.quant.api import _auto_assignments, _auto_errors
from ditaccel.quant.formats import FPFormat, _fp_round_normalised, decode, fp_step, int8_digits, parse_format
from ditaccel.quant.kernels import apply_kernel, check_kernel, compile_linears
from ditaccel.quant.linear import INT_GEMM_MIN_ROWS, _shared_act_quant, weight_bytes
from ditaccel.testing.quant_reference import log2_round, log2_step, previous_per_token
from ditaccel.testing.replicas import build_pipeline, call_kwargs

FP_FORMATS = ["e2m1", "e1m2", "e3m0", "e2m3", "e3m4", "e4m3"]


@pytest.fixture
def no_native():
    """The eager torch path only: on the CPU compiled layers take the native kernels where they are built."""
    with native.enabled(False):
        yield


def _hard_values(fmt: FPFormat, dtype: torch.dtype) -> torch.Tensor:
    """Grid points, midpoints (ties), powers of two and their float neighbours, both signs, zero."""
    g = fmt.magnitudes().to(dtype)
    base = torch.cat([g, (g[1:] + g[:-1]) / 2, 2.0 ** torch.arange(-12, 10, dtype=dtype), torch.zeros(1, dtype=dtype)])
    near = torch.cat([base, torch.nextafter(base, base + 1), torch.nextafter(base, base - 1)])
    return torch.cat([near, -near])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FP_FORMATS)
def test_bit_rounding_is_identical_to_log2_rounding(name, dtype):
    fmt = parse_format(name)
    g = torch.Generator().manual_seed(0)
    y = torch.cat([_hard_values(fmt, dtype), torch.randn(200_000, generator=g, dtype=dtype) * fmt.int_max / 3,
                   (torch.rand(200_000, generator=g, dtype=dtype) * 2 - 1) * fmt.int_max])
    assert torch.equal(_fp_round_normalised(y, fmt), log2_round(y, fmt))


def test_fp_step_reads_the_exact_exponent():
    fmt = parse_format("e2m1")
    y = torch.tensor([0.0, 1.0, 1.99, 2.0, -3.0, 4.0, 7.5, 8.0, 12.0], dtype=torch.float64)
    assert fp_step(y, fmt).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    # one ulp below 8 lies in the [4, 8) binade: step 2; log2 rounds up to 3 there in float64 and said 4
    below8 = torch.nextafter(torch.tensor([8.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert fp_step(below8, fmt).item() == 2.0 and log2_step(below8, fmt).item() == 4.0
    with pytest.raises(DitaccelError, match="float32 or float64"):
        fp_step(torch.ones(2, dtype=torch.float16), fmt)


@pytest.mark.parametrize("name", ["e3m4", "e2m3", "e4m3", "int8", "int6"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_quantization_is_identical_to_the_previous_path(name, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 96, generator=g) * torch.rand(3, 40, 1, generator=g) * 50
    x[0, 0] = 0.0  # an all-zero token
    x = x.to(dtype)
    assert torch.equal(quantize_per_token(x, name), previous_per_token(x, name))


@pytest.mark.parametrize("fmt", ["e2m1", "e1m2", "e3m0", "int4", "int4sym"])
def test_pair_table_decode_equals_decode(fmt):
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(256, 48), fmt, group_size=64)
    zeros = q.zeros if q.zeros.numel() else None
    assert torch.equal(q.dequantize(torch.float32), decode(q.codes(), q.fmt, q.scales, 64, zeros))
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16


def test_shared_activation_quantization_reuses_only_the_same_unchanged_tensor():
    x = torch.randn(2, 5, 32)
    a = _shared_act_quant(x, "e3m4")
    assert _shared_act_quant(x, "e3m4") is a  # the sibling projection gets the same tensor
    assert _shared_act_quant(x, "int8") is not a  # another format: recomputed
    assert torch.equal(_shared_act_quant(x, "int8"), quantize_per_token(x, "int8"))
    b = _shared_act_quant(x, "e3m4")
    x.mul_(2.0)  # in-place change bumps the version: recomputed, and right
    c = _shared_act_quant(x, "e3m4")
    assert c is not b and torch.equal(c, quantize_per_token(x, "e3m4"))
    y = x.clone()  # equal values, another tensor: not reused
    assert _shared_act_quant(y, "e3m4") is not c
    g = torch.randn(2, 5, 32, requires_grad=True)
    assert _shared_act_quant(g, "e3m4") is not _shared_act_quant(g, "e3m4")


def test_qkv_siblings_see_one_quantization_and_match_separate_ones():
    torch.manual_seed(0)
    layers = [QuantLinear.from_linear(nn.Linear(64, 64), "e2m1", 64, act_format="e3m4", out_act_format="e3m4")
              for _ in range(3)]
    x = torch.randn(2, 9, 64)
    got = [m(x) for m in layers]
    want = [quantize_per_token(F.linear(quantize_per_token(x, "e3m4"), m.dequantize(), m.bias), "e3m4")
            for m in layers]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_compiled_kernel_inductor_is_bit_identical_and_keeps_4bit_buffers(no_native):
    """The weight-only path meant for GPUs (and its activation rounding), generated for the CPU here."""
    check_kernel("compiled")  # this machine has a C++ compiler
    torch.manual_seed(0)
    model = nn.Sequential(QuantLinear.from_linear(nn.Linear(128, 64), "e2m1", 128, act_format="e3m4",
                                                  out_act_format="e3m4"),
                          nn.GELU(), QuantLinear.from_linear(nn.Linear(64, 128), "int4", 64, act_format="e3m4"))
    xs = [torch.randn(3, 128), torch.randn(2, 5, 128)]  # two token counts: one shape-generic graph each
    want = [model(x) for x in xs]
    before = weight_bytes(model)
    apply_kernel(model, "compiled")
    assert all(torch.equal(model(x), w) for x, w in zip(xs, want, strict=True))
    assert weight_bytes(model) == before  # nothing dequantized is kept
    assert all(m.qweight.dtype == torch.uint8 for m in model.modules() if isinstance(m, QuantLinear))


def test_compiled_rounding_writes_no_caller_tensor_and_matches_under_inference_mode(no_native):
    """The compiled kernel rounds a layer input into the reused buffer and its own output in place:
    the caller's input stays untouched and results equal the eager path, also in inference mode."""
    check_kernel("compiled")
    torch.manual_seed(1)
    lin = nn.Linear(128, 128)
    eager = QuantLinear.from_linear(lin, "e2m1", 64, act_format="e3m4", out_act_format="e3m4")
    comp = QuantLinear.from_linear(lin, "e2m1", 64, act_format="e3m4", out_act_format="e3m4")
    compile_linears(comp)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            x = torch.randn(4, 16, 128)
            keep = x.clone()
            want = eager(x).clone()
            got = comp(x)
            assert torch.equal(x, keep) and torch.equal(got, want)
            assert torch.equal(comp(x + 1), eager(x + 1))  # a second input: the buffer is rewritten


def test_compile_linears_skips_layers_the_fast_form_does_not_cover():
    m = nn.Sequential(QuantLinear.from_linear(nn.Linear(100, 8), "e2m1", 64),
                      QuantLinear.from_linear(nn.Linear(128, 8), "e2m1", 64))
    assert compile_linears(m) == 1
    assert m[0].compiled is None and m[1].compiled == ("inductor", None)


def test_unknown_kernel_names_the_compiled_choice():
    with pytest.raises(DitaccelError, match="compiled"):
        check_kernel("fast")


# --- auto over FP and INT ------------------------------------------------------------------


def test_auto_assignments_weigh_per_layer_family_and_uniform_choices():
    errors = {"a": {"e2m1": 1.0, "e1m2": 2.0, "int4": 0.5}, "b": {"e2m1": 1.0, "e1m2": 0.5, "int4": 3.0}}
    got = _auto_assignments(errors)
    assert got[0] == {"a": "int4", "b": "e1m2"}  # per layer, all candidates
    assert {"a": "e2m1", "b": "e1m2"} in got  # per layer, FP only
    assert {"a": "int4", "b": "int4"} in got and {"a": "e2m1", "b": "e2m1"} in got
    assert len(got) == len({tuple(sorted(a.items())) for a in got})  # no duplicates


def _student_t(shape: tuple[int, int], df: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    chi = torch.distributions.Chi2(df).sample(shape).double()
    return (z / torch.sqrt(chi / df)).float()


def test_auto_errors_prefer_int_on_uniform_and_fp_on_heavy_tailed_weights():
    cfg = FP4DiTConfig(weights="auto", adaround=False)
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(3))
    lin = nn.Linear(256, 64, bias=False)
    with torch.no_grad():
        lin.weight.uniform_(-1, 1, generator=torch.Generator().manual_seed(4))
    uniform = _auto_errors(lin, x, cfg)
    torch.manual_seed(5)
    with torch.no_grad():
        lin.weight.copy_(_student_t((64, 256), 3.0, 5))
    heavy = _auto_errors(lin, x, cfg)
    assert min(uniform, key=uniform.get) == "int4"
    assert min(heavy, key=heavy.get) in {"e2m1", "e1m2", "e3m0"}


@pytest.fixture(scope="module")
def pixart_calib():
    pipe = build_pipeline("pixart-alpha")
    return collect_calibration(pipe, ["a red fox", "a blue boat"], seeds=[0], **call_kwargs("pixart-alpha"))


def test_auto_is_never_worse_than_all_fp_or_all_int_on_the_first_block(pixart_calib):
    """The first block sees the same inputs in every run, so its block MSEs compare directly."""
    mse = {}
    for label, cfg in {
        "auto": FP4DiTConfig(weights="auto", adaround=False, acts="none", progress=False),
        "fp": FP4DiTConfig(weights="auto", auto_candidates=("e2m1", "e1m2", "e3m0"), adaround=False, acts="none",
                           progress=False),
        "int": FP4DiTConfig(weights="int4", adaround=False, acts="none", progress=False),
        "e2m1": FP4DiTConfig(weights="e2m1", first_ffn_weights=None, adaround=False, acts="none", progress=False),
    }.items():
        rep = quantize_(build_pipeline("pixart-alpha").transformer, cfg, calib=pixart_calib)
        mse[label] = rep.block_mse_rtn
        if label == "auto":
            assert set(rep.layer_formats.values()) <= {"e2m1", "e1m2", "e3m0", "int4"}
    first = next(iter(mse["auto"]))
    assert mse["auto"][first] <= min(mse["fp"][first], mse["int"][first], mse["e2m1"][first]) * (1 + 1e-6)


# --- integer GEMM ------------------------------------------------------------------------


@pytest.mark.parametrize("wf", ["e2m1", "e1m2", "e3m0", "int4", "int4sym"])
@pytest.mark.parametrize("af", ["int8", "int6", "e2m3", "e3m4"])
def test_int8_gemm_equals_the_float_path_up_to_float32_rounding(wf, af, monkeypatch):
    """Exact int32 sums, then float32 scaling: within the float32 GEMM error bound of the float path."""
    monkeypatch.setattr(linear_mod, "INT_GEMM_MAX_DIGITS", 2)  # E3M4's two-digit form, off by default
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(384, 40), wf, 128, act_format=af)
    x = torch.randn(2, INT_GEMM_MIN_ROWS // 2 + 3, 384) * 4
    assert q._int8_ready(x)
    got = q(x)
    q.int_gemm = False
    want = q(x)
    xq, w = quantize_per_token(x, af).double(), q.dequantize(torch.float64)
    exact = xq @ w.T + q.bias.double()
    bound = 2 * 384 * 2.0**-24 * (xq.abs() @ w.abs().T + q.bias.double().abs())
    assert ((got.double() - exact).abs() <= bound).all()
    assert ((want.double() - exact).abs() <= bound).all()


def test_int8_gemm_only_where_levels_are_integers_and_rows_are_many():
    q = QuantLinear.from_linear(nn.Linear(128, 16), "e2m1", 128, act_format="e4m3")
    x = torch.randn(INT_GEMM_MIN_ROWS, 128)
    assert not q._int8_ready(x)  # E4M3 bias-0 levels reach 245760: no int8 digits
    q.act_format = "e3m4"
    assert not q._int8_ready(x)  # two digits: the float GEMM is faster (INT_GEMM_MAX_DIGITS)
    q.act_format = "e2m3"
    assert q._int8_ready(x) and not q._int8_ready(x.clone().requires_grad_())
    assert not q._int8_ready(x[: INT_GEMM_MIN_ROWS - 1])  # few rows: the float path is faster
    q.int_gemm = False
    assert not q._int8_ready(x)


def test_int8_digits():
    assert [int8_digits(parse_format(f)) for f in ("int8", "e2m3", "e3m4", "e4m3", "e2m1", "e3m0")] == [1, 1, 2, None, 1, 1]


def test_quantize_with_the_compiled_kernel_keeps_packed_layers():
    model = nn.Sequential(nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 128))
    quantize_(model, FP4DiTConfig(adaround=False, acts="e3m4", keep=(), group_size=64, kernel="compiled",
                                  progress=False))
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2 and all(m.compiled == ("inductor", None) for m in layers)


@pytest.mark.parametrize("acts", ["e2m3", "e3m4"])
def test_activation_quantized_layer_runs_under_inference_mode(acts):
    """Inference tensors have no version counter: the shared per-token quantization must not need one."""
    torch.manual_seed(0)
    q = QuantLinear.from_linear(torch.nn.Linear(64, 32), "e2m1", 32)
    q.act_format = acts
    x = torch.randn(INT_GEMM_MIN_ROWS, 64)
    expected = q(x)
    with torch.inference_mode():
        assert torch.equal(q(x.clone()), expected)


@pytest.mark.parametrize("name", ["e3m4", "e2m3", "int8"])
def test_per_token_scratch_and_inplace_rounding_equal_the_plain_ops(name):
    """Reused scratch memory and in-place levels change no value, in any order of shapes."""
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 40, 96), (5, 7), (3, 300, 64), (2, 40, 96)]  # grows, shrinks, grows: one buffer
    xs = [torch.randn(*s, generator=g) * 20 for s in shapes]
    want = [previous_per_token(x, name) for x in xs]
    for x, w in zip(xs, want, strict=True):
        keep = x.clone()
        assert torch.equal(quantize_per_token(x, name), w) and torch.equal(x, keep)  # input untouched
        out = quantize_per_token(x, name, inplace=True)
        assert torch.equal(out, w) and out.data_ptr() == x.data_ptr()  # the caller's buffer, rounded
    xb = torch.randn(4, 33, generator=g).to(torch.bfloat16)
    keep = xb.clone()
    assert torch.equal(quantize_per_token(xb, name), previous_per_token(xb, name)) and torch.equal(xb, keep)
    xg = torch.randn(3, 16, generator=g, requires_grad=True)  # gradients: plain allocation, x untouched
    assert torch.equal(quantize_per_token(xg, name, inplace=True), previous_per_token(xg.detach(), name))
    with torch.inference_mode():
        xi = torch.randn(6, 50, generator=g)
        assert torch.equal(quantize_per_token(xi, name), previous_per_token(xi, name))


def test_compiled_dequant_linear_for_gpus_is_bit_identical_on_the_cpu():
    """The GPU weight-only kernel (generated dequant feeding the matmul), checked where no GPU is:
    Inductor generates the same graph as C++ here, and its output equals the eager decode's."""
    from ditaccel.quant.fused import code_values, compiled_fn

    check_kernel("compiled")
    torch.manual_seed(0)
    for fmt in ("e2m1", "int4"):
        m = QuantLinear.from_linear(nn.Linear(256, 48), fmt, 64)
        zeros = m.zeros if m.zeros.numel() else None
        x = torch.randn(2, 7, 256)
        got = compiled_fn()(x, m.qweight, code_values(m), m.scales, zeros, m.bias.detach(), m.group_size)
        assert torch.equal(got, F.linear(x, m.dequantize(), m.bias))


def test_compiled_kernel_rounds_int8_gemm_levels_like_the_portable_path(no_native):
    check_kernel("compiled")
    torch.manual_seed(0)
    m = QuantLinear.from_linear(nn.Linear(128, 64), "e2m1", 64, act_format="e2m3", out_act_format="e2m3")
    x = torch.randn(INT_GEMM_MIN_ROWS, 128)
    assert m._int8_ready(x)
    want = m(x)
    compile_linears(m)
    assert m._int8_ready(x) and torch.equal(m(x), want)


def test_reused_input_buffer_never_serves_a_stale_rounding():
    """Layer inputs round into one reused buffer: interleaved inputs, siblings and an in-place change
    of a cached input all give the separately computed result."""
    torch.manual_seed(0)
    a, b = (QuantLinear.from_linear(nn.Linear(64, 32), "e2m1", 64, act_format="e3m4") for _ in range(2))
    x1, x2 = torch.randn(4, 64), torch.randn(7, 64)

    def ref(m, x):
        return F.linear(quantize_per_token(x, "e3m4"), m.dequantize(), m.bias)

    outs = [a(x1), b(x1), a(x2), b(x1), a(x1)]  # x1 again after x2 overwrote the buffer: recomputed
    want = [ref(a, x1), ref(b, x1), ref(a, x2), ref(b, x1), ref(a, x1)]
    assert all(torch.equal(o, w) for o, w in zip(outs, want, strict=True))
    x1.mul_(3.0)
    assert torch.equal(b(x1), ref(b, x1))
    with torch.no_grad():
        a(x2)  # x2's rounding cached, in the buffer
        with torch.inference_mode():
            y = torch.randn(7, 64)
            a(y)  # an inference tensor is never cached, but its rounding overwrites the buffer
        assert torch.equal(b(x2), ref(b, x2))


# -- Q/K/V projections grouped: one batched GEMM and one rounding, bit-identical to separate layers


def _quant_attention(cross: bool, act: str | None, formats: tuple[str, str, str] = ("e2m1",) * 3,
                     bias: bool = True):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=128, cross_attention_dim=64 if cross else None, heads=4, dim_head=32,
                     bias=bias).eval()
    for name, fmt in zip(("to_q", "to_k", "to_v"), formats, strict=True):
        q = QuantLinear.from_linear(getattr(attn, name), fmt, 32, act_format=act, out_act_format=act)
        setattr(attn, name, q)
    attn.to_out[0] = QuantLinear.from_linear(attn.to_out[0], "e2m1", 32, act_format=act)
    return attn


def _ungrouped(attn: nn.Module) -> None:
    for m in attn.modules():
        if isinstance(m, QuantLinear):
            m.group = None


@pytest.mark.parametrize("act", ["e3m4", "e2m3", None])
@pytest.mark.parametrize("cross", [False, True])
def test_grouped_projections_are_bit_identical(cross, act):
    attn = _quant_attention(cross, act)
    assert linear_mod.group_projections(attn) == 1
    grouped = [attn.to_k, attn.to_v] if cross else [attn.to_q, attn.to_k, attn.to_v]
    assert [m.group[1] for m in grouped] == list(range(len(grouped)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 40, 128, generator=g)
    enc = torch.randn(2, 7, 64, generator=g) if cross else None
    with torch.no_grad():
        fused = attn(x, encoder_hidden_states=enc)
        assert not grouped[0].group[0].disabled
        assert linear_mod._PENDING.group is None  # every pending output was taken
        _ungrouped(attn)
        alone = attn(x, encoder_hidden_states=enc)
    assert torch.equal(fused, alone)


def test_grouped_outputs_are_contiguous_and_match_each_layer():
    attn = _quant_attention(False, "e3m4")
    linear_mod.group_projections(attn)
    x = torch.randn(3, 20, 128)
    with torch.no_grad():
        outs = [attn.to_q(x), attn.to_k(x), attn.to_v(x)]
        _ungrouped(attn)
        ref = [attn.to_q(x), attn.to_k(x), attn.to_v(x)]
    for o, r in zip(outs, ref, strict=True):
        assert o.is_contiguous() and o.shape == (3, 20, 128) and torch.equal(o, r)


def test_group_falls_back_when_formats_differ_or_inputs_differ():
    """``auto`` may give Q/K/V different formats; a processor may feed K another tensor."""
    attn = _quant_attention(False, "e3m4", formats=("e2m1", "int4", "e2m1"))
    linear_mod.group_projections(attn)
    x = torch.randn(2, 16, 128)
    with torch.no_grad():
        assert not attn.to_q.group[0].fusable(x)
        fused = attn(x)
        _ungrouped(attn)
        assert torch.equal(fused, attn(x))
    attn = _quant_attention(False, "e3m4")
    linear_mod.group_projections(attn)
    x2 = torch.randn(2, 16, 128)
    with torch.no_grad():
        q = attn.to_q(x)
        k = attn.to_k(x2)  # not the tensor Q was computed from: computed alone, group switched off
        assert attn.to_q.group[0].disabled and linear_mod._PENDING.group is None
        _ungrouped(attn)
        assert torch.equal(q, attn.to_q(x)) and torch.equal(k, attn.to_k(x2))


def test_group_switches_off_when_siblings_run_in_another_order():
    """A processor computing K before Q would pay K twice if the group stayed on."""
    attn = _quant_attention(False, "e3m4")
    linear_mod.group_projections(attn)
    group = attn.to_q.group[0]
    x = torch.randn(2, 16, 128)
    with torch.no_grad():
        outs = [attn.to_k(x), attn.to_q(x), attn.to_v(x)]  # K alone, then Q fused, V taken
        assert not group.disabled and group.waiting  # K's fused output was never taken
        other = _quant_attention(True, "e3m4")
        linear_mod.group_projections(other)
        other.to_k(torch.randn(2, 5, 64))  # another attention's group replaces the pending outputs
        attn.to_k(x)
        assert group.disabled and not group.waiting
        _ungrouped(attn)
        ref = [attn.to_k(x), attn.to_q(x), attn.to_v(x)]
    assert all(torch.equal(o, r) for o, r in zip(outs, ref, strict=True))


def test_group_recomputes_after_in_place_change_and_keeps_checkpoint_keys():
    attn = _quant_attention(False, "e3m4")
    keys = sorted(attn.state_dict())
    linear_mod.group_projections(attn)
    assert sorted(attn.state_dict()) == keys  # a forward-time grouping: no new buffers or parameters
    x = torch.randn(2, 16, 128)
    with torch.no_grad():
        attn.to_q(x)
        x.mul_(2)  # K must see the changed values
        k = attn.to_k(x)
        _ungrouped(attn)
        assert torch.equal(k, attn.to_k(x))


def test_quantize_groups_the_replica_and_output_is_unchanged(monkeypatch):
    pipe = build_pipeline("pixart-alpha")  # 16 features, groups of 128: the stacked-dequantize branch
    quantize_(pipe.transformer, FP4DiTConfig(weights="e2m1", acts="e3m4", adaround=False, progress=False))
    assert any(isinstance(m, QuantLinear) and m.group is not None for m in pipe.transformer.modules())
    calls = []
    real = linear_mod._ProjectionGroup.forward
    monkeypatch.setattr(linear_mod._ProjectionGroup, "forward", lambda self, x: calls.append(1) or real(self, x))

    def run():
        return pipe(prompt="a red cube", generator=torch.Generator().manual_seed(0), **call_kwargs("pixart-alpha"))[0]

    fused = run()
    assert calls  # the groups ran fused
    n = len(calls)
    _ungrouped(pipe.transformer)
    assert torch.equal(fused, run()) and len(calls) == n


def test_a_compiled_trace_leaves_the_projection_group_on():
    """Dynamo traces the layers one by one (grouping is eager-only state): the trace must neither change the
    outputs nor switch the group off for later eager calls."""
    attn = _quant_attention(cross=False, act="e3m4")
    assert linear_mod.group_projections(attn) == 1
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        ref = attn(x)
        group = attn.to_q.group[0]
        out = torch.compile(attn, backend="eager")(x)
        assert torch.equal(out, ref)
        assert not group.disabled
        assert torch.equal(attn(x), ref)
