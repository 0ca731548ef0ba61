"""``recsys tune`` against the fake API: the body it sends and the live trials table."""

from __future__ import annotations

from typing import Any

from tests.helpers.fake_api import FakeApi, Seen, run, status


def tuning(states: list[str], best: dict[str, Any] | None = None) -> dict[str, Any]:
    """A status's ``tuning`` field with one trial per state."""
    trials = [{"trial": i, "params": {"no_components": 16 * (i + 1), "learning_rate": 0.0421},
               "value": 0.1 + i / 100 if s == "complete" else None, "state": s,
               "epochs": 10 if s == "complete" else None, "seconds": 2.5 if s == "complete"
               else None, "worker": "w1@host" if s != "queued" else None}
              for i, s in enumerate(states)]
    return {"metric": "precision_at_k", "trials_total": len(states),
            "trials_done": sum(s in ("complete", "failed") for s in states), "best": best,
            "trials": trials}


def test_search_flags_land_in_the_body(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/tune", (202, status("tuning", 0, tuning=tuning(["queued"]))))
    result = run(fake_api, "tune", "--model-id", "m1", "--tag", "a", "--trials", "12",
                 "--metric", "auc", "--space", '{"no_components": [16, 64]}',
                 "--parallelism", "2", "--epochs", "5")
    assert result.exit_code == 0, result.output
    assert fake_api.last("POST", "/tune").json() == {
        "model_id": "m1", "data_tags": ["a"], "hyperparameters": {"epochs": 5},
        "search": {"trials": 12, "metric": "auc", "parallelism": 2,
                   "space": {"no_components": [16, 64]}}}
    assert "m1" in result.output


def test_wait_shows_the_trials_and_the_best_so_far(fake_api: FakeApi) -> None:
    best = {"trial": 1, "value": 0.11, "params": {"no_components": 32, "learning_rate": 0.0421}}
    script = iter([
        status("tuning", 30, tuning=tuning(["complete", "running", "queued"])),
        status("tuning", 60, tuning=tuning(["complete", "complete", "failed"], best)),
        status("done", 100, "completed", tuning=tuning(["complete", "complete", "failed"],
                                                      best)),
    ])

    def next_status(_: Seen) -> tuple[int, Any]:
        return 200, next(script)

    fake_api.on("POST", "/tune", (202, status("tuning", 0, tuning=tuning(["queued"] * 3))))
    fake_api.on("GET", "/status/m1", next_status)
    result = run(fake_api, "tune", "--model-id", "m1", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 of 3 trials done" in out
    assert "best so far: trial 1, precision_at_k 0.1100" in out
    assert "w1@host" in out and "no_components=32" in out and "failed" in out


def test_wait_on_a_cancelled_search_exits_4(fake_api: FakeApi) -> None:
    fake_api.on("POST", "/tune", (202, status("tuning", 0, tuning=tuning(["queued"]))))
    fake_api.on("GET", "/status/m1", (200, status("cancelled", 0, "error",
                                                  tuning=tuning(["cancelled"]))))
    result = run(fake_api, "tune", "--model-id", "m1", "--wait", "--poll-interval", "0.01")
    assert result.exit_code == 4
