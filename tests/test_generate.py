"""`ditaccel generate`: what it writes and what it refuses."""

import json

import numpy as np
import pytest
from PIL import Image

from ditaccel.cli import main


def test_generate_writes_images_and_index(tmp_path):
    out = tmp_path / "gen"
    rc = main(["generate", "--prompt", "a large red circle in the top left", "--prompt",
               "a small blue square in the center", "--seeds", "0,1", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert {r["file"] for r in rows} == {"00000.png", "00001.png", "00002.png", "00003.png"}
    assert rows[1]["prompt"] == "a large red circle in the top left" and rows[1]["seed"] == 1
    assert rows[0]["steps"] == 20
    img = np.asarray(Image.open(out / "00000.png"))
    assert img.shape == (64, 64, 3)
    # same prompt + seed -> same image, run to run
    out2 = tmp_path / "gen2"
    assert main(["generate", "--prompt", "a large red circle in the top left", "--seeds", "0,1", "--out", str(out2)]) == 0
    assert np.array_equal(np.asarray(Image.open(out2 / "00000.png")), img)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompts", "nosuchset"], "unknown prompt set"),
        (["--prompts", "EMPTY"], "holds no prompts"),
        (["--prompt", "a dog", "--seeds", "1,x"], "cannot parse seeds"),
        (["--prompt", "a dog", "--out", "FILE"], "is a file"),
        (["--prompt", "a dog", "--schedule", "NOTJSON"], "schedule"),
    ],
)
def test_generate_refuses_bad_input(tmp_path, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "bad.json").write_text("{oops")
    subst = {"EMPTY": str(tmp_path / "empty.txt"), "FILE": str(tmp_path / "afile"), "NOTJSON": str(tmp_path / "bad.json")}
    argv = [subst.get(a, a) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0].lower()
    assert not (tmp_path / "out").exists()
