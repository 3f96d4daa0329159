"""The walk over the names a name uses: cycles and depth, named by their path."""

from __future__ import annotations

import pytest

from thinktank.config import parse_config
from thinktank.errors import ConfigError
from thinktank.names import MAX_DEPTH, find_cycle


def test_a_cycle_is_named_by_its_path() -> None:
    graph = {"a": ["x", "b"], "b": ["c"], "c": ["a"]}
    assert find_cycle("a", lambda n: graph.get(n, [])) == "'a' contains itself: a -> b -> c -> a"
    assert find_cycle("x", lambda n: graph.get(n, [])) is None


def test_a_request_may_give_the_root_its_own_members() -> None:
    graph = {"e": ["m"]}
    assert find_cycle("e", lambda n: graph.get(n, []), start=["m", "e"]) == "'e' contains itself: e -> e"


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(MAX_DEPTH + 2)}
    why = find_cycle("n0", lambda n: chain.get(n, []))
    assert why is not None and why.startswith(f"models nest deeper than {MAX_DEPTH} levels: n0 -> n1")


def test_shared_members_are_walked_once() -> None:
    # a lattice: every level uses both names of the next; 2**depth paths, each name seen once
    calls: list[str] = []
    depth = 7

    def uses(name: str) -> list[str]:
        calls.append(name)
        level = int(name[1:].split("_", maxsplit=1)[0])
        return [f"l{level + 1}_a", f"l{level + 1}_b"] if level < depth else []

    assert find_cycle("l0_a", uses) is None
    assert len(calls) == len(set(calls)) == 1 + 2 * depth


def test_the_configuration_refuses_a_debate_whose_persona_runs_on_itself() -> None:
    cfg = {"models": [{"name": "g", "provider": "mock"}],
           "personas": [{"name": "Ada", "domain": "x", "backstory": "y", "model": "debate/p"}],
           "debates": [{"name": "p", "models": ["g"]}]}
    with pytest.raises(ConfigError, match=r"^t\.yaml: .*'debate/p' contains itself: debate/p -> debate/p"):
        parse_config(cfg, "t.yaml")


def test_reachable_walks_every_name_once_whatever_the_shape() -> None:
    from thinktank.names import reachable

    graph = {"ensemble/a": ["x", "ensemble/b"], "ensemble/b": ["x", "kb/docs", "ensemble/a"], "kb/docs": ["y"]}
    reached = reachable("ensemble/a", lambda n: graph.get(n, []))
    assert reached[0] == "ensemble/a"
    assert sorted(reached) == sorted(["ensemble/a", "ensemble/b", "x", "kb/docs", "y"])
    assert reachable("solo", None) == ["solo"]
