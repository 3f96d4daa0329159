"""Reading a ``/metrics`` answer the way Prometheus does (prometheus_client's own parser)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

#: The samples each kind of metric family exports, by suffix of the family's name.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "untyped": ("",)}


@dataclass
class Scrape:
    text: str
    samples: list[tuple[str, dict[str, str], float]]
    families: dict[str, str]
    """Family name -> type."""

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(v for n, lb, v in self.samples
                   if n == name and all(lb.get(k) == want for k, want in labels.items()))

    def label_values(self, name: str, label: str) -> set[str]:
        return {lb[label] for n, lb, _ in self.samples if n == name and label in lb}

    def sample_names(self) -> set[str]:
        """Every series name a PromQL query could use: each family's samples, with or without any seen."""
        names = {n for n, _, _ in self.samples}
        for family, kind in self.families.items():
            names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
        return names


def parse(text: str) -> Scrape:
    samples: list[tuple[str, dict[str, str], float]] = []
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples.extend((s.name, dict(s.labels), s.value) for s in family.samples)
    return Scrape(text, samples, families)
