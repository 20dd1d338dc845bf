"""Native CPU kernels for the quantized forward: per-token rounding and nibble decode, one pass each.

Why: in eager torch the per-token E3M4 rounding is nine element-wise passes (abs, amax, div,
scale, exponent bits, binade clamp, add, sub, rescale) with a fixed dispatch cost each; it was
a quarter of the bundled model's quantized forward. Here a small C file does the absmax in
one read and the rounding in one read + write per token row, and the weight decode (unpack,
grid lookup, group scale) in one pass per layer. The arithmetic is the eager path's, operation
for operation in float32 (``-ffp-contract=off``: no fused multiply-add; no fast-math), so the
results are bit-identical to it (the tests compare them on random, subnormal, zero and huge inputs).

The C source is compiled once per machine with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into ``$DITACCEL_NATIVE_CACHE`` (default ``~/.cache/ditaccel/native``)
and loaded with ``ctypes``: no build step at install time and no new package. Without a
compiler, or with ``DITACCEL_NATIVE=0``, every caller keeps the eager torch path (same values,
slower); :func:`unavailable_reason` says why. Rows run in parallel over
``torch.get_num_threads()`` OpenMP threads (torch's own runtime) when the library was built
with OpenMP.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ditaccel._io import user_cache_dir

__all__ = ["CACHE_ENV", "ENABLE_ENV", "available", "enabled", "library", "round_params",
           "round_rows", "unavailable_reason"]

#: Where the compiled library is cached (default ``$XDG_CACHE_HOME/ditaccel/native``, ``~/.cache`` by default).
CACHE_ENV = "DITACCEL_NATIVE_CACHE"
#: ``0`` / ``false`` / ``off``: never build or use the native kernels (the eager torch path everywhere).
ENABLE_ENV = "DITACCEL_NATIVE"

#: Elements below which a call runs on one thread (OpenMP start-up costs more than it saves).
PARALLEL_MIN = 1 << 15

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* |x| max of a row as in torch: the bit patterns of |x| order like the values (NaN above inf). */
static inline float row_safe(const float* x, int64_t n) {
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) { uint32_t b = fbits(x[i]) & 0x7FFFFFFFu; m = b > m ? b : m; }
    float a = bitsf(m);
    return a == 0.0f ? 1.0f : a;
}

/* Per-token rounding to the bias-0 ExMy grid scaled by the row absmax: formats.per_token_levels.
   y = x / safe * imax; c = 2^max(exponent(y), 1) * k; q = (y + c) - c; scale = safe / imax.
   scale_out != 0: dst = q (levels) and scale_out[r] = scale; else dst = q * scale. dst may be src. */
int dq_round_fp(const float* src, float* dst, float* scale_out, int64_t rows, int64_t cols,
                float imax, float k, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float* x = src + r * cols;
        float* d = dst + r * cols;
        float safe = row_safe(x, cols);
        float sc = safe / imax;
        float mul = scale_out ? 1.0f : sc;  /* levels: times 1, exact */
        if (scale_out) scale_out[r] = sc;
        for (int64_t i = 0; i < cols; i++) {
            float y = (x[i] / safe) * imax;
            uint32_t e = fbits(y) & 0x7F800000u;
            float c = bitsf(e < 0x40000000u ? 0x40000000u : e) * k;
            d[i] = ((y + c) - c) * mul;
        }
    }
    return 0;
}

/* Symmetric per-token INT rounding: step = safe / qmax; q = clamp(rint(x / step), -qmax, qmax). */
int dq_round_int(const float* src, float* dst, float* scale_out, int64_t rows, int64_t cols,
                 float qmax, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float* x = src + r * cols;
        float* d = dst + r * cols;
        float step = row_safe(x, cols) / qmax;
        float mul = scale_out ? 1.0f : step;
        if (scale_out) scale_out[r] = step;
        for (int64_t i = 0; i < cols; i++) {
            float q = nearbyintf(x[i] / step);
            q = q < -qmax ? -qmax : q;
            q = q > qmax ? qmax : q;
            d[i] = q * mul;
        }
    }
    return 0;
}

/* Packed nibbles [rows, groups * gs / 2] (low nibble first) to float [rows, groups * gs]:
   (values[code] - zero) * scale per group, as QuantLinear.dequantize. zeros may be 0 (none).
   The 16-entry lookup runs as register permutes where the CPU has them (AVX-512F or AVX2): the
   same float32 values, subtractions and products as the scalar loop, in another order of work. */
static void decode_scalar(const uint8_t* qb, const float* values, float* o, int64_t from, int64_t half,
                          float z, float s, int has_zero) {
    for (int64_t j = from; j < half; j++) {
        uint8_t b = qb[j];
        float l = values[b & 15], h = values[b >> 4];
        if (has_zero) { l = l - z; h = h - z; }
        o[2 * j] = l * s; o[2 * j + 1] = h * s;
    }
}

#if defined(__AVX512F__)
#include <immintrin.h>
static int64_t decode_simd(const uint8_t* qb, const float* values, float* o, int64_t half,
                           float z, float s, int has_zero) {
    const __m512 tab = _mm512_loadu_ps(values), vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
    const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i m15 = _mm512_set1_epi32(15);
    int64_t j = 0;
    for (; j + 16 <= half; j += 16) {
        __m512i bi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(qb + j)));
        __m512 vl = _mm512_permutexvar_ps(_mm512_and_epi32(bi, m15), tab);
        __m512 vh = _mm512_permutexvar_ps(_mm512_srli_epi32(bi, 4), tab);
        if (has_zero) { vl = _mm512_sub_ps(vl, vz); vh = _mm512_sub_ps(vh, vz); }
        _mm512_storeu_ps(o + 2 * j, _mm512_mul_ps(_mm512_permutex2var_ps(vl, ilo, vh), vs));
        _mm512_storeu_ps(o + 2 * j + 16, _mm512_mul_ps(_mm512_permutex2var_ps(vl, ihi, vh), vs));
    }
    return j;
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline __m256 lookup16(__m256 t0, __m256 t1, __m256i idx) {
    /* idx in [0, 16): bit 3 picks the table half (moved to the sign bit for blendv) */
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
static int64_t decode_simd(const uint8_t* qb, const float* values, float* o, int64_t half,
                           float z, float s, int has_zero) {
    const __m256 t0 = _mm256_loadu_ps(values), t1 = _mm256_loadu_ps(values + 8);
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
    const __m256i m15 = _mm256_set1_epi32(15);
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
        __m256i bi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(qb + j)));
        __m256 vl = lookup16(t0, t1, _mm256_and_si256(bi, m15));
        __m256 vh = lookup16(t0, t1, _mm256_srli_epi32(bi, 4));
        if (has_zero) { vl = _mm256_sub_ps(vl, vz); vh = _mm256_sub_ps(vh, vz); }
        __m256 a = _mm256_unpacklo_ps(vl, vh), b = _mm256_unpackhi_ps(vl, vh);
        _mm256_storeu_ps(o + 2 * j, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), vs));
        _mm256_storeu_ps(o + 2 * j + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), vs));
    }
    return j;
}
#else
static int64_t decode_simd(const uint8_t* qb, const float* values, float* o, int64_t half,
                           float z, float s, int has_zero) {
    (void)qb; (void)values; (void)o; (void)half; (void)z; (void)s; (void)has_zero;
    return 0;
}
#endif

int dq_decode(const uint8_t* q, const float* values, const float* scales, const uint8_t* zeros,
              float* out, int64_t rows, int64_t groups, int64_t gs, int nthreads) {
    int64_t half = gs / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)
    for (int64_t rg = 0; rg < rows * groups; rg++) {
        const uint8_t* qb = q + rg * half;
        float* o = out + rg * gs;
        float z = zeros ? (float)zeros[rg] : 0.0f;
        int64_t done = decode_simd(qb, values, o, half, z, scales[rg], zeros != 0);
        decode_scalar(qb, values, o, done, half, z, scales[rg], zeros != 0);
    }
    return 0;
}

/* Which vector path dq_decode was built with (for reports and tests). */
int dq_simd(void) {
#if defined(__AVX512F__)
    return 512;
#elif defined(__AVX2__)
    return 256;
#else
    return 0;
#endif
}
"""

