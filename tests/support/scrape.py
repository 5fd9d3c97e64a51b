"""Read a /metrics endpoint over HTTP, as Prometheus would, into samples to assert on."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    text: str
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0.0 when there is no such sample (a counter never incremented)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def matching(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {key: v for (n, key), v in self.values.items() if n == name and wanted <= key}

    def names(self) -> set[str]:
        return {name for name, _ in self.values}


def scrape(address: str, timeout: float = 10.0) -> Samples:
    """GET http://<address>/metrics and parse it with prometheus-client's own parser (blocking)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Samples(text, values)
