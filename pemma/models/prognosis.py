"""Prognosis: a risk score from the segmentation encoder's features and, optionally, clinical records.

- `EHRTokens`: each clinical variable becomes a token, value x weight + bias when recorded, a learned
  missing-value token when not: missing entries are modelled, never silently zero-imputed.
- `SurvivalHead`: image feature -> one token; the image and EHR tokens (either may be absent) are
  mean-pooled and mapped to a log-hazard (Cox). With `mix="attention"` one pre-norm transformer
  layer mixes the tokens first; the default keeps the head linear in each token, which on small
  cohorts generalises like a penalised Cox model (the real-data check holds it to lifelines').
- `PrognosisModel`: any method's segmentation model with forward hooks on the backbone's bottleneck
  (every copy of it: late fusion has two), pooled, into the head.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from pemma.data.hecktor import CLINICAL_COLUMNS

CLINICAL_VARIABLES = CLINICAL_COLUMNS  # the EHR tokens, in this order


@dataclass(frozen=True)
class TableEncoding:
    """How a table's columns become (values, present) arrays: standardised with training statistics."""

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: tuple[str, ...]) -> TableEncoding:
        values = numeric(table, columns)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return cls(tuple(columns), tuple(map(float, mean)), tuple(map(float, std)))

    def transform(self, table: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        values = (numeric(table, self.columns) - np.array(self.mean)) / np.array(self.std)
        present = np.isfinite(values)
        return (
            torch.as_tensor(np.where(present, values, 0.0), dtype=torch.float32),
            torch.as_tensor(present),
        )


def numeric(table: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Columns as floats (NaN = missing); Gender M/F -> 1/0; anything else unparseable is an error."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"clinical table lacks column(s) {missing}; has {list(table.columns)}")
    out = []
    for column in columns:
        series = table[column]
        mapped = series.map({"M": 1.0, "F": 0.0, 1: 1.0, 0: 0.0}) if column == "Gender" else series
        converted = pd.to_numeric(mapped, errors="coerce")
        bad = series.notna() & converted.isna()
        if bad.any():
            raise ValueError(f"clinical column {column!r}: not a number for {list(series[bad].index[:5])}")
        out.append(converted.to_numpy(dtype=float))
    return np.stack(out, axis=1)


class EHRTokens(nn.Module):
    def __init__(self, variables: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(variables, dim) * 0.1)
        self.bias = nn.Parameter(torch.zeros(variables, dim))
        self.missing = nn.Parameter(torch.randn(variables, dim) * 0.1)

    def forward(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        tokens = values.unsqueeze(-1) * self.weight + self.bias
        return torch.where(present.unsqueeze(-1), tokens, self.missing.expand_as(tokens))


class SurvivalHead(nn.Module):
    def __init__(
        self, image_dim: int | None, variables: int, dim: int = 32, dropout: float = 0.1, mix: str = "mean"
    ) -> None:
        super().__init__()
        if image_dim is None and variables == 0:
            raise ValueError("a survival head needs image features, clinical variables, or both")
        if mix not in ("mean", "attention"):
            raise ValueError(f"prognosis head mix: expected mean or attention, got {mix!r}")
        self.image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim)) if image_dim else None
        self.ehr = EHRTokens(variables, dim) if variables else None
        self.mix = (
            nn.TransformerEncoderLayer(
                dim, nhead=2, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
            )
            if mix == "attention"
            else nn.Identity()
        )
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))

    def forward(
        self,
        image: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-hazard per patient, shape (batch,)."""
        tokens = []
        if self.image is not None:
            tokens.append(self.image(image).unsqueeze(1))
        if self.ehr is not None:
            tokens.append(self.ehr(values, present))
        x = self.mix(torch.cat(tokens, dim=1))
        return self.out(x.mean(dim=1)).squeeze(-1)


def pool(features: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens -> mean over tokens; (B, C, *spatial) maps -> mean over space."""
    if features.dim() == 3:
        return features.mean(dim=1)
    return features.flatten(2).mean(dim=2)


class _BottleneckReached(Exception):
    """Raised by the last bottleneck hook of a forward: nothing after it feeds the survival head."""


class PrognosisModel(nn.Module):
    """A segmentation model (any method's) whose bottleneck features feed a survival head.

    The forward stops once every bottleneck has been reached (`stop_at_bottleneck`): the decoder's
    output never reached the head, so skipping it changes no risk and no gradient, and saves most
    of a step (the decoder is the full-resolution part). A model whose input leaves one of its
    bottlenecks unused (late fusion on one modality) runs to the end."""

    def __init__(
        self, segmentation: nn.Module, bottleneck: str, image_dim: int, variables: int, mix: str = "mean"
    ) -> None:
        super().__init__()
        self.segmentation = segmentation
        self.head = SurvivalHead(image_dim, variables, mix=mix)
        pattern = rf"(.*\.)?{re.escape(bottleneck)}"
        hooked = [m for n, m in segmentation.named_modules() if re.fullmatch(pattern, n)]
        if not hooked:
            raise ValueError(f"no module {bottleneck!r} in {type(segmentation).__name__}")
        self._captured: list[torch.Tensor] = []
        self._bottlenecks = len(hooked)
        self.stop_at_bottleneck = True
        for module in hooked:
            module.register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inputs, out: torch.Tensor) -> None:
        self._captured.append(pool(out))
        if self.stop_at_bottleneck and len(self._captured) == self._bottlenecks:
            raise _BottleneckReached

    def forward(
        self,
        ct: torch.Tensor | None,
        pet: torch.Tensor | None,
        values: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._captured.clear()
        with contextlib.suppress(_BottleneckReached):
            self.segmentation(ct, pet)
        image = torch.stack(self._captured).mean(dim=0)
        self._captured.clear()
        return self.head(image, values, present)
