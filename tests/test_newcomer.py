"""The newcomer's path, end to end on one MIG_HOME: `init`, `ingest`, `run` with a tagger set in the
settings file, then what `dagster dev` would do on the same MIG_HOME with no variable set (the
sensor and the automation, evaluated with Dagster's helpers in a fresh process), then a deliberate
change of the tagger in the file.

The tagger is an OpenAI-compatible server on 127.0.0.1 (a small fake, so that the whole path costs
seconds): the real-model version of the same scenario runs after the vLLM demo in test_cli.py.
"""

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from mig_assets.demo_pool import write_demo_pool
from mig_assets.settings import write_settings_file
from tests.automation_probe import clean_env, tag_files, ui_tick
from tests.conftest import REAL_DATA, REPO_ROOT
from tests.fakes import JsonApiHandler, json_api_server


class TagServer(JsonApiHandler):
    """`/v1/chat/completions` answering two tags drawn from the query's words."""

    def respond(self, path: str, body: dict):
        if not path.endswith("/chat/completions"):
            return None
        query = body["messages"][-1]["content"].rsplit("Query: ", 1)[-1]
        words = sorted({w.lower() for w in query.split() if w.isalpha() and len(w) > 4})[:2] or ["general"]
        return {"choices": [{"message": {"content": json.dumps({"tags": [f"{w} topic" for w in words]})}}]}


@pytest.fixture
def tag_server():
    with json_api_server(TagServer) as url:
        yield url


def cli(home, *args):
    done = subprocess.run([sys.executable, "-m", "mig_assets.cli", *args], cwd=REPO_ROOT, env=clean_env(home), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def tag_backends(home) -> set[str]:
    import duckdb

    with duckdb.connect(str(home / "warehouse" / "mig.duckdb"), read_only=True) as con:
        return {b for (b,) in con.execute("SELECT DISTINCT backend FROM atomic_tags").fetchall()}


def automation_run(home, shard: str) -> dict:
    """atomic_tags[shard] run as the automation sensor launches it (with its tag), in a fresh process."""
    code = (
        "import json, dagster as dg; from mig_assets.definitions import defs, atomic_tags;"
        "from mig_assets.orchestration.automation import AUTOMATION_RUN_TAG;"
        "result = defs.resolve_job_def('tag_job').execute_in_process(instance=dg.DagsterInstance.get(), "
        f"partition_key='{shard}', asset_selection=[atomic_tags.key], tags={{AUTOMATION_RUN_TAG: 'true'}}, raise_on_error=False);"
        "failure = next((e.event_specific_data.error.message for e in result.all_events if e.is_step_failure), '');"
        "print(json.dumps({'success': result.success, 'failure': failure}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def stale_partitions(home, asset: str) -> set[str]:
    """Partitions of ``asset`` the UI shows stale for a changed code version (the latest
    materialization's code version is not the definitions' one), seen from a fresh process."""
    code = (
        "import json, dagster as dg; from mig_assets.definitions import defs;"
        "from mig_assets.orchestration.provenance import code_version_of, latest_materialization;"
        f"key = dg.AssetKey('{asset}'); current = defs.resolve_assets_def(key).code_versions_by_key[key];"
        "instance = dg.DagsterInstance.get();"
        "records = {p: latest_materialization(instance, key, p) for p in instance.get_dynamic_partitions('pool_shards')};"
        "print(json.dumps([p for p, r in records.items() if r is not None and code_version_of(r) != current]))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.slow
def test_init_ingest_run_then_the_ui_keeps_the_tags_and_a_tagger_change_waits_for_a_launched_run(tmp_path, tag_server):
    home = tmp_path / "home"
    cli(home, "init")
    write_settings_file(
        home,
        {
            "tagger.backend": "openai",
            "tagger.base_url": tag_server,
            "tagger.model": "fake-served-model",
            "target.path": str(REAL_DATA / "mt_bench_questions.jsonl"),
            "target.filter": "category=coding,math",
        },
    )
    files = write_demo_pool(tmp_path / "my_files")
    cli(home, "ingest", *map(str, files))
    done = cli(home, "run")
    summary = json.loads(done.stdout)
    assert summary["mig_selection"]["dagster/row_count"] > 0 and (home / "exports" / "mig_selection" / "v0001" / "data.jsonl").exists()
    assert "atomic_tags: shards" in done.stderr and "exports" not in done.stderr.split("selected subsets")[0].lower()
    assert "Traceback" not in done.stderr and (home / "logs" / "mig-assets.log").stat().st_size > 0  # Dagster's logs went to the file
    before = tag_files(home)
    assert len(before) == 4 and tag_backends(home) == {"openai"}

    # the UI starts on the same MIG_HOME with no variable: nothing is re-ingested or re-tagged
    cursor = tmp_path / "ui_cursor.json"
    first = ui_tick(home, cursor)
    assert first == {"sensor_requests": [], "ingested": [], "automation_runs": []}
    assert ui_tick(home, cursor)["automation_runs"] == []
    assert tag_files(home) == before
    assert stale_partitions(home, "atomic_tags") == set()

    # runs launched by the CLI are the project's jobs, on the persistent instance the UI reads
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    jobs = {run.job_name for run in instance.get_runs()}
    assert {"ingest_job", "tag_job", "reselect_job"} <= jobs

    # a deliberate change of the tagger in the file: the tags show stale, automation leaves them alone
    write_settings_file(home, {"tagger.backend": "imported"})
    assert stale_partitions(home, "atomic_tags") == set(before)
    changed = home / "pool" / "incoming" / "annotated_mig.jsonl"
    first_line = json.loads(changed.read_text().splitlines()[0])
    first_line["dialogs"][0]["content"] += " (edited)"
    changed.write_text(changed.read_text() + json.dumps(first_line) + "\n")
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime - 60))  # settled
    after_change = ui_tick(home, cursor)
    assert after_change["ingested"] == [{"shard": "annotated_mig.jsonl", "success": True}]
    # the shard changed: its scores and embeddings (same configuration) follow, its tags (another tagger) wait
    assert [(r["assets"], r["success"]) for r in after_change["automation_runs"]] == [(["quality_scores", "sample_embeddings"], True)]
    refused = automation_run(home, "annotated_mig.jsonl")  # a daemon that forgot the old version would ask: the run refuses
    assert not refused["success"] and "automation never replaces that work" in refused["failure"]
    assert tag_files(home) == before and tag_backends(home) == {"openai"}

    # re-tagging is a launched run
    retag = cli(home, "run", "--retag")
    assert "made by another configuration" not in retag.stderr
    assert tag_backends(home) == {"imported"} and tag_files(home) != before
    assert stale_partitions(home, "atomic_tags") == set()


def test_run_without_anything_ingested_says_what_to_do(tmp_path):
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "mig_assets.cli", "run"], cwd=REPO_ROOT, env=clean_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "nothing ingested" in done.stderr and "mig-assets ingest" in done.stderr


