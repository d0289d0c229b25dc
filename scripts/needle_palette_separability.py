"""How many needle colours one linear readout of a patch can score above every haystack grey.

    python scripts/needle_palette_separability.py [--clips 200] [--percentile 0.5]

A beacon's first-layer query is one vector shared by every beacon. On an encoder that is still close
to linear in colour, what it scores is close to w . rgb for some w. The needle colours surround the
haystack's grey, so no single w puts all of them above the greys. This script measures the grey
range of the haystack's 8x8 patch means (the tiny encoder's patches, the generator's own frames),
then searches directions w on a fine grid of the sphere for the largest set of colours with
w . colour > w . grey for every grey in that range (docs/vst.md, "Why a run misses").
"""

from __future__ import annotations

import argparse

import numpy as np

from vlc.data.synthetic import PALETTE, make_haystack


def haystack_grey_range(clips: int, percentile: float, size: int = 32, patch: int = 8, seed: int = 0) -> tuple[float, float]:
    """The (percentile, 100 - percentile) range of patch-mean grey levels over ``clips`` haystacks."""
    rng = np.random.default_rng(seed)
    n = size // patch
    means = [make_haystack(32, size, rng)[..., 0].astype(np.float64).reshape(32, n, patch, n, patch).mean((2, 4)).ravel()
             for _ in range(clips)]
    lo, hi = np.percentile(np.concatenate(means), [percentile, 100.0 - percentile])
    return float(lo), float(hi)


def most_colours_above_grey(lo: float, hi: float, palette: dict[str, tuple[int, int, int]] = PALETTE,
                            directions: int = 200_000, seed: int = 0) -> tuple[int, list[str]]:
    """The largest number of palette colours one direction w scores above every grey in [lo, hi],
    and one such set. Grey g is (g, g, g), so w . grey is linear in g: its largest value over the
    range is at lo or hi."""
    w = np.random.default_rng(seed).normal(size=(directions, 3))  # uniform directions on the sphere
    colours = np.array(list(palette.values()), np.float64)  # (C, 3)
    top_grey = np.maximum(w.sum(1) * lo, w.sum(1) * hi)  # (N,)
    above = colours @ w.T > top_grey  # (C, N)
    best = int(above.sum(0).argmax())
    names = [name for name, hit in zip(palette, above[:, best]) if hit]
    return len(names), names


def main(argv: list[str] | None = None) -> dict[str, tuple[int, list[str]]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=200, help="haystacks sampled for the grey range")
    p.add_argument("--percentile", type=float, default=0.5, help="grey range: [p, 100 - p] percentiles")
    args = p.parse_args(argv)
    lo, hi = haystack_grey_range(args.clips, args.percentile)
    out = {}
    for label, (a, b) in {f"haystack patches {lo:.0f}-{hi:.0f}": (lo, hi), "one grey 120": (120.0, 120.0)}.items():
        out[label] = most_colours_above_grey(a, b)
        print(f"{label:28s} at most {out[label][0]} of {len(PALETTE)} colours: {', '.join(out[label][1])}")
    return out


if __name__ == "__main__":
    main()
