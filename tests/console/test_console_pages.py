"""The tuning page, the schedule and pin forms of a model page, and the similar-items panel,
over Flask's test client (fakeredis, no broker): what they show, scopes, tenant isolation and
bad input (error pages, never a 500)."""

from __future__ import annotations

import re
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from api.console.tuning import best_so_far
from shared.contracts import TASK_TUNE
from shared.keys import create_key
from shared.storage import Storage
from tests.console.test_console import csrf, sign_in
from tests.helpers.models import make_artifact, register
from tests.helpers.producer import SentTasks


@pytest.fixture
def shop(fake_redis: fakeredis.FakeRedis, storage: Storage) -> str:
    """Model ``shop`` of tenant acme with two kept versions (v2 serving)."""
    register(fake_redis, storage, "acme", "shop", make_artifact(seed=1))
    register(fake_redis, storage, "acme", "shop", make_artifact(seed=2))
    return "shop"


def _post(client: FlaskClient, path: str, data: dict[str, str],
          page: str = "/console/runs", **kwargs: Any) -> Any:
    return client.post(path, data={"csrf_token": csrf(client, page), **data}, **kwargs)


def test_best_so_far_is_the_running_maximum_over_completed_trials() -> None:
    trials = [{"trial": 2, "state": "complete", "value": 0.3},
              {"trial": 0, "state": "complete", "value": 0.2},
              {"trial": 1, "state": "failed", "value": None},
              {"trial": 3, "state": "complete", "value": 0.1},
              {"trial": 4, "state": "running", "value": None}]
    assert best_so_far({"trials": trials}) == {"x": [0, 2, 3], "best": [0.2, 0.3, 0.3]}


def test_the_tuning_form_starts_a_search_and_its_page_polls_its_trials(
        client: FlaskClient, api_key: str, sent: SentTasks) -> None:
    sign_in(client, api_key)
    response = _post(client, "/console/tuning", {
        "model_id": "m1", "data_tags": "shop", "trials": "3", "metric": "recall_at_k",
        "parallelism": "2", "epochs": "4"}, page="/console/tuning")
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("/console/tuning/m1?version=1")
    assert sent.sent == [(TASK_TUNE, {"tenant": "acme", "model_id": "m1", "version": 1})]
    page = client.get("/console/tuning/m1?version=1").get_data(as_text=True)
    assert len(re.findall(r'class="trial" data-state="queued"', page)) == 3
    assert 'hx-trigger="every 1s"' in page and "No trial has finished yet" in page
    assert "recall at k" in page
    listing = client.get("/console/tuning").get_data(as_text=True)
    assert "/console/tuning/m1" in listing and "0 / 3" in listing
    live = client.get("/console/tuning/m1/live?version=1")
    assert live.status_code == 200 and 'id="search-live"' in live.get_data(as_text=True)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("trials", "0", "Trials is a whole number from 1 to 200"),
    ("trials", "many", "Trials is a whole number"),
    ("metric", "luck", "not valid"),
    ("epochs", "-3", "Epochs is a whole number"),
    ("model_id", "bad id!", "not valid"),
])
def test_a_bad_search_form_is_a_422_page(client: FlaskClient, api_key: str, sent: SentTasks,
                                         field: str, value: str, says: str) -> None:
    sign_in(client, api_key)
    response = _post(client, "/console/tuning", {"trials": "2", field: value},
                     page="/console/tuning")
    assert response.status_code == 422
    assert says in response.get_data(as_text=True) and response.mimetype == "text/html"
    assert sent.sent == []


def test_search_pages_answer_404_or_422_for_what_is_not_there(
        client: FlaskClient, api_key: str, shop: str) -> None:
    sign_in(client, api_key)
    assert client.get("/console/tuning/nope").status_code == 404
    no_search = client.get("/console/tuning/shop")  # a model that never searched
    assert no_search.status_code == 404 and "no search" in no_search.get_data(as_text=True)
    assert client.get("/console/tuning/shop?version=abc").status_code == 422


def test_pin_and_unpin_a_kept_version(client: FlaskClient, api_key: str, shop: str) -> None:
    sign_in(client, api_key)
    page = client.get("/console/runs/shop").get_data(as_text=True)
    assert "Serving version <strong>v2</strong>, not pinned" in page
    response = _post(client, "/console/runs/shop/serve", {"version": "1", "pin": "1"})
    assert response.status_code == 302
    page = client.get("/console/runs/shop").get_data(as_text=True)
    assert "Serving version <strong>v1</strong>, <strong>pinned</strong>" in page
    assert 'id="unpin"' in page
    _post(client, "/console/runs/shop/serve", {"version": "1"})
    assert "v1</strong>, not pinned" in client.get("/console/runs/shop").get_data(as_text=True)
    for bad, status in (({"version": "9"}, 404), ({"version": "x"}, 422), ({}, 422)):
        response = _post(client, "/console/runs/shop/serve", bad)
        assert response.status_code == status and response.mimetype == "text/html"


