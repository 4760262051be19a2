"""Data through a DVC remote: ``dvc push`` to a shared folder, then ``dvc pull`` in a fresh
clone restores the same bytes and ``dvc repro`` there has nothing to do; without a pull,
``dvc repro`` regenerates the same bytes (the data stage is reproducible).

A throwaway DVC project in tmp_path (the repository's own dvc.yaml trains models) with one
stage like the repository's ``synthesize`` stages: src/make_synthetic.py, copied in as its dep,
writing a small synth_mixture data set."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

DVC_YAML = """\
stages:
  synth:
    cmd: python make_synthetic.py synth_mixture --n 200 --seed 1 --eval-n 1000 --eval-seed 2 --out data/synth
    deps:
      - make_synthetic.py
    outs:
      - data/synth
"""
OUT = Path("data/synth")


def env_for(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        # `python` and `dvc` from this interpreter's environment
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
        GIT_AUTHOR_NAME="mdnlab test",
        GIT_AUTHOR_EMAIL="test@mdnlab.invalid",
        GIT_COMMITTER_NAME="mdnlab test",
        GIT_COMMITTER_EMAIL="test@mdnlab.invalid",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(tmp_path / "home"),
    )
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_push_then_pull_into_a_fresh_clone_restores_the_data_and_repro_is_a_no_op(tmp_path):
    env = env_for(tmp_path)
    (tmp_path / "home").mkdir()
    project, clone, remote = tmp_path / "project", tmp_path / "clone", tmp_path / "remote"
    project.mkdir()

    # The project: a git repo with one DVC stage, reproduced and committed.
    sh(["git", "-c", "init.defaultBranch=main", "init", "-q"], project, env)
    sh(["dvc", "init", "-q"], project, env)
    shutil.copy(REPO / "src" / "make_synthetic.py", project / "make_synthetic.py")
    (project / "dvc.yaml").write_text(DVC_YAML)
    out = sh(["dvc", "repro"], project, env)
    assert "Running stage 'synth'" in out
    pushed = digests(project / OUT)
    assert set(pushed) == {"data.csv", "eval.npz", "truth.json"}
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", "synthetic data stage"], project, env)

    # A local-folder remote as the default, committed, and the data pushed to it.
    sh(["dvc", "remote", "add", "-d", "shared", str(remote)], project, env)
    sh(["git", "commit", "-qam", "DVC remote"], project, env)
    out = sh(["dvc", "push"], project, env)
    assert "4 files pushed" in out  # the three files and the directory's listing
    assert "in sync" in sh(["dvc", "status", "--cloud"], project, env)

    # A fresh clone has the code and the lock file but not the data: pull restores it.
    sh(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    assert not (clone / OUT).exists()
    assert "shared" in sh(["dvc", "remote", "list"], clone, env)
    sh(["dvc", "pull"], clone, env)
    assert digests(clone / OUT) == pushed
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone, env)
    before = mtimes(clone / OUT)
    out = sh(["dvc", "repro"], clone, env)
    assert "Stage 'synth' didn't change, skipping" in out
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out
    assert mtimes(clone / OUT) == before
    assert sh(["git", "status", "--porcelain"], clone, env) == ""

    # Without the data and without any cache to check it out from (no pull), repro runs the
    # stage again and writes the same bytes as were pushed: dvc.lock does not change.
    shutil.rmtree(clone / OUT)
    shutil.rmtree(clone / ".dvc" / "cache")
    out = sh(["dvc", "repro"], clone, env)
    assert "Running stage 'synth'" in out
    assert digests(clone / OUT) == pushed
    assert sh(["git", "status", "--porcelain"], clone, env) == ""
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone, env)
