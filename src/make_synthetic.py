"""Write a synthetic data set with a known conditional density (data.csv, eval.npz, truth.json).

    python src/make_synthetic.py bishop --n 2000 --seed 1 --eval-n 100000 --eval-seed 101 \\
        --out data/synthetic/bishop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdnlab.data.simulators import SIMULATORS, write_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="simulator: " + ", ".join(SIMULATORS))
    parser.add_argument("--n", type=int, required=True, help="training rows (data.csv)")
    parser.add_argument("--seed", type=int, required=True, help="seed for the training rows")
    parser.add_argument("--eval-n", type=int, required=True, help="held-out rows (eval.npz)")
    parser.add_argument("--eval-seed", type=int, required=True, help="seed for held-out rows")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.name not in SIMULATORS:
        known = ", ".join(sorted(SIMULATORS))
        print(f"make_synthetic: unknown simulator {args.name!r}; known: {known}", file=sys.stderr)
        return 2
    write_dataset(args.name, args.out, args.n, args.seed, args.eval_n, args.eval_seed)
    print(
        f"wrote {args.name}: {args.n} rows (seed {args.seed}) to {args.out / 'data.csv'}, "
        f"{args.eval_n} eval rows with true log p(y|x) (seed {args.eval_seed}) to "
        f"{args.out / 'eval.npz'}, and {args.out / 'truth.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
