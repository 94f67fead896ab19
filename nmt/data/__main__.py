"""Corpus statistics of a data config: `python -m nmt.data data=multi30k [overrides...]`.

Prepares the data (or loads it from the cache) and prints, per split, the number of pairs,
mean and max length in subwords (without EOS), the vocabulary coverage (share of tokens that
are neither <unk> nor byte-fallback pieces) and where the cache entry is.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from nmt.config import ConfigError, compose
from nmt.data.errors import DataError
from nmt.data.prepare import PreparedData, prepare_data
from nmt.data.store import RaggedIds


def side_stats(ids: RaggedIds, uncovered: np.ndarray, drop_last: bool) -> tuple[float, int, float]:
    """(mean length, max length, % covered tokens) of one side; drop_last removes the EOS."""
    lengths = ids.lengths - (1 if drop_last else 0)
    flat = np.asarray(ids.flat)
    if drop_last:
        keep = np.ones(len(flat), dtype=bool)
        keep[ids.offsets[1:] - 1] = False
        flat = flat[keep]
    covered = 100.0 * (1.0 - uncovered[flat].mean()) if len(flat) else 100.0
    return (float(lengths.mean()) if len(lengths) else 0.0, int(lengths.max(initial=0)), covered)


def format_stats(data: PreparedData) -> str:
    """The statistics table of a prepared corpus."""
    meta = data.meta
    uncovered = data.vocab.uncovered_mask()
    lines = [
        f"data {meta['name']} ({meta['source']}, {meta['src']}-{meta['tgt']}): vocabulary "
        f"{data.vocab.size} pieces, fingerprint {data.vocab.fingerprint}",
        f"cache {data.path} ({'hit' if data.cache_hit else 'built now'})",
        "",
        f"{'role':<6} {'split':<18} {'pairs':>9} {'src mean':>9} {'src max':>8} "
        f"{'tgt mean':>9} {'tgt max':>8} {'src cov %':>10} {'tgt cov %':>10}",
    ]
    for role, split in data.splits.items():
        s_mean, s_max, s_cov = side_stats(split.src, uncovered, drop_last=True)  # type: ignore[arg-type]
        t_mean, t_max, t_cov = side_stats(split.tgt, uncovered, drop_last=False)  # type: ignore[arg-type]
        lines.append(
            f"{role:<6} {split.name:<18} {len(split):>9} {s_mean:>9.1f} {s_max:>8} "
            f"{t_mean:>9.1f} {t_max:>8} {s_cov:>10.2f} {t_cov:>10.2f}"
        )
    f = meta["splits"]["train"]["filter"]
    lines.append(
        f"\ntrain filter: read {f['read']}, kept {f['kept']}; dropped {f['empty']} empty, "
        f"{f['too_long']} over max_len, {f['ratio']} over max_len_ratio"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compose conf/ with the overrides in argv, prepare the data, print the statistics."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        cfg = compose(list(sys.argv[1:] if argv is None else argv))
        data = prepare_data(cfg.data)
    except (ConfigError, DataError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_stats(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
