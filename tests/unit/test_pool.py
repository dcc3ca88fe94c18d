"""The model pool with stand-in holders: first-use loads, LRU eviction, idle unloads, reconfigure, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from deployments.holder import DeviceConfig, ModelHolder
from deployments.pool import ModelPool

MIB = 1024 * 1024
KEPT: list[np.ndarray] = []  # what a leaky holder "forgets" to release
WAIT_S = 5  # longest a test waits for a thread it started; far above the milliseconds each step takes


class FakeSpec(DeviceConfig):
    model: str = "a"
    size_mib: int = 1
    leak: bool = False


class FakeHolder(ModelHolder[FakeSpec, np.ndarray]):
    def identity(self, config: FakeSpec) -> tuple[str, int]:
        return config.model, config.size_mib

    def load_model(self, config: FakeSpec) -> np.ndarray:
        return np.ones(config.size_mib * MIB, dtype=np.uint8)  # touched, so resident

    def release_model(self, model: np.ndarray) -> None:
        if self.config.leak:
            KEPT.append(model)

    def infer(self) -> tuple[str, int]:
        """(the model's name, which holder object answered)."""
        return self.config.model, id(self)

    def block(self, started: threading.Event, release: threading.Event) -> str:
        started.set()
        assert release.wait(WAIT_S), "the test never released the call"
        return self.config.model


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def built() -> list[FakeHolder]:
    """Every holder the pools of one test built, in order."""
    return []


@pytest.fixture
def make_pool(clock: FakeClock, built: list[FakeHolder]) -> Iterator:
    pools: list[ModelPool] = []

    def factory(spec: FakeSpec) -> FakeHolder:
        holder = FakeHolder(spec)
        built.append(holder)
        return holder

    def make(max_loaded: int = 2, idle_unload_s: float | None = None) -> ModelPool[FakeSpec, FakeHolder]:
        pool = ModelPool(factory, max_loaded=max_loaded, idle_unload_s=idle_unload_s, clock=clock)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
    KEPT.clear()


def spec(key: str, **fields) -> FakeSpec:
    return FakeSpec(model=fields.pop("model", key), **fields)


async def use(pool: ModelPool, *keys: str) -> None:
    for key in keys:
        await pool.call(key, spec(key), "infer")


def reasons(pool: ModelPool) -> list[tuple[str, str]]:
    return [(u.key, u.reason) for u in pool.unloads]


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT_S), "the call never started"


# --- loading ------------------------------------------------------------------------------------


async def test_a_model_is_loaded_on_first_use_and_only_then(make_pool, built):
    pool = make_pool()
    assert pool.loaded() == [] and built == []
    assert (await pool.call("a", spec("a"), "infer"))[0] == "a"
    assert pool.loaded() == ["a"] and [h.config.model for h in built] == ["a"]
    await pool.call("a", spec("a"), "infer")
    assert len(built) == 1, "the second call reused the loaded holder"


async def test_concurrent_first_calls_load_the_model_once(make_pool, built):
    pool = make_pool()
    answers = await asyncio.gather(*(pool.call("a", spec("a"), "infer") for _ in range(4)))
    assert len(built) == 1 and {holder_id for _, holder_id in answers} == {id(built[0])}


async def test_load_preloads_without_a_call(make_pool, built):
    pool = make_pool()
    await pool.load("a", spec("a"))
    await pool.load("a", spec("a"))
    assert pool.loaded() == ["a"] and len(built) == 1


# --- eviction -----------------------------------------------------------------------------------


async def test_the_least_recently_used_model_is_evicted_at_the_bound(make_pool):
    pool = make_pool(max_loaded=2)
    await use(pool, "a", "b", "a")  # b is now the least recently used
    await use(pool, "c")
    assert pool.loaded() == ["a", "c"] and reasons(pool) == [("b", "evicted")]
    await use(pool, "b")
    assert pool.loaded() == ["c", "b"] and reasons(pool) == [("b", "evicted"), ("a", "evicted")]


