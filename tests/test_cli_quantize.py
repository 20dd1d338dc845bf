"""`ditaccel quantize` end to end on the bundled model, and its refusals."""

import json
import shutil
from pathlib import Path

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


# ----------------------------------------------------------------------------- reading the folder back (issue 13)


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantized")
    prompts = d / "calib.txt"
    prompts.write_text("a large red circle in the top left\n")
    assert main(["quantize", "--no-adaround", "--calib-prompts", str(prompts), "--steps", "2",
                 "--out", str(d / "q")]) == 0
    return d / "q"


def _generate(q, out) -> int:
    return main(["generate", "--quantized", str(q), "--prompt", "a small blue square", "--steps", "2",
                 "--out", str(out)])


def test_generate_quantized_hashes_the_tensor_file_once(qdir, tmp_path, monkeypatch):
    from ditaccel.quant import io

    hashed = []
    real = io.file_sha256
    monkeypatch.setattr(io, "file_sha256", lambda p: hashed.append(Path(p)) or real(p))
    assert _generate(qdir, tmp_path / "g") == 0
    assert hashed == [qdir / io.TENSORS_NAME]  # checked before the model loads, not again when loading


def test_a_tensor_file_changed_after_its_check_is_hashed_again(qdir, tmp_path):
    from ditaccel.errors import QuantizedCheckpointError
    from ditaccel.quant import load_quantized, open_quantized
    from ditaccel.quant.io import TENSORS_NAME

    d = shutil.copytree(qdir, tmp_path / "q")
    folder = open_quantized(d)
    t = d / TENSORS_NAME
    data = bytearray(t.read_bytes())
    data[-1] ^= 1  # same size: only the checksum can tell
    t.write_bytes(bytes(data))
    with pytest.raises(QuantizedCheckpointError, match="fails its checksum"):
        load_quantized(folder, None)


@pytest.mark.parametrize("drop", ["checksum", "tensors_sha256"])
def test_a_quantized_config_without_its_checksums_is_refused(qdir, tmp_path, capsys, drop):
    from ditaccel._io import with_checksum

    d = shutil.copytree(qdir, tmp_path / "q")
    meta = json.loads((d / "quant_config.json").read_text())
    del meta[drop]
    if drop != "checksum":
        meta = with_checksum(meta)  # re-signed: only the tensor file's hash is missing
    (d / "quant_config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _generate(d, tmp_path / "g") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks" in err[0] and "re-run `ditaccel quantize`" in err[0]
    assert not (tmp_path / "g").exists()
