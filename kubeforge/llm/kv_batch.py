"""The running batch's KV cache: one transformers DynamicCache whose rows are left-padded to a common length.

Rows join (their prefilled cache is padded to the batch's length, or the batch to theirs) and leave (rows are
selected away and the columns that became padding for every row are cut) between decode steps, so the cache is
reused across steps and a finished sequence frees its memory at once. The 2-D attention mask marks the padding and
explicit position ids keep every row's positions its own, so a row computes what it would compute alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from kubeforge.models import ModelError


def check_full_attention(cache: DynamicCache) -> None:
    """The padded layout needs plain growing layers; sliding-window or linear-attention layers are refused."""
    odd = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if odd:
        raise ModelError(f"the continuous-batching engine serves full-attention decoders only; this model's cache "
                         f"has {', '.join(sorted(odd))} layers")


def _left_pad(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    if columns == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@dataclass
class KVBatch:
    cache: DynamicCache
    mask: torch.Tensor  # [rows, columns] 1 for a real token, 0 for padding
    lengths: list[int]  # real tokens per row: the position of the row's next token

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def _pad_columns(self, columns: int) -> None:
        extra = columns - self.columns
        if extra <= 0:
            return
        for layer in self.cache.layers:
            layer.keys = _left_pad(layer.keys, extra, dim=2)
            layer.values = _left_pad(layer.values, extra, dim=2)
        self.mask = _left_pad(self.mask, extra, dim=1)

    def extend(self, other: KVBatch) -> None:
        """Append ``other``'s rows after this batch's rows."""
        columns = max(self.columns, other.columns)
        self._pad_columns(columns)
        other._pad_columns(columns)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)
        self.lengths = self.lengths + other.lengths

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order) and cut the columns that are now padding everywhere."""
        lengths = [self.lengths[row] for row in rows]
        cut = self.columns - max(lengths)
        index = torch.tensor(rows, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:]
            layer.values = layer.values.index_select(0, index)[:, :, cut:]
        self.mask = self.mask.index_select(0, index)[:, cut:]
        self.lengths = lengths

    def repeat_rows(self, counts: list[int]) -> None:
        """Row i becomes counts[i] identical rows (n choices of one prompt share one prefill)."""
        self.select([row for row, count in enumerate(counts) for _ in range(count)])

    def decode_inputs(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(attention mask, position ids) for one more token per row; the mask is kept for the next step, and
        handed to the model only when some row is padded (without one, transformers builds no mask at all)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        positions = torch.tensor(self.lengths, device=self.mask.device).unsqueeze(1)
        self.lengths = [length + 1 for length in self.lengths]
        return (self.mask if min(self.lengths) < self.columns else None), positions


def prefill_inputs(prompts: list[list[int]], pad_id: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (input ids, attention mask, position ids) for a group of prompts prefilled together; the mask
    is the batch's, the model needs it only when the prompts' lengths differ."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions
