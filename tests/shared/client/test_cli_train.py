"""``recsys train``/``status``/``recommend``/``cancel`` against the fake API."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.fake_api import FakeApi, Seen, run, status

METRICS = {"k": 10, "precision_at_k": 0.12, "recall_at_k": 0.3, "auc": 0.91,
           "baseline_precision_at_k": 0.04, "evaluated_sources": 200}


def test_every_train_flag_lands_in_the_body(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (202, status("queued", 0)))
    result = run(
        fake_api, "train", "--model-id", "m1", "--tag", "a,b", "--max-age-days", "90",
        "--filters", '{"interactions": [{"field": "type", "op": "ne", "value": "x"}]}',
        "--callback-url", "https://example.com/hook", "--source-type", "customer",
        "--target-type", "product", "--weight", "purchase=5", "--weight", "view=1",
        "--loss", "bpr", "--components", "16", "--epochs", "3", "--learning-rate", "0.1",
        "--item-alpha", "0.001", "--user-alpha", "0.002", "--max-sampled", "20",
        "--random-state", "7", "--no-metadata-features", "--holdout", "0.2",
        "--eval-max-sources", "500",
    )
    assert result.exit_code == 0, result.output
    assert fake_api.last("POST", "/train").json() == {
        "model_id": "m1",
        "maximum_interaction_age_days": 90,
        "callback_url": "https://example.com/hook",
        "source_type": "customer",
        "target_type": "product",
        "data_tags": ["a", "b"],
        "data_filters": {"interactions": [{"field": "type", "op": "ne", "value": "x"}]},
        "interaction_weights": {"purchase": 5.0, "view": 1.0},
        "hyperparameters": {"loss": "bpr", "no_components": 16, "epochs": 3,
                            "learning_rate": 0.1, "item_alpha": 0.001, "user_alpha": 0.002,
                            "max_sampled": 20, "random_state": 7},
        "use_metadata_features": False,
        "evaluation": {"holdout": 0.2, "max_sources": 500},
    }
    assert "recsys status m1" in result.output


def test_train_without_flags_sends_an_empty_body(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (202, status("queued", 0)))
    assert run(fake_api, "train").exit_code == 0
    assert fake_api.last("POST", "/train").json() == {}


def test_train_wait_follows_progress_and_shows_metrics_vs_baseline(fake_api: FakeApi) -> None:
    # given a run that goes queued -> loading -> training -> evaluating -> completed
    script = iter([
        status("loading_data", 5),
        status("training", 40),
        status("training", 70),
        status("evaluating", 90),
        status("done", 100, "completed", metrics=METRICS,
               counts={"entities": 10, "interactions": 50, "sources": 5, "targets": 5}),
    ])

    def next_status(_: Seen) -> tuple[int, Any]:
        return 200, next(script)

    fake_api.on("POST", "/train", (202, status("queued", 0)))
    fake_api.on("GET", "/status/m1", next_status)
    # when the user trains with --wait
    result = run(fake_api, "train", "--model-id", "m1", "--wait", "--poll-interval", "0.01")
    # then every phase is told, the metrics sit next to the baseline, and it exits 0
    assert result.exit_code == 0, result.output
    out = result.output
    for phase in ("queued", "loading_data", "training", "evaluating", "done"):
        assert phase in out
    assert "precision@10" in out and "0.1200" in out and "0.0400" in out
    assert "popularity baseline" in out and "3.00x" in out


def test_train_wait_on_a_failed_run_exits_4(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (202, status("queued", 0)))
    fake_api.on("GET", "/status/m1", (200, status("failed", 10, "error",
                                                  message="No interactions matched.")))
    result = run(fake_api, "train", "--model-id", "m1", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 4
    assert "No interactions matched." in result.stderr


def test_train_conflict_shows_the_api_message(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (409, {"error": {
        "code": "already_training", "message": "Model m1 is already training.",
        "details": {"status": status("training", 30)}}}))
    result = run(fake_api, "train", "--model-id", "m1", "--wait")
    assert result.exit_code == 1
    assert "Model m1 is already training. [already_training, HTTP 409]" in result.stderr


def test_dry_run_prints_estimate(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (200, {"dry_run": True, "estimated_seconds": 12.5,
                                         "counts": {"interactions": 1000}}))
    result = run(fake_api, "train", "--dry-run")
    assert result.exit_code == 0
    assert fake_api.last("POST", "/train").json() == {"dry_run": True}
    assert "estimated_seconds" in result.output and "counts.interactions" in result.output


def test_status_shows_phase_progress_and_metrics(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/status/m1", (200, status("done", 100, "completed", metrics=METRICS)))
    result = run(fake_api, "status", "m1")
    assert result.exit_code == 0
    assert "completed" in result.output and "100" in result.output
    assert "precision@10" in result.output


def test_unknown_model_is_404_exit_1(fake_api: FakeApi) -> None:
    result = run(fake_api, "status", "nope")
    assert result.exit_code == 1 and "HTTP 404" in result.stderr


def test_cancel_posts_to_cancel(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train/m1/cancel", (200, status("cancelled", 30, "error")))
    result = run(fake_api, "cancel", "m1")
    assert result.exit_code == 0 and "cancelled" in result.output


def test_recommend_table_and_query(fake_api: FakeApi) -> None:
    rows = [{"source_id": "u1", "target_id": "i9", "rank": 1, "score": 1.5, "fallback": False},
            {"source_id": "u1", "target_id": "i3", "rank": 2, "score": 1.2, "fallback": False}]
    fake_api.on("GET", "/recommended_items",
                (200, {"model_id": "m1", "version": 2, "recommendations": rows}))
    result = run(fake_api, "recommend", "m1", "--source", "u1", "--source", "u2", "--max", "2",
                 "--include-seen")
    assert result.exit_code == 0, result.output
    query = fake_api.last("GET", "/recommended_items").query
    assert query["source_id"] == ["u1", "u2"] and query["max_recommendations"] == ["2"]
    assert query["exclude_seen"] == ["false"] and query["model_id"] == ["m1"]
    assert "i9" in result.output and "i3" in result.output


def test_recommend_csv_is_the_api_csv(fake_api: FakeApi) -> None:
    csv = "source_id,target_id,rank,score\nu1,i9,1,1.5\n"
    fake_api.on("GET", "/recommended_items", (200, csv))
    result = run(fake_api, "recommend", "m1", "--source", "u1", "--csv")
    assert result.exit_code == 0
    assert result.stdout == csv
    assert fake_api.last("GET", "/recommended_items").query["output_format"] == ["csv"]


def test_recommend_cold_start_posts_metadata(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/recommended_items", (200, {"model_id": "m1", "version": 1,
                "recommendations": [{"source_id": "new", "target_id": "i1", "rank": 1,
                                     "score": 0.5, "fallback": True}]}))
    result = run(fake_api, "recommend", "m1", "--source", "new",
                 "--metadata", '{"interests": ["books"]}')
    assert result.exit_code == 0, result.output
    body = fake_api.last("POST", "/recommended_items").json()
    assert body["source_metadata"] == {"interests": ["books"]}
    assert body["source_id"] == ["new"]
    assert "fallback" in result.output


def test_models_lists_rows(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/models", (200, {"models": [
        {"model_id": "m1", "serving_version": 2, "status": status("done", 100, "completed")}]}))
    result = run(fake_api, "--json", "models")
    assert json.loads(result.stdout)["models"][0]["model_id"] == "m1"
    table = run(fake_api, "models")
    assert table.exit_code == 0 and "m1" in table.output and "completed" in table.output


def test_webhook_secret_show_and_rotate(fake_api: FakeApi) -> None:
    fake_api.on("GET", "/webhook_secret", (200, {"secret": "whsec_old"}))
    fake_api.on("POST", "/webhook_secret/rotate", (200, {"secret": "whsec_new"}))
    assert run(fake_api, "webhook-secret").stdout.strip() == "whsec_old"
    assert run(fake_api, "webhook-secret", "--rotate").stdout.strip() == "whsec_new"


def test_json_wait_keeps_stdout_pure_json(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/train", (202, status("queued", 0)))
    fake_api.on("GET", "/status/m1", (200, status("done", 100, "completed", metrics=METRICS)))
    result = run(fake_api, "--json", "train", "--model-id", "m1", "--wait",
                 "--poll-interval", "0.01")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "completed"
    assert "done" in result.stderr


def test_wait_rides_out_rate_limits_and_restarts(fake_api: FakeApi) -> None:
    # given a status endpoint that answers 429 and 503 before the final status
    answers = iter([
        (429, {"error": {"code": "rate_limited", "message": "Too many requests.",
                         "details": {}}}),
        (503, {"error": {"code": "dependency_unavailable", "message": "Redis is down.",
                         "details": {}}}),
        (200, status("done", 100, "completed", metrics=METRICS)),
    ])
    fake_api.on("POST", "/train", (202, status("queued", 0)))
    fake_api.on("GET", "/status/m1", lambda _: next(answers))
    result = run(fake_api, "train", "--model-id", "m1", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 0, result.output + result.stderr
    assert "popularity baseline" in result.output


def test_every_source_needs_csv_and_streams(fake_api: FakeApi) -> None:
    assert run(fake_api, "recommend", "m1").exit_code == 2
    csv = "source_id,target_id,rank,score\n" + "".join(f"u{i},i1,1,0.5\n" for i in range(5000))
    fake_api.on("GET", "/recommended_items", (200, csv))
    result = run(fake_api, "recommend", "m1", "--csv")
    assert result.exit_code == 0 and result.stdout == csv
    assert "source_id" not in fake_api.last("GET", "/recommended_items").query
