"""Spread a method's image generation over Ray workers (optional: ``pip install 'ditaccel[ray]'``).

Each worker loads the model itself (by path or hub id, so the driver ships no weights),
installs the method from its ``--methods`` text, and returns uint8 images for a chunk of job
indices. The driver writes every image atomically as its chunk arrives, so a crash or a lost
worker loses at most the chunks in flight, and a rerun generates only what is missing.
Workers quantize their own copy for quantization rows with the driver's settings and calibration
prompts (the same deterministic result).
"""

from __future__ import annotations

from typing import Any

from ditaccel.errors import DitaccelError
from ditaccel.evaluate.methods import QuantSettings


def _worker_generate(model: str | None, device: str, method_text: str, label: str, steps: int,
                     prompts: list[str], seeds: list[int], batch_size: int, call_kwargs: dict[str, Any],
                     quant: QuantSettings, calib_prompts: list[str]) -> list[Any]:
    from ditaccel.evaluate.methods import installed, parse_methods, prepare, resolve_methods
    from ditaccel.pipeline import generate_images, load_pipeline

    pipe = load_pipeline(model, device=device)
    methods = resolve_methods(pipe, parse_methods([method_text]), steps)
    m = next((x for x in methods if x.label == label), None)
    if m is None:
        raise DitaccelError(f"worker could not resolve method {label!r}")
    prepare(pipe, m, call_kwargs, quant, calib_prompts)
    if m.skipped:
        raise DitaccelError(f"{label} cannot run on the worker: {m.skipped}")
    with installed(pipe, m, call_kwargs, calib_prompts):
        return generate_images(pipe, prompts, seeds, batch_size=batch_size, **call_kwargs)


def worker_jobs(cfg: Any, method: Any, store: Any, idx: list[int], call_kwargs: dict[str, Any],
                quant: QuantSettings, calib_prompts: list[str],
                chunk: int | None = None) -> list[tuple[list[int], tuple[Any, ...]]]:
    """The chunks of ``idx`` and the ``_worker_generate`` arguments for each.

    Why separate: what a worker is told (above all the calibration the driver chose, see
    ``runner.calibration_prompts``) can be checked without starting Ray.
    """
    size = chunk or max(cfg.batch_size, 1) * 4
    jobs = []
    for start in range(0, len(idx), size):
        part = idx[start:start + size]
        args = (cfg.model, cfg.device, method.spec.text, method.label, int(call_kwargs["num_inference_steps"]),
                [store.jobs[i][0] for i in part], [store.jobs[i][1] for i in part], cfg.batch_size, call_kwargs,
                quant, list(calib_prompts))
        jobs.append((part, args))
    return jobs


def generate_with_ray(cfg: Any, method: Any, store: Any, idx: list[int], call_kwargs: dict[str, Any],
                      advance: Any, *, quant: QuantSettings, calib_prompts: list[str],
                      chunk: int | None = None) -> None:
    """Generate images ``idx`` of ``method`` on the Ray cluster at ``cfg.ray_address``.

    ``quant`` and ``calib_prompts`` are the driver's, so workers calibrate exactly as a local run would.
    """
    try:
        import ray
    except ImportError:
        raise DitaccelError("--ray needs ray: pip install 'ditaccel[ray]'") from None
    if not ray.is_initialized():
        addr = None if cfg.ray_address in ("local", "") else cfg.ray_address
        ray.init(address=addr, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    remote = ray.remote(num_cpus=1)(_worker_generate)
    pending = {remote.remote(*args): part
               for part, args in worker_jobs(cfg, method, store, idx, call_kwargs, quant, calib_prompts, chunk)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            part = pending.pop(ref)
            for i, img in zip(part, ray.get(ref), strict=True):
                store.write(method.label, i, img)
            advance(len(part))
