"""The rows of a traced (lean) decode, packed so that a step is one call on three tensors it changes in place.

- state, long [B, 3 + C]: each row's last token, its next position, the cache column its next token writes (the
  same for every row), then its mask over the C cache columns (1 = a real token of the row);
- kv [2 * layers, B, kv_heads, C, head_dim]: layer i's keys at 2i, its values at 2i + 1; the columns from `length`
  on are free (zeros, masked out);
- out, float64 [B, 2n]: the n tokens of the last call (exact as floats), then their log-probabilities.

Why packed: every tensor handed to a traced call takes the GIL again inside the call (the interpreter's reference
to a tensor that Python also holds is dropped under the GIL), and every tensor Python frees releases the GIL and
takes it back (torch's THPVariable_clear). Each of those waits for a request thread to let go of the GIL. With one
cache tensor per layer in and out, a step of the 2-layer tiny model released the GIL 16 times (DAM-3B's 28 layers:
~120); packed, 3 times (gdb on PyEval_SaveThread: 30 over 10 steps), and the step returns `out` itself, no new
tensor.
Columns come in blocks of CACHE_BLOCK, so a new block (a copy) is rare.
"""
from __future__ import annotations

import torch

CACHE_BLOCK = 32  # cache columns allocated at a time


def _blocks(columns: int) -> int:
    return -(-columns // CACHE_BLOCK) * CACHE_BLOCK


class PackedRows:
    """Rows in flight of a traced decode (see the module docstring); `tokens_per_call` = n."""

    def __init__(self, kv: torch.Tensor, mask: torch.Tensor, next_position: torch.Tensor, last: torch.Tensor,
                 tokens_per_call: int) -> None:
        """From a prefill: kv [2 * layers, b, kv_heads, T, head_dim], mask [b, T] (left padding 0), next_position
        [b, 1], last [b] (each row's first generated token)."""
        rows, self.length, self.n = mask.shape[0], mask.shape[1], tokens_per_call
        capacity = _blocks(self.length + self.n)
        self.kv = kv.new_zeros(*kv.shape[:3], capacity, kv.shape[4])
        self.kv[:, :, :, :self.length] = kv
        self.state = mask.new_zeros(rows, 3 + capacity, dtype=torch.long)
        self.state[:, 0] = last
        self.state[:, 1] = next_position[:, 0]
        self.state[:, 2] = self.length
        self.state[:, 3:3 + self.length] = mask
        self.out = torch.zeros(rows, 2 * self.n, dtype=torch.float64, device=kv.device)

    @property
    def rows(self) -> int:
        return self.state.shape[0]

    @property
    def mask(self) -> torch.Tensor:
        """[B, length]: 1 = a real token of the row."""
        return self.state[:, 3:3 + self.length]

    def step(self, lean) -> tuple[list[list[int]], list[list[float]]]:
        """n tokens for every row through `lean` (a dam_model.traced.LeanStep): (tokens, log-probabilities) per row."""
        if self.length + self.n > self.kv.shape[3]:
            self._resize(_blocks(self.length + self.n))
        out = lean(self.state, self.kv, self.out).tolist()
        self.length += self.n
        return [[int(t) for t in row[:self.n]] for row in out], [row[self.n:] for row in out]

    def merge(self, other: "PackedRows") -> None:
        """Append other's rows: the shorter side is left-padded (masked out) to the longer one's length."""
        length = max(self.length, other.length)
        capacity = _blocks(length + self.n)
        ours, rows = self.rows, self.rows + other.rows
        kv = self.kv.new_zeros(self.kv.shape[0], rows, self.kv.shape[2], capacity, self.kv.shape[4])
        state = self.state.new_zeros(rows, 3 + capacity)
        for part, at in ((self, slice(0, ours)), (other, slice(ours, rows))):
            start = length - part.length
            kv[:, at, :, start:length] = part.kv[:, :, :, :part.length]
            state[at, :2] = part.state[:, :2]
            state[at, 3 + start:3 + length] = part.mask
        state[:, 2] = length
        self.kv, self.state, self.length = kv, state, length
        self.out = self.out.new_zeros(rows, self.out.shape[1])

    def keep(self, rows: list[int]) -> None:
        """Keep `rows` (by position), dropping the leading columns none of them attends to any more (the left padding
        of rows that left), so a session that lives on does not grow."""
        index = torch.tensor(rows, device=self.state.device)
        state = self.state.index_select(0, index)
        used = torch.nonzero(state[:, 3:3 + self.length].any(dim=0)).flatten()
        first = int(used[0]) if len(used) else self.length
        self.kv = self.kv.narrow(3, first, self.kv.shape[3] - first).index_select(1, index)
        state[:, 2] -= first
        self.state = torch.cat([state[:, :3], state[:, 3 + first:]], dim=1)
        self.length -= first
        self.out = self.out.new_zeros(len(rows), self.out.shape[1])

    def _resize(self, capacity: int) -> None:
        kv = self.kv.new_zeros(*self.kv.shape[:3], capacity, self.kv.shape[4])
        kv[:, :, :, :self.length] = self.kv[:, :, :, :self.length]
        state = self.state.new_zeros(self.rows, 3 + capacity)
        state[:, :3 + self.length] = self.state[:, :3 + self.length]
        self.kv, self.state = kv, state
