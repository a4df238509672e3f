"""The traffic log: every served request (query, embedding served, results returned, model version) and the
relevance feedback users give on it, in an object store (a local folder or S3/MinIO via ``open_store``).

Layout: ``requests/<YYYYMMDD>/<HHMMSS.ffffff>-<id>.json`` (one object per predict call, holding one record per
instance) and ``feedback/<YYYYMMDD>/<HHMMSS.ffffff>-<id>.json``. One object per write means many server replicas
can log to one bucket without appends or locks, and the key names alone bound a window by time. A record's
``request_id`` (``<YYYYMMDD>T<HHMMSS.ffffff>-<call id>-<n>``) names the object that holds it, so feedback on an
unknown request is refused (by any replica) without a scan.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from cafe.storage import ObjectStore, join, open_store

REQUESTS, FEEDBACK, IMAGES = "requests", "feedback", "images"


def _stamp(at: datetime) -> str:
    return f"{at:%Y%m%d}/{at:%H%M%S.%f}"


class UnknownRequest(LookupError):
    """Feedback names a request id this log never answered."""


def _key_time(key: str) -> datetime | None:
    """The write time encoded in a log key (``<prefix>/<YYYYMMDD>/<HHMMSS.ffffff>-<id>.json``)."""
    parts = key.split("/")
    try:
        return datetime.strptime(f"{parts[-2]} {parts[-1].split('-')[0]}", "%Y%m%d %H%M%S.%f").replace(tzinfo=timezone.utc)
    except (IndexError, ValueError):
        return None


@dataclass
class Window:
    """The records of one monitoring window, feedback joined on (``chosen`` set where a user gave it)."""

    records: list[dict] = field(default_factory=list)
    start: str | None = None
    end: str | None = None
    unreadable: list[str] = field(default_factory=list)  # keys that were not valid JSON records

    def of_kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def labelled(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "search" and r.get("chosen") is not None]


class TrafficLog:
    """Write and read the request / feedback log of one store."""

    def __init__(self, store: ObjectStore | str):
        self.store = store if isinstance(store, ObjectStore) else open_store(store)

    def log_request(self, records: list[dict], model_name: str, model_version: str,
                    at: datetime | None = None) -> list[dict]:
        """Store one predict call's records; each gets ``request_id``, ``ts``, model name and version."""
        at = at or datetime.now(timezone.utc)
        call = uuid.uuid4().hex[:16]
        out = []
        for i, rec in enumerate(records):
            out.append({"request_id": f"{at:%Y%m%dT%H%M%S.%f}-{call}-{i}", "ts": at.isoformat(), "model_name": model_name,
                        "model_version": model_version, **rec})
        self.store.put_bytes(join(REQUESTS, f"{_stamp(at)}-{call}.json"), json.dumps({"records": out}).encode())
        return out

    def log_image(self, sha256: str, data: bytes) -> str:
        """Keep a query image once (content-addressed), so a window can become training data."""
        key = join(IMAGES, f"{sha256}.png")
        if not self.store.exists(key):
            self.store.put_bytes(key, data)
        return key

    def _request_key(self, request_id: str) -> tuple[str, int] | None:
        parts = str(request_id).split("-")
        if len(parts) != 3 or not parts[2].isdigit() or "T" not in parts[0] or not parts[1].isalnum():
            return None
        day, _, clock = parts[0].partition("T")
        if not (day.isdigit() and len(day) == 8 and clock.replace(".", "").isdigit()):
            return None
        return join(REQUESTS, day, f"{clock}-{parts[1]}.json"), int(parts[2])

    def has_request(self, request_id: str) -> bool:
        """Whether ``request_id`` names a record this log holds."""
        found = self._request_key(request_id)
        if found is None or not self.store.exists(found[0]):
            return False
        try:
            return found[1] < len(json.loads(self.store.get_bytes(found[0]))["records"])
        except (ValueError, KeyError, TypeError):
            return False

    def log_feedback(self, request_id: str, chosen: str, at: datetime | None = None) -> dict:
        """The item the user chose for a request (a gallery id); an unknown request id is refused, not stored."""
        if not request_id or not chosen:
            raise ValueError("feedback needs 'request_id' (from the predict response) and 'chosen' (a result id)")
        if not self.has_request(request_id):
            raise UnknownRequest(f"request_id {request_id!r}: no such request in the traffic log")
        at = at or datetime.now(timezone.utc)
        entry = {"request_id": str(request_id), "chosen": str(chosen), "ts": at.isoformat()}
        self.store.put_bytes(join(FEEDBACK, f"{_stamp(at)}-{uuid.uuid4().hex[:12]}.json"), json.dumps(entry).encode())
        return entry

    def _keys(self, prefix: str, since: datetime | None, until: datetime | None) -> list[str]:
        keys = []
        for key in self.store.list(prefix + "/"):
            at = _key_time(key)
            if at is None or (since and at < since) or (until and at > until):
                continue
            keys.append(key)
        return keys

    def read_window(self, hours: float = 0.0, max_requests: int = 0, now: datetime | None = None) -> Window:
        """Requests of the last ``hours`` (0: all), the newest ``max_requests`` records (0: all), with the
        feedback given on them (feedback may arrive after the window's last request)."""
        now = now or datetime.now(timezone.utc)
        since = now - timedelta(hours=hours) if hours else None
        window = Window()
        for key in self._keys(REQUESTS, since, now):
            try:
                window.records.extend(json.loads(self.store.get_bytes(key))["records"])
            except (ValueError, KeyError, TypeError):
                window.unreadable.append(key)
        window.records.sort(key=lambda r: r.get("ts", ""))
        if max_requests:
            window.records = window.records[-max_requests:]
        by_id = {r["request_id"]: r for r in window.records if "request_id" in r}
        for key in self._keys(FEEDBACK, since, None):
            try:
                entry = json.loads(self.store.get_bytes(key))
            except ValueError:
                window.unreadable.append(key)
                continue
            if entry.get("request_id") in by_id:
                by_id[entry["request_id"]]["chosen"] = entry.get("chosen")
        if window.records:
            window.start, window.end = window.records[0].get("ts"), window.records[-1].get("ts")
        return window


def chosen_rank(record: dict) -> float:
    """1-based rank of the chosen item among the results returned; ``inf`` when it was not returned."""
    ids = [r.get("id") for r in record.get("results") or []]
    return float(ids.index(record["chosen"]) + 1) if record.get("chosen") in ids else math.inf
