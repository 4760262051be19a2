"""DVC stage: build the model-ready real datasets in data/real from the raw exports in data/raw."""

import argparse
from pathlib import Path

from mdnlab.data.real import write_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/real"))
    args = parser.parse_args()
    for path in write_all(args.raw, args.out):
        print(f"prepare_real: wrote {path}")


if __name__ == "__main__":
    main()
