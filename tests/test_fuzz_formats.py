"""Fuzz every file format ditaccel reads, through the CLI in-process (``ditaccel.testing.faults``).

Faults are generated, not listed: hypothesis picks the byte offset of a truncation or a bit flip,
the field and the wrong-typed value of a JSON edit (signed, or with the checksum dropped as a
hand edit would), and the deterministic tests cover empty, binary, folder-instead-of-file and
missing files for every format. Every case must end in one ``ditaccel: error:`` line with no file
changed, or succeed on content the fault left intact (``Outcome.verdict``).
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ditaccel.testing import faults as F

SIGNED = [t for t in F.TARGETS if t.signed]
JSON_TARGETS = [t for t in SIGNED if not t.file.endswith(".safetensors")]
_FUZZ = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workspace(bundled_pipe, tmp_path_factory):
    return F.build_workspace(tmp_path_factory.mktemp("fuzz") / "pristine", bundled_pipe)


def _verdict(workspace, pipe, factory, target, fault) -> str:
    outcome = F.run_case(workspace, target, fault, factory.mktemp("case"), pipe)
    verdict = outcome.verdict()
    assert not verdict.startswith("BAD"), f"{target.name} {fault}: {verdict}"
    return verdict


@pytest.mark.parametrize("target", F.TARGETS, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["empty", "binary", "directory", "missing"])
def test_unreadable_file_is_one_clean_error(workspace, bundled_pipe, tmp_path_factory, target, kind):
    assert _verdict(workspace, bundled_pipe, tmp_path_factory, target, F.Fault(kind, offset=7)) == "clean error"


@pytest.mark.parametrize("target", SIGNED, ids=lambda t: t.name)
@_FUZZ
@given(data=st.data())
def test_truncation_and_bit_flips_never_pass_silently(workspace, bundled_pipe, tmp_path_factory, target, data):
    size = target.path(workspace).stat().st_size
    fault = F.Fault(data.draw(st.sampled_from(["truncate", "flip"])), offset=data.draw(st.integers(0, size - 1)),
                    bit=data.draw(st.integers(0, 7)))
    assert _verdict(workspace, bundled_pipe, tmp_path_factory, target, fault) in ("clean error", "intact")


@pytest.mark.parametrize("target", JSON_TARGETS, ids=lambda t: t.name)
@_FUZZ
@given(data=st.data())
def test_wrong_json_types_per_field(workspace, bundled_pipe, tmp_path_factory, target, data):
    fault = data.draw(st.sampled_from(F.json_faults(target.path(workspace))))
    verdict = _verdict(workspace, bundled_pipe, tmp_path_factory, target, fault)
    if fault.kind == "wrong_type":  # the checksum is still there: any change of content is refused
        assert verdict == "clean error"


@pytest.mark.parametrize("target", [t for t in F.TARGETS if not t.signed], ids=lambda t: t.name)
@_FUZZ
@given(data=st.data())
def test_user_text_files_any_damage_is_handled(workspace, bundled_pipe, tmp_path_factory, target, data):
    size = target.path(workspace).stat().st_size
    fault = F.Fault(data.draw(st.sampled_from(F.BYTE_FAULTS)), offset=data.draw(st.integers(0, size - 1)),
                    bit=data.draw(st.integers(0, 7)))
    _verdict(workspace, bundled_pipe, tmp_path_factory, target, fault)


def test_truncation_at_many_offsets_of_the_quantized_tensors(workspace, bundled_pipe, tmp_path_factory):
    target = next(t for t in F.TARGETS if t.file.endswith(".safetensors"))
    size = target.path(workspace).stat().st_size
    for offset in range(0, size, size // 12):
        for kind in ("truncate", "flip"):
            fault = F.Fault(kind, offset=offset, bit=offset % 8)
            assert _verdict(workspace, bundled_pipe, tmp_path_factory, target, fault) == "clean error"
