"""An exponential moving average (EMA) of a model's weights, as stored in model folders.

Diffusion and flow models sample better from an average of their recent weights than from
the last ones.  :class:`EMA` keeps ``shadow = decay * shadow + (1 - decay) * weight`` for
every floating-point parameter after each training step (the training loop attaches it to
the model as ``model.ema``); every model folder written then holds ``ema.safetensors`` and
``model.yaml`` records ``ema: {decay, use_for_sampling}``: loading a model folder uses the
averaged weights when ``use_for_sampling`` is true, unless the live weights are asked for.

>>> import torch
>>> net = torch.nn.Linear(2, 1)
>>> ema = EMA(net, decay=0.5)
>>> with torch.no_grad():
...     _ = net.weight.add_(2.0)
>>> ema.update(net)
>>> bool(torch.allclose(ema.shadow["weight"], net.weight - 1.0))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.errors import FormatError

EMA_FILE = "ema.safetensors"


class EMA:
    """Shadow copies of the floating-point parameters of ``module``."""

    def __init__(self, module: nn.Module, decay: float, use_for_sampling: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.use_for_sampling = bool(use_for_sampling)
        self.shadow: dict[str, Tensor] = {
            k: p.detach().clone() for k, p in module.named_parameters() if p.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [params[k].detach() for k in names],
                             1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("the stored EMA weights do not match the model's parameters")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def meta(self) -> dict[str, Any]:
        return {"decay": self.decay, "use_for_sampling": self.use_for_sampling}

    @contextmanager
    def sampling_weights(self, module: nn.Module) -> Iterator[None]:
        """Within the block ``module`` holds the weights it will sample with (the averages
        when ``use_for_sampling``); its own weights are put back afterwards."""
        if not self.use_for_sampling:
            yield
            return
        params = dict(module.named_parameters())
        live = {k: params[k].detach().clone() for k in self.shadow}
        try:
            load_parameters(module, self.shadow)
            yield
        finally:
            load_parameters(module, live)


@torch.no_grad()
def load_parameters(module: nn.Module, values: dict[str, Tensor]) -> None:
    """Copy ``values`` into the parameters of ``module`` of the same names."""
    params = dict(module.named_parameters())
    for k, v in values.items():
        params[k].copy_(v)


def write_ema(model: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
    """Model-folder hook: write ``ema.safetensors`` and record it in ``meta`` when the
    training loop attached an :class:`EMA` to ``model`` (as ``model.ema``)."""
    ema = getattr(model, "ema", None)
    if not isinstance(ema, EMA):
        return
    from safetensors.torch import save_file
    save_file(ema.state_dict(), str(directory / EMA_FILE))
    meta["ema"] = ema.meta()


def apply_ema(model: nn.Module, directory: Path, meta: dict[str, Any],
              weights: str = "auto") -> None:
    """Model-folder hook: load the averaged weights into ``model`` when the folder says
    so (``weights="auto"``) or when asked (``"ema"``); ``"live"`` keeps the last weights."""
    if weights not in ("auto", "ema", "live"):
        raise ValueError(f"weights must be auto, ema or live, got {weights!r}")
    info = meta.get("ema")
    if weights == "live" or (weights == "auto" and not (info or {}).get("use_for_sampling")):
        return
    path = directory / EMA_FILE
    if not info or not path.is_file():
        raise FormatError("the model folder holds no averaged (EMA) weights", directory)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"corrupt or not a safetensors file ({exc})", path) from None
    if set(state) - {k for k, _ in model.named_parameters()}:
        raise FormatError("EMA weights name parameters the model does not have", path)
    load_parameters(model, state)
