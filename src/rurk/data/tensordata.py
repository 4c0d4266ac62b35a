"""The in-memory dataset type every layer of rurk passes around."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorData:
    """A whole (sub)dataset held as tensors: ``x`` float in [0,1], NCHW (or N×F for tabular data),
    ``y`` int64 labels, ``index`` int64 positions in the source dataset (so every sample can be traced
    back to the file it came from)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __post_init__(self):
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.index.shape != (n,):
            raise ValueError(
                f"TensorData: x has {n} rows but y has shape {tuple(self.y.shape)} and index "
                f"{tuple(self.index.shape)}; expected ({n},) for both"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, rows) -> "TensorData":
        """Rows by position in *this* TensorData (not by source index)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return TensorData(self.x[rows], self.y[rows], self.index[rows])

    def to(self, device) -> "TensorData":
        return TensorData(self.x.to(device), self.y.to(device), self.index.to(device))

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1 if len(self) else 0

    @staticmethod
    def concat(*parts: "TensorData") -> "TensorData":
        return TensorData(
            torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), torch.cat([p.index for p in parts])
        )
