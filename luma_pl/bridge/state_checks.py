"""Checks a bridge's checkpoint state passes before any of it is used (issue 13: untrusted content).

A checkpoint is data from outside: a NaN or inf in ``W``, a tensor of another shape than the
config's ``(d_c, d_s)``, a negative counter or a drift bound of NaN would be accepted by
``load_state_dict`` and only fail (or silently certify nonsense) much later. The bridges'
``_load_from_state_dict`` call ``check_state`` on their own keys first, so every load path (a
bridge on its own, a bridge inside a LightningModule restored by ``--ckpt_path``, and
``luma_pl.stream.bridge_from_state``) refuses such a state with a ``ValueError`` naming the tensor,
the bad value and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FIX = "pass a bridge checkpoint written by train.py (this one is corrupt or was edited)"


def _first_bad(t: torch.Tensor, bad: torch.Tensor) -> str:
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"{t[idx].item()!r} at index {idx}" if idx else f"{t.item()!r}"


def check_tensor(name: str, t, shape: tuple[int, ...] | None = None, finite: bool = True,
                 min_value: float | None = None, max_value: float | None = None,
                 allow_inf: bool = False) -> None:
    """Refuse ``t`` unless it is a tensor of ``shape`` whose entries are finite (or +inf when
    ``allow_inf``; never NaN) and within ``[min_value, max_value]``. ``name`` is the state key."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"bridge state tensor {name!r} is a {type(t).__name__}, expected a tensor; {FIX}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"bridge state tensor {name!r} has shape {tuple(t.shape)} but the bridge's config needs "
                         f"{tuple(shape)}; {FIX}, with d_s/d_c matching its tensors")
    if t.numel() == 0:
        return
    if t.is_floating_point() or t.is_complex():
        if t.is_complex():
            raise ValueError(f"bridge state tensor {name!r} is complex ({t.dtype}); {FIX}")
        nan = torch.isnan(t)
        if bool(nan.any()):
            raise ValueError(f"bridge state tensor {name!r} holds NaN ({_first_bad(t, nan)}); {FIX}")
        if finite:
            inf = torch.isinf(t) & ~((t > 0) if allow_inf else torch.zeros_like(t, dtype=torch.bool))
            if bool(inf.any()):
                raise ValueError(f"bridge state tensor {name!r} holds a non-finite value ({_first_bad(t, inf)}); "
                                 f"{FIX}")
    elif t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool):
        raise ValueError(f"bridge state tensor {name!r} has dtype {t.dtype}; {FIX}")
    if min_value is not None:
        low = t < min_value
        if bool(low.any()):
            raise ValueError(f"bridge state tensor {name!r} holds {_first_bad(t, low)}, below its minimum "
                             f"{min_value!r}; {FIX}")
    if max_value is not None:
        high = t > max_value
        if bool(high.any()):
            raise ValueError(f"bridge state tensor {name!r} holds {_first_bad(t, high)}, above its maximum "
                             f"{max_value!r}; {FIX}")


def check_state(module: torch.nn.Module, state_dict: Mapping, prefix: str,
                ranges: Mapping[str, dict] | None = None) -> None:
    """Check every parameter and buffer ``module`` holds (its children's too) that ``state_dict``
    has under ``prefix``: the shape the module was built with (from its config), finite values,
    and the per-key ``ranges`` (``{key: dict(min_value=, max_value=, allow_inf=)}``, keys relative to
    the module). Missing keys are left to ``load_state_dict``'s own strict check."""
    ranges = ranges or {}
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    for key, current in own.items():
        full = prefix + key
        if full not in state_dict:
            continue
        check_tensor(full, state_dict[full], tuple(current.shape), **ranges.get(key, {}))
