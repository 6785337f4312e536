"""Level-by-level evaluation of a circuit on a batch (SPEC.md §2.1 "Evaluation", §2.2).

A circuit is evaluated one *depth level* at a time. The state is a tensor of shape
``(live values, B)`` -- one row per gate value that is still needed, the batch along the
contiguous dimension, so that every gather copies whole rows. A level is four index vectors and
two coefficient vectors (a :class:`Level`): the new gates of the level read rows ``left`` and
``right`` of the state and compute ``left_coef * left + right_coef * right`` (or ``left * right``
for product gates); rows ``keep`` of the old state survive (values still read by a later level
or designated as outputs). So a level costs two gathers, two scalings, one addition and one
concatenation over ``B`` columns -- no Python loop over gates -- and the memory is
``O(B * max live values)`` instead of ``O(B * size)``.

This pure-PyTorch kernel is its own reference: it is plain ``index_select`` / ``mul`` / ``cat``
and therefore differentiable, ``torch.compile``-able and ``vmap``-able.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Level:
    """One depth level of a circuit evaluation plan.

    Attributes:
        keep: ``(k,)`` rows of the current state that stay alive.
        left, right: ``(w,)`` rows of the current state read by the ``w`` new gates.
        left_coef, right_coef: ``(w,)`` constants of the new linear gates.
        product: ``(w,)`` boolean mask of product gates (``left * right``), or ``None`` when the
            level has none (linear circuits).
    The new state is ``cat(state[keep], new_values)``.
    """

    keep: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    left_coef: torch.Tensor
    right_coef: torch.Tensor
    product: torch.Tensor | None = None

    def to(self, dtype: torch.dtype, device: torch.device | str | None) -> "Level":
        """Coefficients cast to ``dtype``, everything moved to ``device``."""
        return Level(
            keep=self.keep.to(device),
            left=self.left.to(device),
            right=self.right.to(device),
            left_coef=self.left_coef.to(device=device, dtype=dtype),
            right_coef=self.right_coef.to(device=device, dtype=dtype),
            product=None if self.product is None else self.product.to(device),
        )


def evaluate_levels(state: torch.Tensor, levels: list[Level], output_index: torch.Tensor) -> torch.Tensor:
    """Run the levels of a plan on ``state`` of shape ``(sources, B)``; returns ``(outputs, B)``.

    ``state`` holds the depth-0 values (inputs, constants) in the order the plan expects, with
    the dtype of the computation (the coefficients must have the same dtype). Cost per level
    ``w``: ``2 w B`` multiplications and ``w B`` additions plus ``(k + 2 w) B`` row copies.
    """
    for level in levels:
        left = state.index_select(0, level.left)
        right = state.index_select(0, level.right)
        if level.product is not None:
            linear = left * level.left_coef[:, None] + right * level.right_coef[:, None]
            new = torch.where(level.product[:, None], left * right, linear)
        else:
            # ``left`` is a fresh gather that nothing else reads: scale it in place, fuse the rest
            new = torch.addcmul(left.mul_(level.left_coef[:, None]), right, level.right_coef[:, None])
        state = torch.cat([state.index_select(0, level.keep), new], dim=0)
    return state.index_select(0, output_index)
