"""Retrieval metrics on binary codes, as DeepHash-pytorch's CalcTopMap, with a stable tie order."""

from __future__ import annotations

import torch


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor) -> torch.Tensor:
    """rel[q, d] = query q and item d share at least one label (single labels: class indices; multi: multi-hot)."""
    if query_labels.dim() == 1:
        return query_labels[:, None] == db_labels[None, :]
    return (query_labels.float() @ db_labels.float().t()) > 0


def map_at_k(query_codes: torch.Tensor, db_codes: torch.Tensor, query_labels: torch.Tensor,
             db_labels: torch.Tensor, k: int | None = None, chunk: int = 256) -> float:
    """Mean average precision over the top k of the Hamming ranking (k None or <= 0: the whole database).

    Codes are in {-1, +1}. Ties in Hamming distance keep database order (a stable sort), so the number is
    reproducible. A query with no relevant item in its top k adds 0 and still counts, as in CalcTopMap.
    """
    return float(average_precision_at_k(query_codes, db_codes, query_labels, db_labels, k, chunk).mean())


def average_precision_at_k(query_codes: torch.Tensor, db_codes: torch.Tensor, query_labels: torch.Tensor,
                           db_labels: torch.Tensor, k: int | None = None, chunk: int = 256) -> torch.Tensor:
    """AP@k of every query (the terms map_at_k averages)."""
    n_db, bits = db_codes.shape
    k = n_db if k is None or k <= 0 else min(k, n_db)
    db = db_codes.float()
    out = []
    for start in range(0, len(query_codes), chunk):
        q = query_codes[start : start + chunk].float()
        hamming = 0.5 * (bits - q @ db.t())
        order = torch.sort(hamming, dim=1, stable=True).indices[:, :k]
        rel = relevance(query_labels[start : start + chunk], db_labels)
        hits = torch.gather(rel, 1, order).float()
        ranks = torch.arange(1, k + 1, dtype=torch.float32)
        cum = hits.cumsum(1)
        n_rel = hits.sum(1)
        ap = (cum / ranks * hits).sum(1) / n_rel.clamp(min=1)
        out.append(ap)
    return torch.cat(out)
