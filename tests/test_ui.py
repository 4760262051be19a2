"""``make ui``'s links: the runs table of each experiment and the latest parent's comparison."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from mlflow.tracking import MlflowClient

from mdnlab import ui


def test_links_name_each_experiment_and_the_latest_parents_children(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    sweep = client.create_experiment("sweep")
    client.create_experiment("empty")
    for name in ("old", "new"):
        parent = client.create_run(sweep, run_name=name)
        kids = [
            client.create_run(sweep, tags={"mlflow.parentRunId": parent.info.run_id})
            for _ in range(3 if name == "new" else 2)
        ]
        for run in [parent, *kids]:
            client.set_terminated(run.info.run_id)
    found = ui.links(uri, "http://127.0.0.1:5000")
    assert [link.label for link in found] == [
        "sweep (7 runs)",
        "  compare the runs of new (the latest parent run)",
    ]
    assert found[0].url == f"http://127.0.0.1:5000/#/experiments/{sweep}/runs"
    query = parse_qs(urlsplit(found[1].url.replace("/#/", "/")).query)
    new_kids = {
        r.info.run_id
        for r in client.search_runs([sweep])
        if r.data.tags.get("mlflow.parentRunId")
        == next(p.info.run_id for p in client.search_runs([sweep]) if p.info.run_name == "new")
    }
    assert set(json.loads(query["runs"][0])) == new_kids and len(new_kids) == 3
    assert json.loads(query["experiments"][0]) == [sweep]


def test_a_missing_store_is_one_line(tmp_path, capsys):
    code = ui.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--links-only"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no MLflow store at") and "\n" not in err
    assert not (tmp_path / "none.db").exists()


def test_the_runs_table_link_opens_a_saved_view_of_the_headline_metrics(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("mcycle")
    run = client.create_run(experiment_id, run_name="fit")
    for key, value in {"test/nll": 1.5, "val/nll": 1.4, "run/seconds": 2.0}.items():
        client.log_metric(run.info.run_id, key, value)
    found = ui.links(uri, "http://127.0.0.1:5000")
    assert found[0].url == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={ui.METRICS_VIEW_KEY}"
    )
    saved = json.loads(client.get_experiment(experiment_id).tags[ui.METRICS_VIEW_TAG])
    assert saved["name"] == ui.METRICS_VIEW_NAME
    state = json.loads(saved["state"])
    assert state["selectedColumns"][:2] == ["metrics.`test/nll`", "metrics.`val/nll`"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test/nll`", True)
    ui.links(uri, "http://127.0.0.1:5000")  # unchanged columns: the tag is not rewritten
    assert json.loads(client.get_experiment(experiment_id).tags[ui.METRICS_VIEW_TAG]) == saved


def test_without_headline_metrics_the_view_shows_the_first_by_name():
    assert ui.metric_columns({"z", "b", "a"}) == ["a", "b", "z"]
    assert ui.metric_columns({"kl", "seconds"}) == ["kl"]
    assert "orderByKey" not in ui.metrics_view_state(["a"])
