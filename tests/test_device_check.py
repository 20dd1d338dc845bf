"""bench/device_check.py --small: the GPU check script runs end to end on the CPU, so it cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "bench" / "device_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # 9 rows x 2 generations of 5 steps on 28- and 57-block models
def test_small_mode_measures_every_row(tmp_path, capsys):
    dc = _load()
    out = tmp_path / "small.md"
    assert dc.main(["--small", "--modes", "eager", "--repeats", "1", "--steps", "5", "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "tiny" in line]
    methods = [(r[0].strip("| "), r[2]) for r in rows]
    assert len(rows) == 9 and sum("PixArt" in m for m, _ in methods) == 5
    assert {m for _, m in methods} == {"baseline", "FORA(2)", "ECAD fast (paper, PixArt-alpha 256)",
                                       "FirstBlockCache", "FP4 weights (E2M1 RTN)"}
    for r in rows:
        assert float(r[3]) > 0 and r[4].endswith("x") and r[-1].strip(" |") == "", r  # timed, no error
    macs = {(r[0].strip("| ")[:5], r[2]): r[5] for r in rows}
    assert macs[("PixAr", "baseline")] == "1.00x" and macs[("PixAr", "FirstBlockCache")] == "dynamic"
    assert float(macs[("PixAr", "ECAD fast (paper, PixArt-alpha 256)")].rstrip("x")) > 1.5  # resampled to 5 steps
    assert dc.main(["--small", "--modes", "eager,fast", "--out", str(out)]) == 2
    assert "unknown mode/model/method fast" in capsys.readouterr().err


def _table(path: Path) -> list[list[str]]:
    return [line.split(" | ") for line in path.read_text().splitlines() if line.startswith("| ") and "tiny" in line]


def test_methods_pick_rows_and_a_cut_run_keeps_its_rows(tmp_path, monkeypatch, capsys):
    """A lease's time limit can kill the script: every finished row must already be on disk."""
    dc = _load()
    out = tmp_path / "part.md"
    argv = ["--small", "--models", "pixart", "--modes", "eager", "--methods", "baseline,fora", "--repeats", "1",
            "--steps", "3", "--out", str(out)]
    assert dc.main(argv) == 0
    assert [r[2] for r in _table(out)] == ["baseline", "FORA(2)"]
    assert "interrupted" not in out.read_text() and "--methods baseline,fora" in out.read_text()
    real, calls = dc.run_row, []

    def dies_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a run stopped mid-row (Ctrl-C; `timeout`'s SIGTERM ends it without a trace)
        return real(*a, **k)

    monkeypatch.setattr(dc, "run_row", dies_on_second)
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        dc.main(argv)
    rows = _table(out)
    assert [r[2] for r in rows] == ["baseline"] and float(rows[0][3]) > 0
    assert "interrupted after 1 of 2 rows" in out.read_text()
    assert dc.main([*argv[:-2], "--methods", "taylor", "--out", str(out)]) == 2
    assert "unknown mode/model/method taylor" in capsys.readouterr().err
    flux_ecad = ["--small", "--models", "flux", "--modes", "eager", "--methods", "ecad", "--out", str(tmp_path / "e.md")]
    assert dc.main(flux_ecad) == 2 and not (tmp_path / "e.md").exists()
    assert "no row matches" in capsys.readouterr().err


def test_without_a_gpu_full_mode_refuses(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load().main(["--out", "/nonexistent/gpu.md"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