async def test_every_unload_has_a_teardown_report_of_the_model_it_unloaded(make_pool):
    pool = make_pool(max_loaded=1)
    await use(pool, "a", "b", "c")
    assert reasons(pool) == [("a", "evicted"), ("b", "evicted")]
    for unload in pool.unloads:
        assert unload.report is not None and unload.report.model == unload.key
        assert unload.as_dict()["teardown"]["model"] == unload.key
    assert pool.last_teardown is pool.unloads[-1].report
    assert pool.unload_counts == {"evicted": 2}


async def test_eviction_waits_for_the_call_in_flight_on_the_evicted_model(make_pool, built):
    pool = make_pool(max_loaded=1)
    started, release = threading.Event(), threading.Event()
    in_flight = asyncio.create_task(pool.call("a", spec("a"), "block", started, release))
    await wait_for(started)
    [evicted] = built
    loading_b = asyncio.create_task(pool.call("b", spec("b"), "infer"))
    await asyncio.sleep(0.2)
    assert not loading_b.done(), "b must wait until a's call has finished"
    assert evicted.model is not None and reasons(pool) == [], "a was torn down under its own call"
    release.set()
    assert await asyncio.wait_for(in_flight, WAIT_S) == "a"
    assert (await asyncio.wait_for(loading_b, WAIT_S))[0] == "b"
    assert evicted.model is None and reasons(pool) == [("a", "evicted")]
    assert pool.loaded() == ["b"]


# --- idle unloads ---------------------------------------------------------------------------------


async def test_models_idle_longer_than_idle_unload_s_are_unloaded_but_pinned_ones_stay(make_pool, clock):
    pool = make_pool(max_loaded=3, idle_unload_s=10)
    pool.pinned = frozenset({"a"})
    await use(pool, "a", "b", "c")
    clock.now_s += 5
    await use(pool, "c")
    clock.now_s += 6  # a and b idle 11 s, c 6 s
    await pool.unload_idle()
    assert pool.loaded() == ["a", "c"] and reasons(pool) == [("b", "idle")]
    assert pool.unloads[0].report is not None
    clock.now_s += 1000
    await pool.unload_idle()
    assert pool.loaded() == ["a"], "the pinned model is never unloaded for being idle"


async def test_a_model_in_use_is_not_unloaded_for_being_idle(make_pool, clock):
    pool = make_pool(max_loaded=2, idle_unload_s=10)
    started, release = threading.Event(), threading.Event()
    in_flight = asyncio.create_task(pool.call("a", spec("a"), "block", started, release))
    await wait_for(started)
    clock.now_s += 100
    await pool.unload_idle()
    assert pool.loaded() == ["a"] and reasons(pool) == []
    release.set()
    await asyncio.wait_for(in_flight, WAIT_S)
    await pool.unload_idle()
    assert pool.loaded() == ["a"], "idle time counts from the end of the last call"
    clock.now_s += 11
    await pool.unload_idle()
    assert pool.loaded() == [] and reasons(pool) == [("a", "idle")]


async def test_no_idle_unloads_without_idle_unload_s(make_pool, clock):
    pool = make_pool(idle_unload_s=None)
    await use(pool, "a")
    clock.now_s += 1e9
    await pool.unload_idle()
    assert pool.loaded() == ["a"]


# --- reconfigure ----------------------------------------------------------------------------------


async def test_reconfigure_unloads_removed_models_and_swaps_changed_ones_in_place(make_pool, built):
    pool = make_pool(max_loaded=3)
    await use(pool, "a", "b", "c")
    holder_a = built[0]
    await pool.reconfigure({"a": spec("a", model="a2"), "c": spec("c", cpu_threads=3)})
    assert pool.loaded() == ["a", "c"]
    assert sorted(reasons(pool)) == [("a", "replaced"), ("b", "removed")]
    replaced, removed = sorted(pool.unloads, key=lambda u: u.key)
    assert removed.report is not None and removed.report.model == "b"
    assert replaced.report is not None and replaced.report.model == "a", "the report is of the old model"
    assert await pool.call("a", spec("a", model="a2"), "infer") == ("a2", id(holder_a)), "same holder, new model"
    assert built[2].config.cpu_threads == 3 and built[2].model is not None, "same identity: applied, no reload"
    assert len(built) == 3


