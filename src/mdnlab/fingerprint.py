"""A run's fingerprint: what decides its numbers (the resolved config and the data's bytes).

A sweep that crashed halfway is re-run with the same command: each job whose fingerprint
matches a FINISHED run in the experiment is skipped and answers with that run's metrics
(``rerun=true`` trains it again). Keys that only say where results go (``metrics_file``,
``plots_dir``, ``logger``) or how fast they come (``threads``) are left out.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

FINGERPRINT_TAG = "mdnlab.fingerprint"
NOT_PART_OF_THE_FIT = ("metrics_file", "plots_dir", "logger", "threads", "rerun", "resume")


def run_fingerprint(cfg: DictConfig, data_md5: str) -> str:
    """sha256 (hex, 24 characters) of the resolved config minus the keys above, plus the data's md5."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    kept = {k: v for k, v in resolved.items() if k not in NOT_PART_OF_THE_FIT}
    text = json.dumps({"config": kept, "data_md5": data_md5}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def finished_run(client, experiment_id: str, fingerprint: str):
    """The latest FINISHED run in the experiment with this fingerprint, else None."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None