def test_set_see_and_remove_a_schedule(client: FlaskClient, api_key: str, shop: str) -> None:
    sign_in(client, api_key)
    assert 'id="no-schedule"' in client.get("/console/runs/shop").get_data(as_text=True)
    response = _post(client, "/console/runs/shop/schedule", {
        "cron": "0 3 * * *", "data_tags": "shop", "epochs": "5", "only_with_new_data": "1"})
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get("/console/runs/shop").get_data(as_text=True)
    assert "cron <code>0 3 * * *</code>" in page and "on tags shop" in page
    next_run = re.search(r'id="schedule-next">([^<]+)<', page)
    assert next_run and "T03:00:00" in next_run.group(1)
    assert 'value="0 3 * * *"' in page and 'value="5"' in page  # the form shows it
    assert _post(client, "/console/runs/shop/schedule/delete", {}).status_code == 302
    assert 'id="no-schedule"' in client.get("/console/runs/shop").get_data(as_text=True)
    gone = _post(client, "/console/runs/shop/schedule/delete", {})
    assert gone.status_code == 404 and "has no schedule" in gone.get_data(as_text=True)


def test_a_schedule_can_run_searches(client: FlaskClient, api_key: str, shop: str) -> None:
    sign_in(client, api_key)
    response = _post(client, "/console/runs/shop/schedule", {
        "kind": "tune", "interval_minutes": "720", "data_tags": "shop"})
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get("/console/runs/shop").get_data(as_text=True)
    assert "a search on tags shop" in page
    assert re.search(r'<option value="tune"\s+selected', page)  # the form keeps the kind
    refused = _post(client, "/console/runs/shop/schedule", {
        "kind": "tune", "interval_minutes": "720", "warm_start": "1"})
    assert refused.status_code == 422 and "warm_start goes with train" in \
        refused.get_data(as_text=True)
    assert _post(client, "/console/runs/shop/schedule/delete", {}).status_code == 302


@pytest.mark.parametrize(("form", "says"), [
    ({"cron": "0 3 * *"}, "cron"),
    ({"cron": "0 3 * * *", "interval_minutes": "60"}, "exactly one of interval_minutes"),
    ({}, "exactly one of interval_minutes"),
    ({"interval_minutes": "soon"}, "minutes is a number"),
    ({"interval_minutes": "0.001"}, "interval_minutes must be"),
    ({"cron": "0 3 * * *", "epochs": "0"}, "Epochs is a whole number"),
])
def test_a_bad_schedule_form_is_a_422_page(client: FlaskClient, api_key: str, shop: str,
                                           form: dict[str, str], says: str) -> None:
    sign_in(client, api_key)
    response = _post(client, "/console/runs/shop/schedule", form)
    body = response.get_data(as_text=True)
    assert response.status_code == 422 and says in body, body
    assert 'id="no-schedule"' in body  # the model page again, nothing stored


def test_similar_items_with_names(client: FlaskClient, api_key: str, shop: str,
                                  auth: dict[str, str]) -> None:
    entities = {"entities": [{"id": f"i{n}", "type": "item", "name": f"Thing {n}",
                              "media_url": "https://example.com/p.png"} for n in range(40)]}
    assert client.post("/v1/recommender/data_batch", json=entities,
                       headers=auth).status_code == 201
    sign_in(client, api_key)
    page = client.get("/console/try").get_data(as_text=True)
    assert 'id="similar_model"' in page and "SIMILAR-ITEMS" not in page
    response = _post(client, "/console/try/similar", {
        "model_id": "shop", "target_id": "i3", "max_recommendations": "5"},
        page="/console/try", headers={"HX-Request": "true"})
    body = response.get_data(as_text=True)
    assert response.status_code == 200, body
    expected = client.get("/v1/recommender/similar_items?model_id=shop&target_id=i3"
                          "&max_recommendations=5", headers=auth).get_json()
    ids = re.findall(r'class="rec" data-target="([^"]+)"', body)
    assert ids == [row["similar_id"] for row in expected["similar_items"]]
    assert "Thing " in body and 'src="https://example.com/p.png"' in body
    for form, status in (({"model_id": "nope", "target_id": "i3"}, 404),
                         ({"model_id": "shop", "target_id": ""}, 422)):
        bad = _post(client, "/console/try/similar", form, page="/console/try",
                    headers={"HX-Request": "true"})
        assert bad.status_code == status and 'role="alert"' in bad.get_data(as_text=True)


def test_another_tenant_sees_none_of_it(client: FlaskClient, api_key: str, shop: str,
                                        sent: SentTasks,
                                        fake_redis: fakeredis.FakeRedis) -> None:
    sign_in(client, api_key)
    # (a model id long enough never to turn up by chance in the page's random tokens)
    _post(client, "/console/tuning", {"model_id": "acme-search", "trials": "2"},
          page="/console/tuning")
    _post(client, "/console/runs/shop/schedule", {"interval_minutes": "60"})
    other, _ = create_key(fake_redis, "globex", ["data:read", "train", "recommend"])
    sign_in(client, other)
    assert "acme-search" not in client.get("/console/tuning").get_data(as_text=True)
    assert client.get("/console/tuning/acme-search").status_code == 404
    assert client.get("/console/runs/shop").status_code == 404
    for path, data in (("/console/runs/shop/schedule", {"interval_minutes": "60"}),
                       ("/console/runs/shop/schedule/delete", {}),
                       ("/console/runs/shop/serve", {"version": "1"}),
                       ("/console/try/similar", {"model_id": "shop", "target_id": "i1"})):
        assert _post(client, path, data, page="/console/try").status_code == 404, path
    sign_in(client, api_key)  # acme's schedule is still there
    assert "every 60 minutes" in client.get("/console/runs/shop").get_data(as_text=True)
