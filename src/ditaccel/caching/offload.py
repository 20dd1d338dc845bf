"""Keep diffusers hooks working under ``pipe.enable_model_cpu_offload()``.

Why: model offload puts an accelerate hook on each component by replacing its ``forward``.
After every pipeline call, ``maybe_free_model_hooks`` removes that hook (restoring the
``forward`` accelerate saw when it was added) and adds it again. A diffusers hook registered on
the component *after* offload was enabled sits above accelerate's wrapper, so the first removal
drops it silently: a schedule's step tracker (or a peer's cache context) stops running from the
second generation on. Registering beneath accelerate's hook makes it part of the ``forward``
accelerate saves, so every remove/re-add cycle keeps it. Group offload needs nothing: it uses
diffusers' own hook registry, which stacks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def beneath_offload_hook(module: torch.nn.Module) -> Iterator[None]:
    """Lift accelerate's hook off ``module`` (if any) while hooks are (un)registered, then put it back on top."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        yield
        return
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    remove_hook_from_module(module)
    try:
        yield
    finally:
        add_hook_to_module(module, hook)