@pytest.mark.slow
def test_run_selects_real_public_data_with_the_imported_tagger_and_the_runs_show_in_the_instance(tmp_path):
    """A user with their own files and no variable: init, ingest, run."""
    home = tmp_path / "home"
    cli(home, "init")
    write_settings_file(home, {"target.path": str(REAL_DATA / "mt_bench_questions.jsonl"), "target.filter": "category=coding,math"})
    files = [REAL_DATA / name for name in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented.jsonl", "xsample_example.jsonl")]
    ingested = json.loads(cli(home, "ingest", *map(str, files)).stdout)
    assert ingested["rows_read"] == ingested["rows_kept"] + ingested["rows_quarantined"] + ingested["duplicates"]
    done = cli(home, "run")
    summary = json.loads(done.stdout)
    from mig_assets.core.selection.specs import load_specs
    from mig_assets.settings import load_settings

    for spec in load_specs(load_settings(home, environ={}).selections_path):
        export = home / "exports" / spec.name / "v0001"
        assert summary[spec.name]["export_dir"] == str(export), spec.name
        rows = (export / "data.jsonl").read_text().splitlines()
        assert len(rows) == summary[spec.name]["dagster/row_count"] > 0
        assert json.loads((export / "manifest.json").read_text())["settings"]["values"]["target"]["filter"] == "category=coding,math"
        assert str(export) in done.stderr  # where the exports are
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    runs = {run.job_name: run.status for run in instance.get_runs()}
    assert runs.get("tag_job") == dg.DagsterRunStatus.SUCCESS and runs.get("reselect_job") == dg.DagsterRunStatus.SUCCESS
    # the imported tags and scores load no model: one run for both; the embedding model its own
    tag_runs = sorted(sorted(k.to_user_string() for k in run.asset_selection or ()) for run in instance.get_runs() if run.job_name == "tag_job")
    assert tag_runs == [["atomic_tags", "quality_scores"], ["sample_embeddings"]]
    assert "atomic_tags + quality_scores: shards" in done.stderr


def test_shards_needing_work_become_one_range_run_per_consecutive_block():
    from mig_assets.launch import contiguous_ranges

    ordered = ["a", "b", "c", "d", "e", "f"]
    assert contiguous_ranges(ordered, {"a", "b", "d", "f"}) == [("a", "b"), ("d", "d"), ("f", "f")]
    assert contiguous_ranges(ordered, set()) == [] and contiguous_ranges(ordered, set(ordered)) == [("a", "f")]
