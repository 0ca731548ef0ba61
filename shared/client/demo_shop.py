"""A synthetic shop for the demo: users with tastes, items with categories and prices, and a
year of views and purchases with timestamps, generated with numpy (no per-interaction loops).

How the behaviour is made, so the model has something real to learn:

- each user has a taste, a Dirichlet draw over the categories (concentrated on a few), a
  budget, and an activity level (log-normal, so a few users are very active);
- each interaction picks a category from the user's taste, then an item inside that
  category by the item's popularity (Zipf-like within its category);
- a view becomes a purchase with a probability that falls when the price is above the
  user's budget;
- the users' metadata tells their two favourite categories (``interests``), an age band and
  a region, so a new user known only by metadata can be scored from those features.

Only the 2,500 entity records are built per entity in Python (their metadata JSON); the
interactions are whole numpy columns written by pyarrow's CSV writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CATEGORIES: tuple[str, ...] = (
    "books", "electronics", "outdoor", "kitchen", "fashion",
    "toys", "beauty", "garden", "sports", "music",
)
#: Typical price per category (EUR); each item's price varies log-normally around it.
BASE_PRICE = np.array([15.0, 220.0, 80.0, 45.0, 60.0, 30.0, 25.0, 40.0, 70.0, 20.0])
NOUNS: tuple[str, ...] = (
    "Classic", "Compact", "Deluxe", "Eco", "Pro", "Smart", "Urban", "Wild", "Nordic", "Lite",
)
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
YEAR_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True)
class Shop:
    """The generated shop, as numpy columns."""

    user_ids: np.ndarray  # (n_users,) str
    user_taste: np.ndarray  # (n_users, n_categories) float64, rows sum to 1
    user_interests: np.ndarray  # (n_users, 2) int64 category indices, favourite first
    user_budget: np.ndarray  # (n_users,) float64
    user_region: np.ndarray  # (n_users,) int64
    user_age: np.ndarray  # (n_users,) int64
    item_ids: np.ndarray  # (n_items,) str
    item_category: np.ndarray  # (n_items,) int64
    item_price: np.ndarray  # (n_items,) float64
    item_brand: np.ndarray  # (n_items,) int64
    item_name: np.ndarray  # (n_items,) str
    event_type: np.ndarray  # (n_events,) str, "view" or "purchase"
    event_user: np.ndarray  # (n_events,) int64 user index
    event_item: np.ndarray  # (n_events,) int64 item index
    event_time: np.ndarray  # (n_events,) datetime64[s], within the year before `now`

    @property
    def n_events(self) -> int:
        """Number of interactions."""
        return int(self.event_user.shape[0])


def _items(rng: np.random.Generator, n_items: int) -> dict[str, np.ndarray]:
    """Items with categories, prices, brands and names; ``popularity`` is not uploaded."""
    n_cat = len(CATEGORIES)
    # Every category gets items; popularity is Zipf-like inside a category.
    item_category = rng.permutation(np.arange(n_items) % n_cat)
    item_price = np.round(BASE_PRICE[item_category] * rng.lognormal(0.0, 0.45, n_items), 2)
    item_brand = rng.integers(0, 25, n_items)
    popularity = 1.0 / (rng.permutation(n_items) + 8.0) ** 1.1
    item_ids = np.char.add("item-", np.char.zfill(np.arange(1, n_items + 1).astype(str), 4))
    nouns = np.array(NOUNS)[rng.integers(0, len(NOUNS), n_items)]
    cats = np.array(CATEGORIES)[item_category]
    item_name = np.char.add(np.char.add(nouns, " "), np.char.add(cats, " ")).astype(str)
    item_name = np.char.add(item_name, np.arange(1, n_items + 1).astype(str))
    return {"item_ids": item_ids, "item_category": item_category, "item_price": item_price,
            "item_brand": item_brand, "item_name": item_name, "popularity": popularity}


def _users(rng: np.random.Generator, n_users: int, n_interactions: int
           ) -> dict[str, np.ndarray]:
    """Users with concentrated tastes, budgets and activity; ``counts``: events per user."""
    user_taste = rng.dirichlet(np.full(len(CATEGORIES), 0.25), n_users)
    user_interests = np.argsort(-user_taste, axis=1)[:, :2]
    user_budget = rng.lognormal(np.log(90.0), 0.6, n_users)
    user_region = rng.integers(0, len(REGIONS), n_users)
    user_age = rng.integers(0, len(AGE_BANDS), n_users)
    user_ids = np.char.add("user-", np.char.zfill(np.arange(1, n_users + 1).astype(str), 5))
    activity = rng.lognormal(0.0, 0.8, n_users)
    counts = rng.multinomial(n_interactions, activity / activity.sum())
    return {"user_ids": user_ids, "user_taste": user_taste, "user_interests": user_interests,
            "user_budget": user_budget, "user_region": user_region, "user_age": user_age,
            "counts": counts}


def _events(rng: np.random.Generator, items: dict[str, np.ndarray],
            users: dict[str, np.ndarray], end: np.datetime64) -> dict[str, np.ndarray]:
    """Interactions, in time order: user -> category from taste -> item by popularity."""
    n_cat = len(CATEGORIES)
    counts, item_category = users["counts"], items["item_category"]
    n_interactions = int(counts.sum())
    event_user = np.repeat(np.arange(len(counts)), counts)
    cum_taste = np.cumsum(users["user_taste"][event_user], axis=1)
    draw = rng.random(n_interactions)[:, None] * cum_taste[:, -1:]
    event_cat = np.minimum((cum_taste < draw).sum(axis=1), n_cat - 1)
    order = np.argsort(item_category, kind="stable")
    sorted_cat = item_category[order]
    weights = items["popularity"][order]
    cat_totals = np.bincount(sorted_cat, weights=weights, minlength=n_cat)
    within = np.cumsum(weights) - np.concatenate(([0.0], np.cumsum(cat_totals)))[sorted_cat]
    keys = sorted_cat + within / cat_totals[sorted_cat]  # in (cat, cat + 1]
    pick = np.clip(rng.random(n_interactions), 1e-9, 1 - 1e-9)
    event_item = order[np.searchsorted(keys, event_cat + pick, side="left")]

    # Views turn into purchases less often when the price is over budget.
    over = np.maximum(items["item_price"][event_item] / users["user_budget"][event_user] - 1.0,
                      0.0)
    bought = rng.random(n_interactions) < 0.14 * np.exp(-2.0 * over)
    event_type = np.where(bought, "purchase", "view")
    seconds = rng.integers(0, YEAR_SECONDS, n_interactions)
    event_time = end - seconds.astype("timedelta64[s]")
    by_time = np.argsort(event_time, kind="stable")
    return {"event_type": event_type[by_time], "event_user": event_user[by_time],
            "event_item": event_item[by_time], "event_time": event_time[by_time]}


def generate_shop(
    n_users: int = 2000,
    n_items: int = 500,
    n_interactions: int = 60_000,
    seed: int = 7,
    now: datetime | None = None,
) -> Shop:
    """Generate a shop; the same seed and ``now`` give the same shop."""
    rng = np.random.default_rng(seed)
    end = np.datetime64((now or datetime.now(UTC)).replace(tzinfo=None), "s")
    # drawn in this order from one generator, so a seed keeps giving the same shop
    items = _items(rng, n_items)
    users = _users(rng, n_users, n_interactions)
    events = _events(rng, items, users, end)
    del items["popularity"], users["counts"]
    return Shop(**items, **users, **events)


def user_metadata(shop: Shop, index: int) -> dict[str, object]:
    """The metadata a user is uploaded with."""
    return {
        "interests": [CATEGORIES[int(c)] for c in shop.user_interests[index]],
        "age_band": AGE_BANDS[int(shop.user_age[index])],
        "region": REGIONS[int(shop.user_region[index])],
    }


def _write(path: Path, columns: dict[str, np.ndarray | list[str]]) -> Path:
    table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
    # A plain header line (pyarrow would quote the names), then pyarrow's quoted rows.
    with path.open("wb") as fh:
        fh.write((",".join(columns) + "\n").encode())
        pacsv.write_csv(table, fh, write_options=pacsv.WriteOptions(include_header=False))
    return path


def write_catalogue(shop: Shop, directory: Path) -> list[Path]:
    """``users.csv`` and ``items.csv`` in the entities format (id,type,name,metadata,media_url)."""
    n_users, n_items = shop.user_ids.shape[0], shop.item_ids.shape[0]
    users = _write(directory / "users.csv", {
        "id": shop.user_ids,
        "type": np.full(n_users, "user"),
        "name": np.full(n_users, ""),
        "metadata": [json.dumps(user_metadata(shop, i)) for i in range(n_users)],
        "media_url": np.full(n_users, ""),
    })
    items = _write(directory / "items.csv", {
        "id": shop.item_ids,
        "type": np.full(n_items, "item"),
        "name": shop.item_name,
        "metadata": [
            json.dumps({"category": CATEGORIES[int(c)], "price": float(p), "brand": f"brand-{b}"})
            for c, p, b in zip(shop.item_category, shop.item_price, shop.item_brand, strict=True)
        ],
        "media_url": np.char.add(np.char.add("https://shop.example/img/", shop.item_ids), ".jpg"),
    })
    return [users, items]


def write_events(shop: Shop, directory: Path, parts: int = 4) -> list[tuple[Path, str]]:
    """The interactions split by time into ``parts`` files; returns (path, period tag) pairs."""
    start, end = shop.event_time.min(), shop.event_time.max()
    edges = start + (end - start) * np.arange(1, parts) // parts
    slot = np.searchsorted(edges, shop.event_time, side="right")
    written: list[tuple[Path, str]] = []
    for part in range(parts):  # one loop step per file, not per row
        mask = slot == part
        if not mask.any():
            continue
        times = shop.event_time[mask]
        tag = f"period-{part + 1}-of-{parts}"
        path = _write(directory / f"events-{part + 1}.csv", {
            "type": shop.event_type[mask],
            "source_id": shop.user_ids[shop.event_user[mask]],
            "target_id": shop.item_ids[shop.event_item[mask]],
            "timestamp": np.datetime_as_string(times, unit="s"),
            "metadata": np.full(int(mask.sum()), ""),
        })
        written.append((path, tag))
    return written
