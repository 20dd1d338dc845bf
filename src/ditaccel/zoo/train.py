"""Train the bundled model: a small PixArt-alpha pipeline on the shapes world, on a CPU.

Two phases, both resumable from ``<work>/``:
1. a small AutoencoderKL (64x64 RGB -> 16x16x4 latents), trained on random shapes so its decoder
   is robust, with noise added to latents so small errors from caching or quantization decode
   gracefully;
2. a 12-block PixArtTransformer2DModel plus a tiny T5 encoder, trained jointly with
   v-prediction, caption dropout (for classifier-free guidance), EMA and a cosine learning rate.

The result is a standard diffusers folder that ``PixArtAlphaPipeline.from_pretrained`` loads with
no custom code. Run ``python -m ditaccel.zoo.train --help``; the defaults reproduce the bundled model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ditaccel._io import atomic_write, atomic_write_json
from ditaccel.zoo import shapes

TRAIN_TEXT_LEN = 16  # the pipeline pads to 120 with a mask; masked padding changes nothing
SCHEDULER_KW = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
    prediction_type="v_prediction",
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the shapes vocabulary (T5-style special tokens)."""
    words = sorted({w for p in shapes.all_prompts() for w in p.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=120
    )


def build_text_encoder(vocab_size: int) -> T5EncoderModel:
    cfg = T5Config(
        vocab_size=vocab_size, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
        norm_num_groups=8, sample_size=64,
    )


def build_transformer() -> PixArtTransformer2DModel:
    return PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4, num_layers=12,
        cross_attention_dim=128, sample_size=16, patch_size=2, caption_channels=128,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        interpolation_scale=1, use_additional_conditions=False,
    )


def _images_to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, tmp))


def train_vae(work: Path, steps: int, batch: int, seed: int, log) -> AutoencoderKL:
    """Phase 1. Returns the trained VAE with its scaling factor set."""
    final = work / "vae_final.safetensors"
    vae = build_vae()
    if final.exists():
        vae.load_state_dict(load_file(final))
        meta = json.loads((work / "vae_meta.json").read_text())
        vae.register_to_config(scaling_factor=meta["scaling_factor"])
        log(f"vae: loaded from {final}")
        return vae
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    exact = [shapes.render(p) for p in shapes.all_prompts()]
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    for step in range(steps):
        imgs = [exact[i] for i in rng.integers(0, len(exact), batch // 2)]
        imgs += [shapes.render_random(rng) for _ in range(batch - len(imgs))]
        x = _images_to_tensor(imgs)
        post = vae.encode(x).latent_dist
        z = post.sample()
        z = z + 0.1 * z.detach().std() * torch.randn_like(z)  # decoder robustness to latent errors
        rec = vae.decode(z).sample
        kl = post.kl().mean() / (64 * 64 * 3)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} kl {kl.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        z = vae.encode(_images_to_tensor(exact)).latent_dist.mode()
        rec = vae.decode(z).sample
    acc = shapes.adherence_rates(
        [((r.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1) for r in rec], shapes.all_prompts()
    )
    scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"vae: reconstruction adherence {acc}, latent std {z.std().item():.3f} -> scaling {scaling:.4f}")
    _save_state(final, vae.state_dict())
    atomic_write_json(work / "vae_meta.json", {"scaling_factor": scaling, "recon_adherence": acc})
    return vae


def _encode_text(tok: PreTrainedTokenizerFast, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(prompts, padding="max_length", max_length=TRAIN_TEXT_LEN, truncation=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def assemble_pipeline(transformer, vae, text_encoder, tokenizer) -> PixArtAlphaPipeline:
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_KW, algorithm_type="dpmsolver++", solver_order=2)
    return PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


DEFAULT_CALL = {"num_inference_steps": 20, "guidance_scale": 3.0, "use_resolution_binning": False}


@torch.no_grad()
def sample_adherence(pipe: PixArtAlphaPipeline, prompts: list[str], seed: int, **kw) -> dict[str, float]:
    call = {**DEFAULT_CALL, **kw}
    gen = [torch.Generator().manual_seed(seed * 100003 + i) for i in range(len(prompts))]
    out = pipe(prompts, generator=gen, output_type="np", **call).images
    return shapes.adherence_rates(list(out), prompts)


@dataclass
class _ShapeData:
    """Phase 2's whole data set, encoded once: every shapes prompt's latents and tokens, and the empty prompt's."""

    latents: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    null_ids: torch.Tensor
    null_mask: torch.Tensor


def _shape_data(vae: AutoencoderKL, tokenizer: PreTrainedTokenizerFast, prompts: list[str]) -> _ShapeData:
    with torch.no_grad():
        x = _images_to_tensor([shapes.render(p) for p in prompts])
        latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    return _ShapeData(latents, *_encode_text(tokenizer, prompts), *_encode_text(tokenizer, [""]))


@dataclass
class _DitModels:
    """What phase 2 trains and checkpoints: the models, their EMA copies and the optimizer."""

    transformer: PixArtTransformer2DModel
    text_encoder: T5EncoderModel
    ema_t: PixArtTransformer2DModel
    ema_e: T5EncoderModel
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]

    def by_prefix(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        """The checkpoint's key prefix of each model."""
        return (("t.", self.transformer), ("e.", self.text_encoder), ("et.", self.ema_t), ("ee.", self.ema_e))


def _dit_models(transformer: PixArtTransformer2DModel, text_encoder: T5EncoderModel, lr: float) -> _DitModels:
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema_t, ema_e = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    for p in (*ema_t.parameters(), *ema_e.parameters()):
        p.requires_grad_(False)
    return _DitModels(transformer, text_encoder, ema_t, ema_e, opt, params)


def _resume_dit(work: Path, m: _DitModels, log) -> int:
    """Load ``work``'s phase-2 checkpoint into ``m`` if there is one; returns the step to continue from."""
    ckpt = work / "dit_ckpt.safetensors"
    if not ckpt.exists():
        return 0
    st = load_file(ckpt)
    for prefix, mod in m.by_prefix():
        mod.load_state_dict({k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)})
    meta = json.loads((work / "dit_meta.json").read_text())
    m.opt.load_state_dict(torch.load(work / "dit_opt.pt", weights_only=True))
    log(f"dit: resumed at step {meta['step']}")
    return meta["step"]


def _save_dit(work: Path, m: _DitModels, done: int) -> None:
    st = {}
    for prefix, mod in m.by_prefix():
        st.update({prefix + k: v for k, v in mod.state_dict().items()})
    _save_state(work / "dit_ckpt.safetensors", st)
    atomic_write(work / "dit_opt.pt", lambda tmp: torch.save(m.opt.state_dict(), tmp))
    atomic_write_json(work / "dit_meta.json", {"step": done})


def _lr_schedule(lr: float, steps: int) -> Callable[[int], float]:
    """Linear warm-up, then a cosine down to 5% of ``lr``."""
    warmup = min(300, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))

    return lr_at


def _dit_step(m: _DitModels, data: _ShapeData, noise_sched: DDPMScheduler, gen: torch.Generator, batch: int,
              lr: float, step: int) -> torch.Tensor:
    """One v-prediction step with 10% caption dropout, then the EMA update; returns the loss."""
    idx = torch.randint(0, len(data.ids), (batch,), generator=gen)
    drop = torch.rand(batch, generator=gen) < 0.1
    b_ids = torch.where(drop[:, None], data.null_ids.expand(batch, -1), data.ids[idx])
    b_mask = torch.where(drop[:, None], data.null_mask.expand(batch, -1), data.mask[idx])
    x0 = data.latents[idx]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    xt = noise_sched.add_noise(x0, noise, t)
    target = noise_sched.get_velocity(x0, noise, t)
    for g in m.opt.param_groups:
        g["lr"] = lr
    emb = m.text_encoder(b_ids, attention_mask=b_mask)[0]
    pred = m.transformer(
        xt, encoder_hidden_states=emb, encoder_attention_mask=b_mask, timestep=t,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False,
    )[0]
    loss = F.mse_loss(pred, target)
    m.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.params, 1.0)
    m.opt.step()
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for src, dst in ((m.transformer, m.ema_t), (m.text_encoder, m.ema_e)):
            for ps, pd in zip(src.parameters(), dst.parameters(), strict=True):
                pd.lerp_(ps, 1 - decay)
    return loss


