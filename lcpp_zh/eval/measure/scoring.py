"""The numbers of llama-perplexity, from logits: negative log-likelihoods, the 16-bit log-probabilities it
keeps of a base model, KL divergence, top-token agreement and Δp, and the statistics it prints.

Pure numpy over (rows, n_vocab) float32 logits; each formula follows tools/perplexity/perplexity.cpp
(llama.cpp 0c1e570), float32 where it computes in float and float64 where it sums in double. No llama.cpp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# llama-perplexity keeps base log-probabilities within 16 nats of the most likely token.
LOG_PROB_RANGE = np.float32(16.0)


def _log_sum_exp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max logit, log of the sum of exp(logit - max)) per row: float32, the sum taken in float64."""
    top = logits.max(axis=1)
    total = np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)
    return top, np.log(total).astype(np.float32)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, float64 (perplexity.cpp's log_softmax for the plain perplexity run)."""
    top, lse = _log_sum_exp(logits)
    picked = logits[np.arange(len(targets)), targets]
    return top.astype(np.float64) + lse.astype(np.float64) - picked.astype(np.float64)


@dataclass
class PackedLogProbs:
    """Log-probabilities of a few rows as llama-perplexity stores a base model's: per row a scale and an
    offset (float32) and one uint16 per token; tokens 16 nats or more below the top one read as the offset."""

    scale: np.ndarray  # (rows,) float32
    offset: np.ndarray  # (rows,) float32: the log-probability that code 0 stands for
    codes: np.ndarray  # (rows, n_vocab) uint16

    def log_probs(self) -> np.ndarray:
        return self.scale[:, None] * self.codes.astype(np.float32) + self.offset[:, None]


def pack_log_probs(logits: np.ndarray, targets: np.ndarray) -> tuple[PackedLogProbs, np.ndarray]:
    """The packed log-probabilities of the rows and the -log p(target) of each (float32)."""
    top, lse = _log_sum_exp(logits)
    low = np.maximum(logits.min(axis=1), top - LOG_PROB_RANGE)
    offset = (low - top - lse).astype(np.float32)
    scale = ((top - low) / np.float32(65535.0)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(scale > 0, np.float32(1.0) / scale, np.float32(0.0)).astype(np.float32)
    # In place over one buffer (these are rows x vocabulary). perplexity.cpp rounds to nearest, ties to even
    # as its float trick does; tokens at or below `low` get code 0, which the clamp at 0 gives too.
    work = np.subtract(logits, low[:, None])
    work *= inverse[:, None]
    np.rint(work, out=work)
    np.maximum(work, 0, out=work)
    codes = work.astype(np.uint16)
    nll = (top + lse - logits[np.arange(len(targets)), targets]).astype(np.float32)
    return PackedLogProbs(scale, offset, codes), nll


@dataclass
class KldSums:
    """Running sums of llama-perplexity's KL-divergence run (kl_divergence_result), and every row's values."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add(self, logits: np.ndarray, targets: np.ndarray, base: PackedLogProbs) -> None:
        """Rows of the evaluated model's logits against the base model's packed log-probabilities."""
        rows = np.arange(len(targets))
        top, lse = _log_sum_exp(logits)
        nll = (top + lse - logits[rows, targets]).astype(np.float32)
        base_lp = base.log_probs()
        nll_base = -base_lp[rows, targets]
        norm = (top + lse).astype(np.float32)
        # sum of p_base * (log p_base - log p) over the tokens within 16 nats of the base's top one, in place
        terms = np.subtract(base_lp, logits)
        terms += norm[:, None]
        weight = np.exp(base_lp)
        weight[base_lp <= -LOG_PROB_RANGE] = 0.0
        terms *= weight
        kld = terms.sum(axis=1, dtype=np.float64)
        p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(np.float32)
        nll64, base64, diff64 = nll.astype(np.float64), nll_base.astype(np.float64), p_diff.astype(np.float64)
        self.sum_nll += float(nll64.sum())
        self.sum_nll2 += float((nll64 * nll64).sum())
        self.sum_nll_base += float(base64.sum())
        self.sum_nll_base2 += float((base64 * base64).sum())
        self.sum_nll_nll_base += float((nll64 * base64).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_p_diff += float(diff64.sum())
        self.sum_p_diff2 += float((diff64 ** 2).sum())
        self.sum_p_diff4 += float((diff64 ** 4).sum())
        # argmax takes the first of equal maxima, as both loops in perplexity.cpp do.
        self.n_same_top += int((logits.argmax(axis=1) == base_lp.argmax(axis=1)).sum())
        self.count += len(targets)
        self.kld_values.append(kld.astype(np.float32))
        self.p_diff_values.append(p_diff)


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error, as perplexity.cpp's lambda (no error below 11 values)."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def covariance(sum_a: float, sum_b: float, sum_ab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1)


def percentile(values: np.ndarray, fraction: float) -> float:
    """perplexity.cpp's percentile of sorted `values`: linear between neighbours, in float32."""
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = np.float32(fraction) * np.float32(len(values) - 1)
    index = int(p)
    p = np.float32(p - index)
    return float((np.float32(1) - p) * values[index] + p * values[min(index + 1, len(values) - 1)])


def median(values: np.ndarray) -> float:
    n = len(values)
    return float(values[n // 2]) if n % 2 else float(np.float32(0.5) * (values[n // 2] + values[n // 2 - 1]))


KLD_PERCENTILES = (("max", 1.0), ("99.9%", 0.999), ("99%", 0.99), ("95%", 0.95), ("90%", 0.9), ("median", None),
                   ("10%", 0.1), ("5%", 0.05), ("1%", 0.01), ("0.1%", 0.001), ("min", 0.0))
DP_PERCENTILES = (("max", 1.0), ("99.9%", 0.999), ("99%", 0.99), ("95%", 0.95), ("90%", 0.9), ("75%", 0.75),
                  ("median", None), ("25%", 0.25), ("10%", 0.1), ("5%", 0.05), ("1%", 0.01), ("0.1%", 0.001),
                  ("min", 0.0))


def _distribution(chunks: list[np.ndarray], points) -> dict[str, float]:
    values = np.sort(np.concatenate(chunks)) if chunks else np.zeros(1, np.float32)
    return {name: (median(values) if f is None else percentile(values, f)) for name, f in points}


def kld_statistics(s: KldSums) -> dict[str, object]:
    """The final tables of llama-perplexity --kl-divergence, as a dict (probabilities as fractions)."""
    log_ppl, log_ppl_err = mean_and_uncertainty(s.sum_nll, s.sum_nll2, s.count)
    log_base, log_base_err = mean_and_uncertainty(s.sum_nll_base, s.sum_nll_base2, s.count)
    cov = covariance(s.sum_nll, s.sum_nll_base, s.sum_nll_nll_base, s.count)
    ratio_err = math.sqrt(max(log_ppl_err ** 2 + log_base_err ** 2 - 2.0 * cov, 0.0))
    kld, kld_err = mean_and_uncertainty(s.sum_kld, s.sum_kld2, s.count)
    p_diff, p_diff_err = mean_and_uncertainty(s.sum_p_diff, s.sum_p_diff2, s.count)
    mse, mse_err = mean_and_uncertainty(s.sum_p_diff2, s.sum_p_diff4, s.count)
    rms = math.sqrt(mse)
    same = s.n_same_top / s.count if s.count else 0.0
    same_err = math.sqrt(same * (1.0 - same) / (s.count - 1)) if s.count > 1 else 0.0
    return {
        "tokens": s.count,
        "ppl": math.exp(log_ppl), "ppl_error": math.exp(log_ppl) * log_ppl_err,
        "ppl_base": math.exp(log_base), "ppl_base_error": math.exp(log_base) * log_base_err,
        "ln_ppl_ratio": log_ppl - log_base, "ln_ppl_ratio_error": ratio_err,
        "ln_ppl_correlation": cov / (log_ppl_err * log_base_err) if log_ppl_err and log_base_err else 0.0,
        "kld_mean": kld, "kld_error": kld_err,
        "kld_percentiles": _distribution(s.kld_values, KLD_PERCENTILES),
        "same_top": same, "same_top_error": same_err,
        "p_diff_mean": p_diff, "p_diff_error": p_diff_err,
        "p_diff_rms": rms, "p_diff_rms_error": 0.5 / rms * mse_err if rms else 0.0,
        "p_diff_percentiles": _distribution(s.p_diff_values, DP_PERCENTILES),
    }
