"""The number-format registry in ditaccel.quant.formats is what the config, auto and the CLI offer."""

from __future__ import annotations

import pytest

from ditaccel.cli import build_parser
from ditaccel.errors import DitaccelError
from ditaccel.quant import FP4DiTConfig
from ditaccel.quant.formats import ACT_FORMATS, FORMAT_ALIASES, WEIGHT_FORMATS, formats_help, parse_format
from ditaccel.quant.linear import check_act_format


def test_registered_weight_formats_are_4_bit_and_accepted():
    for name in WEIGHT_FORMATS:
        assert parse_format(name).bits == 4
        assert FP4DiTConfig(weights=name, adaround=False).weights == name
    assert FP4DiTConfig().auto_candidates == WEIGHT_FORMATS
    with pytest.raises(DitaccelError, match="use one of e2m1, e1m2, e3m0, int4, auto"):
        FP4DiTConfig(weights="e2m2")


def test_registered_act_formats_and_aliases_are_accepted():
    for name in ACT_FORMATS:
        assert check_act_format(name) is not None
        assert FP4DiTConfig(acts=name, adaround=False).acts == name
    assert set(FORMAT_ALIASES.values()) <= set(WEIGHT_FORMATS) | set(ACT_FORMATS)


def test_cli_help_lists_every_registered_format():
    quantize = build_parser()._subparsers._group_actions[0].choices["quantize"]
    text = quantize.format_help().replace("\n", " ")
    text = " ".join(text.split())
    assert formats_help((*WEIGHT_FORMATS, "auto")) in text
    assert formats_help((*ACT_FORMATS, "none")) in text
    assert "e2m1 (= fp4)" in text and "e3m4 (= fp8)" in text