def train_dit(
    work: Path, vae: AutoencoderKL, steps: int, batch: int, lr: float, seed: int, eval_every: int, log
) -> PixArtAlphaPipeline:
    """Phase 2. Resumes from ``work/dit_ckpt.safetensors`` when present."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer))
    transformer = build_transformer()
    noise_sched = DDPMScheduler(**SCHEDULER_KW)
    data = _shape_data(vae, tokenizer, shapes.all_prompts())
    m = _dit_models(transformer, text_encoder, lr)
    start = _resume_dit(work, m, log)
    lr_at = _lr_schedule(lr, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    transformer.train()
    text_encoder.train()
    for step in range(start, steps):
        # Fixed per-step seeding keeps a resumed run on the same data stream.
        gen.manual_seed(seed * 1_000_003 + step)
        loss = _dit_step(m, data, noise_sched, gen, batch, lr_at(step), step)
        done = step + 1
        if step % 50 == 0:
            rate = (time.time() - t0) / (done - start)
            log(f"dit step {step}/{steps} loss {loss.item():.4f} lr {lr_at(step):.2e} {rate:.2f}s/step")
        if done % eval_every == 0 or done == steps:
            _save_dit(work, m, done)
            pipe = assemble_pipeline(m.ema_t, vae, m.ema_e, tokenizer)
            acc = sample_adherence(pipe, shapes.calibration_prompts(), seed=1)
            log(f"dit eval step {done}: calibration adherence (EMA, 20 steps) {acc}")
    return assemble_pipeline(m.ema_t, vae, m.ema_e, tokenizer)


def save_bundled(pipe: PixArtAlphaPipeline, out: Path, info: dict) -> None:
    """Write a diffusers folder; model_index names classes that exist in transformers 4.x and 5.x."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    index = json.loads((tmp / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "ditaccel.json").write_text(json.dumps({"call_defaults": DEFAULT_CALL, **info}, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("train_out"), help="checkpoints and logs (resumable)")
    ap.add_argument("--out", type=Path, default=Path("src/ditaccel/zoo/bundled"))
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    logf = open(args.work / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t0 = time.time()
    log(f"args: {vars(args)}")
    vae = train_vae(args.work, args.vae_steps, args.vae_batch, args.seed, log)
    vae.requires_grad_(False)
    pipe = train_dit(args.work, vae, args.steps, args.batch, args.lr, args.seed, args.eval_every, log)
    info = {"train_args": {k: str(v) for k, v in vars(args).items()}, "train_seconds_this_run": time.time() - t0}
    save_bundled(pipe, args.out, info)
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