async def test_reconfigure_with_a_lower_bound_evicts_the_least_recently_used(make_pool):
    pool = make_pool(max_loaded=3)
    await use(pool, "a", "b", "c", "a")  # least recently used first: b, c, a
    pool.max_loaded = 1
    await pool.reconfigure({key: spec(key) for key in "abc"})
    assert pool.loaded() == ["a"] and reasons(pool) == [("b", "evicted"), ("c", "evicted")]


# --- health ---------------------------------------------------------------------------------------


async def test_a_teardown_residue_over_the_budget_is_a_health_problem(make_pool):
    pool = make_pool(max_loaded=1)
    await pool.call("a", spec("a", size_mib=200, leak=True), "infer")
    await use(pool, "b")  # evicts a, whose memory stays referenced
    budget = DeviceConfig(rss_residue_budget_mib=64)
    problem = pool.health_problem(budget)
    assert problem is not None and problem.startswith("a left") and "budget 64 MiB" in problem, problem
    assert pool.health_problem(DeviceConfig()) is None, "no RSS budget: residue on CPU is not judged"


async def test_a_clean_teardown_is_healthy_under_the_same_budget(make_pool):
    pool = make_pool(max_loaded=1)
    await pool.call("a", spec("a", size_mib=200), "infer")
    await use(pool, "b")
    assert pool.health_problem(DeviceConfig(rss_residue_budget_mib=64)) is None, pool.last_teardown.summary()


# --- shutdown and status --------------------------------------------------------------------------


async def test_close_unloads_every_model_with_reason_shutdown(make_pool, built):
    pool = make_pool(max_loaded=2)
    await use(pool, "a", "b")
    pool.close()
    assert pool.loaded() == [] and reasons(pool) == [("a", "shutdown"), ("b", "shutdown")]
    assert all(u.report is not None for u in pool.unloads)
    assert [h.model for h in built] == [None, None]
    pool.close()
    assert len(pool.unloads) == 2, "a second close unloads nothing more"


async def test_status_shows_loaded_models_pinning_idle_time_and_unloads_newest_first(make_pool, clock):
    pool = make_pool(max_loaded=2, idle_unload_s=60)
    pool.pinned = frozenset({"b"})
    await use(pool, "a", "b", "c")
    clock.now_s += 7
    status = pool.status()
    assert status["max_loaded_models"] == 2 and status["idle_unload_s"] == 60
    assert list(status["loaded"]) == ["b", "c"]
    assert status["loaded"]["c"]["idle_s"] == 7 and status["loaded"]["c"]["in_use"] == 0
    assert status["loaded"]["c"]["model"] == "c" and status["loaded"]["c"]["loaded"] is True
    assert [key for key, model in status["loaded"].items() if model["pinned"]] == ["b"]
    assert [u["model"] for u in status["unloads"]] == ["a"]
    assert status["unloads"][0]["reason"] == "evicted" and status["unloads"][0]["teardown"]["model"] == "a"


async def test_a_model_loaded_later_and_still_held_is_not_the_evicted_models_residue(make_pool):
    pool = make_pool(max_loaded=2)
    await pool.call("a", spec("a", size_mib=8), "infer")
    await pool.call("b", spec("b", size_mib=200), "infer")
    await use(pool, "c")  # evicts a, released cleanly; b's 200 MiB is still (rightly) held
    assert reasons(pool) == [("a", "evicted")]
    assert pool.health_problem(DeviceConfig(rss_residue_budget_mib=64)) is None, pool.last_teardown.summary()


async def test_on_start_runs_on_the_holder_thread_just_before_the_method(make_pool):
    pool = make_pool()
    seen: list[tuple[str, str]] = []
    on_start = lambda: seen.append(("started", threading.current_thread().name))  # noqa: E731
    answer = await pool.call("a", spec("a"), "infer", on_start=on_start)
    assert answer[0] == "a"
    assert len(seen) == 1 and seen[0][1] != threading.current_thread().name
