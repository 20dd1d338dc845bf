"""Hardening of the CLI (issue 12): no lost files, checksums, nonsense refused, interruptions reported."""

import json

import pytest

from ditaccel._io import json_checksum, with_checksum
from ditaccel.caching import CacheSchedule, presets
from ditaccel.cli import main
from ditaccel.errors import ScheduleError
from ditaccel.testing.faults import PROMPTS, using_pipe

GEN = ["generate", "--prompt", PROMPTS[0], "--steps", "2"]


def _one_error(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("ditaccel: error: "), lines
    return lines[0]


def test_generate_never_overwrites_and_resume_adds(bundled_pipe, tmp_path, capsys):
    out = tmp_path / "gen"
    with using_pipe(bundled_pipe):
        assert main([*GEN, "--seeds", "0,1", "--out", str(out)]) == 0
        first = {p.name: p.read_bytes() for p in out.glob("*.png")}
        index = (out / "images.jsonl").read_text()
        capsys.readouterr()
        assert main([*GEN, "--seeds", "2", "--out", str(out)]) == 2
        assert "--resume" in _one_error(capsys)
        assert (out / "images.jsonl").read_text() == index
        assert main([*GEN, "--seeds", "0-2", "--out", str(out), "--resume"]) == 0  # seeds 0, 1 are done
    rows = [json.loads(x) for x in (out / "images.jsonl").read_text().splitlines()]
    assert [(r["file"], r["seed"]) for r in rows] == [("00000.png", 0), ("00001.png", 1), ("00002.png", 2)]
    assert all({p.name: p.read_bytes() for p in out.glob("*.png")}[k] == v for k, v in first.items())
    assert all(r["checksum"] == json_checksum(r) and r["count"] == 3 for r in rows)
    lines = (out / "images.jsonl").read_text().splitlines(keepends=True)
    (out / "images.jsonl").write_text("".join(lines[:2]))  # cut at a record boundary: every line still valid
    capsys.readouterr()
    with using_pipe(bundled_pipe):
        assert main([*GEN, "--seeds", "0-2", "--out", str(out), "--resume"]) == 2
    assert "cut short" in _one_error(capsys)


def test_interrupted_generate_says_what_it_kept_and_resumes(bundled_pipe, tmp_path, capsys, monkeypatch):
    import ditaccel.pipeline as pl

    real, calls = pl.generate_images, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pl, "generate_images", flaky)
    out = tmp_path / "gen"
    with using_pipe(bundled_pipe):
        assert main([*GEN, "--seeds", "0-2", "--batch-size", "1", "--out", str(out)]) == 130
        err = capsys.readouterr().err
        assert "kept 1 new images" in err and "--resume" in err and "other 2" in err
        assert len((out / "images.jsonl").read_text().splitlines()) == 1
        assert main([*GEN, "--seeds", "0-2", "--batch-size", "1", "--out", str(out), "--resume"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png", "00002.png"]


OUT = ["--out", "OUT"]


@pytest.mark.parametrize("argv, message", [
    ([*GEN[:3], "--steps", "0", *OUT], "argument --steps: must be >= 1, got 0"),
    ([*GEN[:3], "--steps", "1", *OUT], "pass --steps 2 or more"),
    ([*GEN, "--guidance", "nan", *OUT], "argument --guidance"),
    ([*GEN, "--seeds", "0-99999999999", *OUT], "more than 1,000,000 seeds"),
    ([*GEN, "--bogus", *OUT], "unrecognized arguments: --bogus; see `ditaccel --help`"),
    (["generate", "--prompt", "x"], "the following arguments are required: --out; see `ditaccel generate --help`"),
    (["search", "--generations", "0", *OUT], "argument --generations: must be >= 1"),
    (["search", "--seed", "-1", *OUT], "argument --seed: must be in 0 .. 2**63-1"),
    (["search", "--metric", "clip", "--metric-path", "clip_pth=/x", *OUT], "key 'clip_pth' is not one metric clip uses"),
    (["eval", "--methods", "baseline", "--metric-path", "clip_pth=/x", *OUT],
     "--metric-path key 'clip_pth' is not one any metric uses; use one of clip_path, imagereward_path"),
    (["eval", "--methods", "baseline", "--metric-path", "clip_path", *OUT], "'clip_path' is not KEY=PATH"),
    (["eval", "--methods", "baseline", "--clip", "/x", *OUT], "unrecognized arguments: --clip"),
    (["frontier", "OUT", "--min-quality", "inf"], "argument --min-quality"),
])
def test_nonsense_is_one_line(bundled_pipe, tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    with using_pipe(bundled_pipe):
        assert main(argv) == 2
    assert message in _one_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [GEN, ["search"], ["quantize"], ["eval", "--methods", "baseline"]])
def test_out_under_a_regular_file_is_refused(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("keep me")
    assert main([*command, "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "which is a file" in _one_error(capsys)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_schedule_checksum_optional_but_checked(tmp_path, bundled_pipe):
    s = presets.fora(bundled_pipe, 2, steps=4)
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps(s.to_dict()))  # as a user writes it: no checksum
    assert CacheSchedule.load(hand) == s
    signed = with_checksum(s.to_dict())
    cell = signed["schedule"][1][0]
    signed["schedule"][1][0] = ("0" if cell[0] == "1" else "1") + cell[1:]  # one bit changed, checksum kept
    hand.write_text(json.dumps(signed))
    with pytest.raises(ScheduleError, match="fails its checksum"):
        CacheSchedule.load(hand)
    hand.write_text(json.dumps({**s.to_dict(), "resolution": "big"}))
    with pytest.raises(ScheduleError, match="resolution"):
        CacheSchedule.load(hand)
    with pytest.raises(ScheduleError, match="is a folder"):
        CacheSchedule.load(tmp_path)


def test_search_resume_interrupt_and_select_messages(bundled_pipe, tmp_path, capsys, monkeypatch):
    import ditaccel.search as search_pkg

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "run"
    argv = ["search", "--prompts", str(tmp_path / "p.txt"), "--steps", "2", "--population", "4",
            "--generations", "1", "--out", str(out), "--resume"]
    real = search_pkg.search

    def then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(search_pkg, "search", then_interrupt)
    with using_pipe(bundled_pipe):
        assert main(argv) == 130
    captured = capsys.readouterr()
    assert "holds no search checkpoint; starting a new search" in " ".join(captured.out.split())
    assert "kept 1 finished generation(s)" in captured.err and "--resume" in captured.err
    assert main(["frontier", str(out), "--select", "99x", "--out", str(tmp_path / "s.json")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    fastest = max(json.loads((out / "frontier.json").read_text())["points"], key=lambda p: p["speedup"])
    assert "outside the frontier's range" in said and f"picked the nearest point, {fastest['name']}" in said
    (out / "checkpoint").unlink()  # a search without its checkpoint is not silently restarted
    with using_pipe(bundled_pipe):
        assert main(argv) == 2
    assert "no checkpoint" in _one_error(capsys)
    assert (out / "candidates.jsonl").stat().st_size > 0
