"""One place chooses the prompts quantization rows and MagCache calibrate on, for the driver and Ray workers.

The regression (issue 13): ``--ray`` workers calibrated on the shape prompts while the driver,
on a model scored without adherence, calibrated on the eval prompts. Checked without starting Ray:
the driver's generation phase hands its choice to ``worker_jobs``, which builds each worker's arguments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ditaccel.evaluate import EvalConfig, distributed, runner
from ditaccel.testing.replicas import build_pipeline
from ditaccel.zoo import shapes

PROMPTS = ["a red fox", "a blue car", "a green tree"]


def _replica() -> object:
    pipe = build_pipeline("pixart-alpha")
    pipe._ditaccel_call_defaults = {"height": 16, "width": 16, "max_sequence_length": 16, "guidance_scale": 4.5}
    return pipe


def test_calibration_prompts_follow_the_metrics() -> None:
    assert runner.calibration_prompts(["psnr", "ssim"], PROMPTS) == PROMPTS
    assert runner.calibration_prompts(["adherence", "psnr"], PROMPTS) == shapes.calibration_prompts()


def test_ray_workers_calibrate_on_the_drivers_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = EvalConfig(methods="fp4-w4a8:0,magcache", out=tmp_path, prompts=PROMPTS, seeds=[0, 1], metrics=["psnr"],
                     steps=2, batch_size=2, quant_calib_prompts=2, ray_address="local", progress=False)
    run = runner._resolve(cfg, _replica())
    assert run.calib_prompts == PROMPTS and run.quant.prompts == PROMPTS[:2]
    told: list[tuple[list[int], tuple[object, ...]]] = []

    def fake_ray(cfg: EvalConfig, method: object, store: runner.ImageStore, idx: list[int], call_kwargs: dict,
                 advance: object, **kw: object) -> None:  # what generate_with_ray would send, without Ray
        told.extend(distributed.worker_jobs(cfg, method, store, idx, call_kwargs, chunk=2, **kw))

    monkeypatch.setattr(distributed, "generate_with_ray", fake_ray)
    run.live = list(run.methods)
    with runner._progress(False) as prog:
        runner._generate(run, prog)
    per_method = len(run.jobs) // 2 + len(run.jobs) % 2
    assert len(told) == len(run.methods) * per_method
    for part, args in told:
        *_, quant, calib = args
        assert quant == run.quant and calib == PROMPTS
        assert args[5] == [run.jobs[i][0] for i in part] and args[6] == [run.jobs[i][1] for i in part]


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("DITACCEL_TEST_RAY"),
                    reason="starts a local Ray cluster (minutes on a busy 2-core machine); set DITACCEL_TEST_RAY=1")
def test_ray_quantized_rows_equal_local_ones_on_a_non_bundled_model(tmp_path: Path) -> None:
    """End to end: AdaRound calibrates on the eval prompts in the workers too, so the images are the same."""
    from ditaccel.evaluate import evaluate
    from ditaccel.zoo import train

    tok = train.build_tokenizer()  # an untrained model of the bundled architecture, saved elsewhere
    pipe = train.assemble_pipeline(train.build_transformer().eval(), train.build_vae().eval(),
                                   train.build_text_encoder(len(tok)).eval(), tok)
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    common = dict(methods="fp4-w4a8:2", model=str(tmp_path / "model"), prompts=["a red circle", "a blue square"],
                  seeds=[0], steps=4, batch_size=2, timing_repeats=1, timing_images=1, progress=False)
    evaluate(EvalConfig(out=tmp_path / "ray", ray_address="local", **common))
    evaluate(EvalConfig(out=tmp_path / "local", **common))
    local = sorted((tmp_path / "local" / "images" / "fp4-w4a8_2").glob("*.png"))
    assert len(local) == 2
    for f in local:
        assert f.read_bytes() == (tmp_path / "ray" / "images" / "fp4-w4a8_2" / f.name).read_bytes()
