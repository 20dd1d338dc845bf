"""Optional kernels: ``compiled`` (torch.compile, 4-bit weights kept) and torchao's; the portable path needs none.

``compiled`` keeps the packed codes and generates the dequant-matmul (see
:mod:`ditaccel.quant.fused`): 4.25 bits per weight in memory on any device. The torchao
kernels trade memory for speed. E3M0, E1M2 and E3M4 are not hardware formats, so they
re-express the quantized weights in the nearest hardware format: FP8 E4M3 with per-row
scales on Hopper (``torchao-fp8``: 8 bits per weight, about twice the packed 4.25-bit
memory, for FP8 tensor-core matmuls) or MXFP4 / NVFP4 E2M1 with their own block scales
on Blackwell. Activations then use the kernel's own dynamic quantization.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ditaccel.errors import DitaccelError
from ditaccel.quant.fused import COMPILED_KERNEL, check_compiled
from ditaccel.quant.linear import quantized_layers

__all__ = ["KERNELS", "check_kernel", "apply_kernel", "kernel_available"]

#: kernel name -> (minimum CUDA compute capability, torchao module, config class name)
KERNELS: dict[str, tuple[tuple[int, int], str, str]] = {
    "torchao-fp8": ((8, 9), "torchao.quantization", "Float8DynamicActivationFloat8WeightConfig"),
    "torchao-mxfp4": ((10, 0), "torchao.prototype.mx_formats", "MXFPInferenceConfig"),
    "torchao-nvfp4": ((10, 0), "torchao.prototype.mx_formats", "NVFP4InferenceConfig"),
}


def check_kernel(kernel: str) -> None:
    """Raise a one-line ``DitaccelError`` naming what is missing for ``kernel``."""
    if kernel == "portable":
        return
    if kernel == COMPILED_KERNEL:
        check_compiled()
        return
    if kernel not in KERNELS:
        raise DitaccelError(f"unknown kernel {kernel!r}: use portable, {COMPILED_KERNEL}, {', '.join(KERNELS)}")
    need, mod, cls = KERNELS[kernel]
    try:
        import importlib

        module = importlib.import_module(mod)
    except ImportError:
        raise DitaccelError(
            f"kernel {kernel!r} needs torchao ({mod}): pip install 'ditaccel[torchao]', or use kernel='portable'"
        ) from None
    if not hasattr(module, cls):
        raise DitaccelError(f"kernel {kernel!r} needs {mod}.{cls}, which this torchao lacks: upgrade torchao")
    if not torch.cuda.is_available():
        raise DitaccelError(f"kernel {kernel!r} needs a CUDA GPU (compute capability >= {need[0]}.{need[1]}): "
                            "use kernel='portable' on this machine")
    cap = torch.cuda.get_device_capability()
    if cap < need:
        raise DitaccelError(f"kernel {kernel!r} needs compute capability >= {need[0]}.{need[1]}, this GPU has "
                            f"{cap[0]}.{cap[1]}: use kernel='portable' or torchao-fp8 on Hopper")


def kernel_available(kernel: str) -> bool:
    """Whether :func:`check_kernel` would pass here."""
    try:
        check_kernel(kernel)
    except DitaccelError:
        return False
    return True


def _config(kernel: str) -> Any:
    import importlib

    _, mod, cls = KERNELS[kernel]
    klass = getattr(importlib.import_module(mod), cls)
    if kernel == "torchao-fp8":
        from torchao.quantization import PerRow

        return klass(granularity=PerRow())
    return klass()


def apply_kernel(transformer: nn.Module, kernel: str) -> None:
    """Install ``kernel``: ``compiled`` compiles every ``QuantLinear`` in place (4-bit buffers kept);
    a torchao kernel swaps each for a torchao-quantized linear holding the same grid values."""
    check_kernel(kernel)
    if kernel == COMPILED_KERNEL:  # keeps the packed 4-bit buffers: no re-expression
        compile_linears(transformer)
        return
    from torchao.quantization import quantize_ as ao_quantize_

    for n, q in quantized_layers(transformer).items():  # a dict made before any layer is swapped
        dtype = q.compute_dtype or torch.bfloat16
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device=q.qweight.device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(q.dequantize(dtype))
            if q.bias is not None:
                lin.bias.copy_(q.bias.to(dtype))
        ao_quantize_(lin, _config(kernel))
        parent, _, leaf = n.rpartition(".")
        setattr(transformer.get_submodule(parent) if parent else transformer, leaf, lin)


def compile_linears(transformer: nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """Route every packed ``QuantLinear`` of ``transformer`` through the compiled dequant-matmul.

    The modules and their buffers stay as they are (saving still works); returns how many
    layers were switched. Layers the fast form does not cover (odd widths, partial last
    groups, 8-bit codes) keep the portable forward.
    """
    n = 0
    for m in quantized_layers(transformer).values():
        if m.packed and m.in_features % m.group_size == 0:
            m.compiled = (backend, mode)
            n += 1
    return n
