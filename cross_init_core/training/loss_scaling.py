"""Dynamic loss scaling for float16 UNets: without it their backward flushes the tiny gradients reaching
the text context to zero. bfloat16 has float32's exponent range and needs none."""

from __future__ import annotations

from typing import Any

import torch

from .. import host

# Dynamic loss scaling for float16 UNets, torch.amp.GradScaler's rule: scale the loss, unscale the float32
# gradients, skip a step whose gradients hold inf/NaN and halve the scale, double it after a run of good steps.
#
# Initial scale 2^16: the MSE's gradient w.r.t. each predicted element is 2 x error / N for the N elements
# of a batch; the error is about 1 (unit-variance noise target), and at 512 px, batch 8, N = 8 x 4 x 64 x 64
# = 131072, so the backward starts at ~1.5e-5 per element and reaches the text context at ~1e-8, under fp16's
# smallest subnormal (6e-8): flushed to zero. x 2^16 puts the output gradient near 1, the middle of fp16's
# range, lifts ~1e-8 to ~6.5e-4 (a normal fp16 number, 6.1e-5 and up, with full 11-bit precision) and
# leaves four decades of headroom (to 65504) for gradients growing inside the UNet; an overflow costs one
# skipped step. Powers of two make scaling and unscaling exact.
LOSS_SCALE_INIT = 2.0**16
LOSS_SCALE_BACKOFF = 0.5
LOSS_SCALE_GROWTH = 2.0
# GradScaler's 2000 would never grow within a 25-320 step run; 50 good steps re-probe a higher scale after
# a back-off at the cost of at most one skipped step per 50
LOSS_SCALE_GROWTH_INTERVAL = 50


class LossScaler:
    """Dynamic loss scaling (enabled for float16 UNets); a no-op pass-through when disabled.

    The scale is a Python float: the skip decision needs the gradients' finite flag on the host, one sync
    per step, which only float16 runs pay.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.scale = LOSS_SCALE_INIT if enabled else 1.0
        self.good_steps = 0

    @classmethod
    def for_model(cls, model: Any) -> LossScaler:
        return cls(host.unet_compute_dtype(model) == torch.float16)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_(self, params: dict[str, torch.Tensor]) -> None:
        """Divides the accumulated (float32) gradients by the scale, in place."""
        if self.enabled:
            for p in params.values():
                if p.grad is not None:
                    p.grad.mul_(1.0 / self.scale)

    def update(self, finite: bool) -> bool:
        """Adjusts the scale after a step's backward; True when the step must be skipped."""
        if not self.enabled:
            return False
        if not finite:
            self.scale *= LOSS_SCALE_BACKOFF
            self.good_steps = 0
            return True
        self.good_steps += 1
        if self.good_steps >= LOSS_SCALE_GROWTH_INTERVAL:
            self.scale *= LOSS_SCALE_GROWTH
            self.good_steps = 0
        return False
