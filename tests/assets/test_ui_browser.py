"""The Dagster UI in a real headless Chromium (Playwright), against `dg dev` on a loopback port.

Opens the lineage graph, an asset's partitions, its checks and a run; launches one partition
of the `embed_corpus` job from the Launchpad by clicking, waits for the run to succeed; saves a
screenshot of each page under the test's tmp dir and asserts on what the pages show.

Chromium is not downloaded (Playwright's own browsers cannot be fetched here and no wheel
ships one): Debian's `chromium` package is used, which `make test` installs with apt-get.
Elsewhere, install Chromium and set CHROMIUM=/path/to/chromium.
"""

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.assets.test_dagster_dev import WORKSPACE, dev_server, roomy_instance

PARTITION = "bucket-04"  # the landing bucket of python_docs.jsonl (its only file)
ROWS = 4  # rows per landing file (dev_server's sample slice)


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        pytest.fail("Chromium not found: the browser test needs it. On Debian/Ubuntu run "
                    "`apt-get install -y chromium` (`make test` does); elsewhere install Chromium "
                    "and set CHROMIUM=/path/to/chromium.")
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)  # dg dev, a run allowed 300 s, a browser at 60 s a step
def test_ui_shows_the_graph_partitions_checks_and_launches_a_partition_by_clicking(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    dg = str(Path(sys.executable).with_name("dg"))
    with (dev_server(tmp_path, [dg, "dev", "-w", WORKSPACE], instance_config=roomy_instance) as (graphql, port, _),
          sync_playwright() as playwright):
        base = f"http://127.0.0.1:{port}"
        assert graphql.wait_for_run(graphql.launch("model_snapshot"), timeout_s=300) == "SUCCESS"

        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # assertions too (5 s by default): a loaded CI machine

        def shot(name: str) -> None:
            page.wait_for_timeout(1500)  # let the graph layout settle before the picture
            page.screenshot(path=str(tmp_path / f"{name}.png"))

        # 1. The lineage graph around embeddings: the three assets in their groups.
        page.goto(f"{base}/assets/embeddings?view=lineage")
        for name in ("corpus", "model_snapshot", "embeddings", "ingest", "models", "vectors"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        expect(page.get_by_text("Loading", exact=False)).to_have_count(0)
        expect(page.get_by_text("Materialized", exact=False).first).to_be_visible()  # model_snapshot
        shot("1_lineage")

        # 2. Launch one partition of embed_corpus from the Launchpad, by clicking.
        page.goto(f"{base}/locations/embedding_pipeline/jobs/embed_corpus/playground")
        page.get_by_placeholder("Partition").click()
        page.get_by_text(PARTITION, exact=True).last.click()
        expect(page.get_by_placeholder("Partition")).to_have_value(PARTITION)
        page.get_by_role("button", name="Launch Run").click()
        page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}.*"))
        run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
        deadline = time.monotonic() + 300
        while (status := graphql("query($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName } } }",
                                 id=run_id)["runOrError"])["status"] not in {"SUCCESS", "FAILURE", "CANCELED"}:
            assert time.monotonic() < deadline, f"run {run_id} still {status} after 300 s"
            time.sleep(2)
        assert status == {"status": "SUCCESS", "jobName": "embed_corpus"}

        # 3. The run page: the job's name, success, and each check of the partition.
        page.goto(f"{base}/runs/{run_id}")
        expect(page.get_by_text("embed_corpus").first).to_be_visible()
        expect(page.get_by_text("Success", exact=False).first).to_be_visible()
        shot("2_run")

        # 4. The asset's partitions: the launched one materialized, with its metadata.
        page.goto(f"{base}/assets/embeddings?view=partitions&partition={PARTITION}")
        expect(page.get_by_text("dagster/row_count")).to_be_visible()
        expect(page.get_by_text("encoded_rows")).to_be_visible()
        body = page.inner_text("body")
        assert "Materialized (1)" in body and "Missing (15)" in body, body[:2000]
        assert re.search(r"dagster/row_count\s+" + str(ROWS), body), body[:3000]
        shot("3_partitions")

        # 5. The checks: the stored-data checks passed for that partition; unit_norm, which does
        # not apply (vectors not normalized by this pipeline), is not shown as passed.
        page.goto(f"{base}/assets/embeddings?view=checks")
        for name in ("rows_match_corpus", "dim_matches_model", "vectors_finite", "embeddings_match_model",
                     "unit_norm"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        expect(page.get_by_text("Skipped").first).to_be_visible()
        body = page.inner_text("body")
        for name in ("rows_match_corpus", "dim_matches_model", "vectors_finite", "embeddings_match_model"):
            assert re.search(rf"{name}\s+({name}\s+)?Succeeded", body), body[:2000]
        assert re.search(r"unit_norm\s+(unit_norm\s+)?Skipped", body), body[:2000]
        shot("4_checks")
        checks = graphql("""query { assetNodeOrError(assetKey: {path: ["embeddings"]}) { ... on AssetNode {
            assetChecksOrError { ... on AssetChecks { checks { name partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions } } } } } } } }"""
                         )["assetNodeOrError"]["assetChecksOrError"]["checks"]
        assert {c["name"]: c["partitionStatuses"]["succeededPartitions"] for c in checks} == {
            "rows_match_corpus": [PARTITION], "dim_matches_model": [PARTITION],
            "vectors_finite": [PARTITION], "embeddings_match_model": [PARTITION], "unit_norm": [],
            "texts_fit_max_seq_length": [PARTITION]}  # its 4 texts are all shorter than 256 tokens
        browser.close()
    for name in ("1_lineage", "2_run", "3_partitions", "4_checks"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    # `dg dev`'s output: no Python warning (BetaWarning, PreviewWarning, ...) from loading the
    # code location or running the steps, and no complaint about an instance file in the project.
    log = (tmp_path / "dev_server.log").read_text()
    assert "Serving dagster-webserver" in log
    assert not re.findall(r"\w+Warning: .*", log), re.findall(r"\w+Warning: .*", log)
    assert "dagster.yaml" not in log
