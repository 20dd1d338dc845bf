"""`ditaccel quantize` end to end on the bundled model, and its refusals."""

import json

import pytest

from ditaccel.cli import main


def test_quantize_then_generate(tmp_path, capsys):
    prompts = tmp_path / "calib.txt"
    prompts.write_text("a large red circle in the top left\na small blue square in the center\n")
    real = tmp_path / "real"  # a `generate` folder (images.jsonl) doubles as real calibration images
    assert main(["generate", "--prompt", "a small green triangle in the bottom left", "--steps", "4",
                 "--out", str(real)]) == 0
    q = tmp_path / "q"
    assert main(["quantize", "--no-adaround", "--calib-prompts", str(prompts), "--steps", "4",
                 "--calib-images", str(real), "--out", str(q)]) == 0
    assert "adding 1 real images" in " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    cfg = json.loads((q / "quant_config.json").read_text())
    assert cfg["stats"]["bits_per_weight"] <= 4.5
    out = tmp_path / "gen"
    assert main(["generate", "--quantized", str(q), "--prompt", "a large red circle in the top left", "--out", str(out)]) == 0
    row = json.loads((out / "images.jsonl").read_text().splitlines()[0])
    assert row["quantized"] == str(q) and (out / row["file"]).is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "e9m9"], "not supported"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--quantized", "somewhere"], "drop --quantized"),
        (["--calib-images", "/nonexistent/folder"], "is not a folder"),
        (["--kept-storage", "int3"], "kept_storage='int3' is not supported"),
    ],
)
def test_quantize_refuses_bad_input(tmp_path, capsys, argv, message):
    assert main(["quantize", *argv, "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "q").exists()
