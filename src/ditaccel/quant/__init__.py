"""FP4DiT: floating-point post-training quantization with real (packed) memory savings.

``quantize_(transformer, FP4DiTConfig(...), calib=collect_calibration(pipe, prompts))``
turns a DiT's linears into ``QuantLinear`` s holding 4-bit codes two per byte;
``save_quantized`` / ``load_quantized`` move them through a safetensors folder.
"""

from ditaccel.quant.adaround import AdaRoundLinear
from ditaccel.quant.api import (
    DEFAULT_KEEP,
    FP4DiTConfig,
    QuantReport,
    quantize_,
    quantized_layers,
    set_activation_quant,
)
from ditaccel.quant.calib import (
    CalibrationSet,
    calibration_from_images,
    collect_calibration,
    load_image_folder,
)
from ditaccel.quant.formats import (
    FPFormat,
    IntFormat,
    decode,
    encode,
    fp_bias,
    parse_format,
    quantize_groups,
    quantize_per_token,
)
from ditaccel.quant.io import checkpoint_stats, load_quantized, open_quantized, round_kept_, save_quantized
from ditaccel.quant.kernels import apply_kernel, check_kernel, kernel_available
from ditaccel.quant.linear import QuantLinear, weight_bytes
from ditaccel.quant.packing import pack_nibbles, unpack_nibbles

__all__ = [
    "DEFAULT_KEEP",
    "AdaRoundLinear",
    "CalibrationSet",
    "FP4DiTConfig",
    "FPFormat",
    "IntFormat",
    "QuantLinear",
    "QuantReport",
    "apply_kernel",
    "calibration_from_images",
    "check_kernel",
    "checkpoint_stats",
    "collect_calibration",
    "decode",
    "encode",
    "fp_bias",
    "kernel_available",
    "load_image_folder",
    "load_quantized",
    "open_quantized",
    "pack_nibbles",
    "parse_format",
    "quantize_",
    "quantize_groups",
    "quantize_per_token",
    "quantized_layers",
    "round_kept_",
    "save_quantized",
    "set_activation_quant",
    "unpack_nibbles",
    "weight_bytes",
]
