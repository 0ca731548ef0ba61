"""The search space rules and the status view of a search's state."""

from __future__ import annotations

from shared.runs.records import public_tuning
from shared.runs.search import DEFAULT_SPACE, default_trial, space_errors
from shared.runs.tuning import new_state


def test_the_default_space_is_valid() -> None:
    assert space_errors(dict(DEFAULT_SPACE)) == {}


def test_ranges_and_choices_are_checked_against_the_training_limits() -> None:
    errors = space_errors({"learning_rate": [0, 0.1], "item_alpha": [1e-6, 1.0],
                           "max_sampled": [5, 2000], "loss": ["warp", "hinge"],
                           "use_metadata_features": [True, "yes"], "epochs": [1, 2],
                           "no_components": [16, 64]})
    assert set(errors) == {"learning_rate", "item_alpha", "max_sampled", "loss",
                           "use_metadata_features", "epochs"}


def test_absurd_bounds_are_refused_not_crashed_on() -> None:
    errors = space_errors({"no_components": [1, 10**400], "learning_rate": [float("nan"), 0.1],
                           "max_sampled": [True, 5], "item_alpha": [{"a": 1}, 0.1]})
    assert set(errors) == {"no_components", "learning_rate", "max_sampled", "item_alpha"}


def test_the_first_trial_is_the_requests_own_parameters_inside_the_space() -> None:
    params = {"hyperparameters": {"no_components": 32, "learning_rate": 0.5},
              "use_metadata_features": True}
    space = {"no_components": [16, 64], "learning_rate": [0.01, 0.2],
             "use_metadata_features": [True, False]}
    assert default_trial(space, params) == {"no_components": 32, "use_metadata_features": True}


def test_the_status_hides_the_internal_keys_of_a_search() -> None:
    view = public_tuning(new_state("auc", 2, None))
    assert view is not None
    assert set(view) == {"metric", "trials_total", "trials_done", "best", "trials"}
    assert set(view["trials"][0]) == {"trial", "params", "value", "state", "epochs", "seconds",
                                      "worker"}
    assert public_tuning(None) is None
