"""Spread a method's image generation over Ray workers (optional: ``pip install 'ditaccel[ray]'``).

Each worker loads the model itself (by path or hub id, so the driver ships no weights),
installs the method from its ``--methods`` text, and returns uint8 images for a chunk of job
indices. The driver writes every image atomically as its chunk arrives, so a crash or a lost
worker loses at most the chunks in flight, and a rerun generates only what is missing.
Workers quantize their own copy for quantization rows (the same deterministic settings).
"""

from __future__ import annotations

from typing import Any

from ditaccel.errors import DitaccelError


def _worker_generate(model: str | None, device: str, method_text: str, label: str, steps: int,
                     prompts: list[str], seeds: list[int], batch_size: int, call_kwargs: dict[str, Any],
                     quant_prompts: list[str], calib_prompts: list[str]) -> list[Any]:
    from ditaccel.evaluate.methods import QuantSettings, installed, parse_methods, prepare, resolve_methods
    from ditaccel.pipeline import generate_images, load_pipeline

    pipe = load_pipeline(model, device=device)
    methods = resolve_methods(pipe, parse_methods([method_text]), steps)
    m = next((x for x in methods if x.label == label), None)
    if m is None:
        raise DitaccelError(f"worker could not resolve method {label!r}")
    prepare(pipe, m, call_kwargs, QuantSettings(prompts=quant_prompts, batch_size=batch_size), calib_prompts)
    if m.skipped:
        raise DitaccelError(f"{label} cannot run on the worker: {m.skipped}")
    with installed(pipe, m, call_kwargs, calib_prompts):
        return generate_images(pipe, prompts, seeds, batch_size=batch_size, **call_kwargs)


def generate_with_ray(cfg: Any, method: Any, store: Any, idx: list[int], call_kwargs: dict[str, Any],
                      advance: Any, chunk: int | None = None) -> None:
    """Generate images ``idx`` of ``method`` on the Ray cluster at ``cfg.ray_address``."""
    try:
        import ray
    except ImportError:
        raise DitaccelError("--ray needs ray: pip install 'ditaccel[ray]'") from None
    if not ray.is_initialized():
        addr = None if cfg.ray_address in ("local", "") else cfg.ray_address
        ray.init(address=addr, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    from ditaccel.zoo import shapes

    calib = shapes.calibration_prompts()
    qprompts = calib[:cfg.quant_calib_prompts]
    remote = ray.remote(num_cpus=1)(_worker_generate)
    size = chunk or max(cfg.batch_size, 1) * 4
    pending = {}
    for start in range(0, len(idx), size):
        part = idx[start:start + size]
        ref = remote.remote(cfg.model, cfg.device, method.spec.text, method.label,
                            int(call_kwargs["num_inference_steps"]), [store.jobs[i][0] for i in part],
                            [store.jobs[i][1] for i in part], cfg.batch_size, call_kwargs, qprompts, calib)
        pending[ref] = part
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            part = pending.pop(ref)
            for i, img in zip(part, ray.get(ref), strict=True):
                store.write(method.label, i, img)
            advance(len(part))
