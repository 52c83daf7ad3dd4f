"""The UI, proven in a real browser: `dagster dev` on 127.0.0.1, the demo graph materialized through
the GraphQL API, then the asset graph opened in headless Chromium (Debian's chromium + chromedriver,
driven by Selenium). A screenshot is kept in test-artifacts/. Every process is stopped by its PID."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import REAL_DATA, REPO_ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]  # the real `dagster dev` and Chromium

ARTIFACTS = REPO_ROOT / "test-artifacts"
LOCATION = {"repositoryLocationName": "mig_assets", "repositoryName": "__repository__"}
ADD_PARTITION = """
mutation($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName, partitionKey: $partitionKey) {
    __typename ... on PythonError { message }
  }
}"""
ASSETS = "{ assetNodes { assetKey { path } groupName assetMaterializations(limit: 1) { timestamp } } }"


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("Debian's chromium and chromium-driver are required (make setup installs them)")
    home = tmp_path_factory.mktemp("ui")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "mig_assets" / "dagster.yaml").read_text())
    port = free_port()
    env = {
        **os.environ,
        "MIG_HOME": str(home / "mig"),
        "DAGSTER_HOME": str(dagster_home),
        "MIG_TAGGER_BACKEND": "imported",
        "MIG_DECONTAMINATION_BENCHMARKS": str(REAL_DATA / "mt_bench_questions.jsonl"),
    }
    log = open(home / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert process.poll() is None, (home / "dagster_dev.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok and graphql(url, "{ version }")["version"]:
                    break
            except (requests.RequestException, KeyError):
                pass
            time.sleep(1)
        yield url, home / "mig"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def run_and_wait(client, job: str, tags: dict | None = None, timeout_s: int = 600) -> None:
    from dagster import DagsterRunStatus

    run_id = client.submit_job_execution(
        job, repository_location_name=LOCATION["repositoryLocationName"], repository_name=LOCATION["repositoryName"], run_config={}, tags=tags or {}
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_run_status(run_id)
        if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
            assert status == DagsterRunStatus.SUCCESS, f"{job} {tags}: {status}"
            return
        time.sleep(1)
    pytest.fail(f"{job} {tags} did not finish in {timeout_s}s")


def test_asset_graph_shows_every_asset_and_its_latest_materialization(dagster_dev):
    from dagster_graphql import DagsterGraphQLClient

    from mig_assets.core.store.layout import WarehouseLayout
    from mig_assets.demo_pool import write_demo_pool, write_demo_target

    url, mig_home = dagster_dev
    layout = WarehouseLayout(mig_home).ensure()
    files = write_demo_pool(layout.incoming_dir / "demo", n_per_shard=30)
    write_demo_target(layout.home / "targets")
    keys = [layout.shard_key(f) for f in files]
    for key in keys:
        added = graphql(url, ADD_PARTITION, {"repositorySelector": LOCATION, "partitionsDefName": "pool_shards", "partitionKey": key})
        assert added["addDynamicPartition"]["__typename"] in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), added
    client = DagsterGraphQLClient("127.0.0.1", port_number=int(url.rsplit(":", 1)[1]))
    for key in keys:
        run_and_wait(client, "ingest_job", {"dagster/partition": key})
    every_shard = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    run_and_wait(client, "tag_job", every_shard)
    run_and_wait(client, "decontaminate_job", every_shard)
    run_and_wait(client, "reselect_job")
    run_and_wait(client, "compare_job")

    nodes = graphql(url, ASSETS)["assetNodes"]
    on_demand = {"selection_sweep", "selection_stability"}  # the what-ifs (group steering): asked for, never scheduled
    made = [n for n in nodes if "/".join(n["assetKey"]["path"]) not in on_demand]
    assert all(n["assetMaterializations"] for n in made), [n for n in made if not n["assetMaterializations"]]
    assert {n["groupName"] for n in nodes if "/".join(n["assetKey"]["path"]) in on_demand} == {"steering"}
    groups: dict[str, list[str]] = {}
    for node in made:
        groups.setdefault(node["groupName"], []).append("/".join(node["assetKey"]["path"]))
    assert sorted(groups) == ["curation", "embeddings", "pool", "quality", "selection", "tagging", "tree"]

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1800,4000",
        f"--user-data-dir={mig_home / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        for group, names in sorted(groups.items()):
            driver.get(f"{url}/locations/{LOCATION['repositoryLocationName']}/asset-groups/{group}")

            partitioned = sum(name in ("raw_pool", "atomic_tags", "sample_embeddings", "quality_scores", "contamination") for name in names)

            def rendered(d):  # every node of the group, each with its latest materialization loaded
                text = d.find_element(By.TAG_NAME, "body").text
                return (
                    all(name in text for name in names)
                    and "Loading..." not in text
                    and text.count("Materialized") >= len(names) - partitioned
                    and text.count("100% filled") >= partitioned
                )

            try:
                WebDriverWait(driver, 180).until(rendered)
                for button in driver.find_elements(By.TAG_NAME, "button"):
                    if button.text.strip() == "Skip":  # the newsletter prompt over the graph
                        button.click()
                        break
                time.sleep(1)
            finally:
                screenshot = ARTIFACTS / f"asset_graph_{group}.png"
                driver.save_screenshot(str(screenshot))
            text = driver.find_element(By.TAG_NAME, "body").text
            assert "Never materialized" not in text, group
            for name in names:
                assert name in text, (group, name)
            assert text.count("Materialized") >= len(names) - partitioned and text.count("100% filled") >= partitioned, text[:1500]
            assert screenshot.stat().st_size > 10_000
    finally:
        driver.quit()