#: Compiler flags: strict IEEE float32 (no contraction into FMA, no fast-math), vectorized for this CPU.
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_ARCH = ["-march=native"]
_OPENMP = ["-fopenmp"]

_P, _I64, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "dq_round_fp": [_P, _P, _P, _I64, _I64, _F, _F, _INT],
    "dq_round_int": [_P, _P, _P, _I64, _I64, _F, _INT],
    "dq_decode": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _INT],
    "dq_simd": [],
}


class _State:
    """The loaded library (or why there is none), built at most once per process."""

    lib: ctypes.CDLL | None = None
    reason: str | None = None
    tried = False
    enabled = True
    lock = threading.Lock()


_STATE = _State()


def cache_dir() -> Path:
    """``$DITACCEL_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/ditaccel/native`` (``~/.cache`` by default)."""
    return user_cache_dir(CACHE_ENV, "native")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU model and flags (a cached library is per CPU kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")
        return "\n".join(sorted({ln for ln in text.splitlines() if ln.startswith(keep)}))  # x86 and arm64 lines
    except OSError:
        return platform.processor() or platform.machine()


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Compile the source to ``target`` (atomically: temp file, then rename); the error text, or ``None``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(_SOURCE)
        out = Path(tmp) / target.name
        try:
            proc = subprocess.run([cc, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            return str(e)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "failed").strip().splitlines()
            return lines[0] if lines else "failed"
        with open(out, "rb") as f:
            data = f.read()
            os.fsync(f.fileno())  # on disk before the rename: a crash never leaves a torn library under its name
        digest = Path(tmp) / (target.name + ".sha256")
        digest.write_text(hashlib.sha256(data).hexdigest())
        os.replace(digest, _digest_path(target))
        os.replace(out, target)
    return None


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _intact(path: Path) -> bool:
    """Whether a cached library is the one we built (its sha256 sidecar matches): a torn or foreign file
    must not reach ``dlopen``, where it can kill the process (SIGBUS) instead of raising."""
    try:
        return _digest_path(path).read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return False


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    """Build (or find cached) and load the library: OpenMP and ``-march=native`` first, then without."""
    if os.environ.get(ENABLE_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return None, f"{ENABLE_ENV}=0"
    if sys.platform == "win32":
        return None, "native kernels are built with a Unix C compiler; Windows keeps the eager path"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc or clang) found: install one, or set CC"
    errors = []
    cpu = _cpu_key()
    for flags in (_FLAGS + _ARCH + _OPENMP, _FLAGS + _ARCH, _FLAGS):
        key = hashlib.sha256("\0".join([_SOURCE, cc, *flags, platform.machine(), cpu,
                                        torch.__version__]).encode()).hexdigest()[:16]
        path = cache_dir() / f"ditaccel_native_{key}.so"
        for attempt in range(2):  # a damaged cached library is removed and built again, once
            try:
                if not (path.exists() and _intact(path)):
                    path.unlink(missing_ok=True)
                    err = _compile(cc, flags, path)
                    if err is not None:
                        errors.append(err)
                        break
                return _load(path), None
            except Exception as e:  # unwritable cache, a library that does not load (an OpenMP mismatch), a missing symbol
                errors.append(str(e))
                if attempt == 0:
                    path.unlink(missing_ok=True)
        else:
            continue
    return None, f"could not build the native kernels with {cc}: {errors[-1] if errors else 'unknown error'}"


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` (disabled, or unavailable here: see :func:`unavailable_reason`)."""
    st = _STATE
    if not st.enabled:
        return None
    if not st.tried:
        with st.lock:
            if not st.tried:
                st.lib, st.reason = _build()
                st.tried = True
    return st.lib


def available() -> bool:
    """Whether the native kernels are built, loaded and enabled."""
    return library() is not None


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (``None`` when it is not)."""
    if not _STATE.enabled:
        return "disabled by ditaccel.quant.native.enabled(False)"
    library()
    return _STATE.reason


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Turn the native kernels on or off inside a ``with`` block (process-wide), e.g. to time or
    test the eager torch path against them."""
    st = _STATE
    before, st.enabled = st.enabled, on
    try:
        yield
    finally:
        st.enabled = before


def round_params(fp: bool, int_max: float, man_bits: int = 0) -> tuple[bool, float, float]:
    """The kernel arguments of a per-token format: FP ``(True, int_max, 1.5 * 2^(23 - M))`` (the binade
    constant of ``formats._fp_round_normalised_`` for float32), INT ``(False, qmax, 0)``."""
    return (True, float(int_max), 1.5 * 2.0 ** (23 - man_bits)) if fp else (False, float(int_max), 0.0)


def round_rows(x: torch.Tensor, dst: torch.Tensor, params: tuple[bool, float, float],
               scale_out: torch.Tensor | None = None) -> bool:
    """Per-token rounding of the float32 contiguous CPU tensor ``x`` (rows = last-dim vectors) into ``dst``
    (float32, contiguous, ``x``'s size; may be ``x``), with :func:`round_params`' arguments.

    With ``scale_out`` (float32, one per row) ``dst`` receives the levels and ``scale_out`` the
    scales; without, the rounded values. Returns ``False`` (nothing written) when the library is
    unavailable; the caller then runs the eager path.
    """
    lib = library()
    if lib is None:
        return False
    cols = x.shape[-1]
    n = x.numel()
    if n == 0:
        return True
    so = None if scale_out is None else scale_out.data_ptr()
    nt = torch.get_num_threads() if n >= PARALLEL_MIN else 1
    if params[0]:
        lib.dq_round_fp(x.data_ptr(), dst.data_ptr(), so, n // cols, cols, params[1], params[2], nt)
    else:
        lib.dq_round_int(x.data_ptr(), dst.data_ptr(), so, n // cols, cols, params[1], nt)
    return True
