"""`ModelReplica` and the ASR deployment without Serve: their async methods called directly, fake holders
bound through the constructor. Outside Serve, recording metrics fails silently by design."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import numpy as np
import pytest

from core.audio import SAMPLE_RATE_HZ
from core.chunks import BACKGROUND, INTERACTIVE, ChunkTask, SpeechChunk
from core.errors import BadRequest, ModelUnavailable, UnknownModel
from core.transcript import AsrOptions
from deployments.alignment import AlignmentDeployment
from deployments.asr import AsrConfig, AsrDeployment
from deployments.diarization import DiarizationDeployment
from deployments.holder import DeviceConfig, ModelHolder
from deployments.replica import SINGLE_MODEL, ModelReplica
from tests.replica_calls import transcribe_on
from tests.serve.fake_app import BATCH_LOG_ENV, DELAY_ENV, FakeAlignmentHolder, FakeAsrHolder, FakeDiarizationHolder

MIB = 1024 * 1024
KEPT: list[np.ndarray] = []  # what the leaky holder "forgets" to release
AUDIO = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)  # 1 s


class LeakyConfig(DeviceConfig):
    model: str = "first"
    size_mib: int = 200
    leak: bool = True


class LeakyHolder(ModelHolder[LeakyConfig, np.ndarray]):
    def load_model(self, config: LeakyConfig) -> np.ndarray:
        return np.ones(config.size_mib * MIB, dtype=np.uint8)

    def release_model(self, model: np.ndarray) -> None:
        if self.config.leak:
            KEPT.append(model)


class LeakyDeployment(ModelReplica[LeakyConfig, LeakyConfig, LeakyHolder]):
    """A single-model deployment: the base class's defaults (one model under SINGLE_MODEL)."""

    config_cls = LeakyConfig


MODELS = {"tiny.en": "fake/tiny.en", "base": "fake/base", "small": "fake/small"}


@pytest.fixture
def replicas():
    """Replicas a test made; each one's shutdown hook runs at the end, as Serve's graceful stop does."""
    made: list[ModelReplica] = []
    yield made
    for replica in made:
        replica.__del__()
    KEPT.clear()


@pytest.fixture
def make_asr(replicas):
    async def make(**config: Any) -> AsrDeployment:
        replica = AsrDeployment(holder_factory=FakeAsrHolder)
        replicas.append(replica)
        await replica.reconfigure({"models": MODELS, **config})
        return replica

    return make


def loaded(replica: ModelReplica) -> list[str]:
    return sorted(replica.status()["loaded"])


# --- config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("deployment", "holder"), [
    (AsrDeployment, FakeAsrHolder),
    (AlignmentDeployment, FakeAlignmentHolder),
    (DiarizationDeployment, FakeDiarizationHolder),
])
async def test_reconfigure_refuses_an_unknown_key_by_name(replicas, deployment, holder):
    replica = deployment(holder_factory=holder)
    replicas.append(replica)
    with pytest.raises(ValueError, match=r"invalid user_config for \w+Deployment:(.|\n)*modle"):
        await replica.reconfigure({"modle": "x"})
    with pytest.raises(ModelUnavailable, match="no user_config yet"):
        replica.config  # noqa: B018 - the property raises


async def test_a_refused_update_keeps_the_running_models(make_asr):
    replica = await make_asr()
    with pytest.raises(ValueError, match="modle"):
        await replica.reconfigure({"models": MODELS, "modle": "x"})
    with pytest.raises(ValueError, match="default_model 'nope' is not one of models"):
        await replica.reconfigure({"models": MODELS, "default_model": "nope"})
    result = await transcribe_on(replica, AUDIO, AsrOptions())
    assert result.segments[0].text == "transcribe by fake/tiny.en" and loaded(replica) == ["tiny.en"]


async def test_a_model_that_cannot_load_fails_the_update_and_the_old_one_keeps_serving(make_asr):
    replica = await make_asr()
    with pytest.raises(ModelUnavailable, match=r"no model missing/tiny\.en"):
        await replica.reconfigure({"models": {**MODELS, "tiny.en": "missing/tiny.en"}})
    result = await transcribe_on(replica, AUDIO, AsrOptions())
    assert result.segments[0].text == "transcribe by fake/tiny.en"
    assert replica.health_problem() is None


# --- lifecycle ------------------------------------------------------------------------------------


async def test_reconfigure_preloads_the_default_model_only(make_asr):
    replica = await make_asr(default_model="base")
    status = replica.status()
    assert list(status["loaded"]) == ["base"] and status["loaded"]["base"]["pinned"] is True
    assert status["loaded"]["base"]["model"] == "fake/base"
    assert status["offered"] == ["base", "small", "tiny.en"]


async def test_a_changed_default_model_is_swapped_in_place_with_a_teardown_report(make_asr):
    replica = await make_asr()
    await replica.reconfigure({"models": {**MODELS, "tiny.en": "fake/tiny-v2.en"}})
    status = replica.status()
    assert status["loaded"]["tiny.en"]["model"] == "fake/tiny-v2.en"
    [unload] = status["unloads"]
    assert unload["model"] == "tiny.en" and unload["reason"] == "replaced"
    assert unload["teardown"]["model"] == "fake/tiny.en" and status["last_teardown"] == unload["teardown"]


async def test_an_unchanged_identity_reloads_nothing(make_asr):
    replica = await make_asr()
    await replica.reconfigure({"models": MODELS, "beam_size": 1})
    assert replica.status()["unloads"] == [] and replica.config.beam_size == 1


async def test_models_no_longer_offered_are_unloaded_as_removed(make_asr):
    replica = await make_asr()
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    await replica.reconfigure({"models": {"tiny.en": "fake/tiny.en"}})
    assert loaded(replica) == ["tiny.en"]
    assert [(u["model"], u["reason"]) for u in replica.status()["unloads"]] == [("base", "removed")]


async def test_check_health_unloads_idle_models_but_not_the_default(make_asr):
    replica = await make_asr(idle_unload_s=0.05)
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    await asyncio.sleep(0.1)
    await replica.check_health()
    assert loaded(replica) == ["tiny.en"]
    assert [(u["model"], u["reason"]) for u in replica.status()["unloads"]] == [("base", "idle")]


async def test_check_health_raises_when_a_teardown_left_memory_over_the_budget(replicas):
    replica = LeakyDeployment(LeakyHolder)
    replicas.append(replica)
    await replica.reconfigure({"model": "first", "rss_residue_budget_mib": 64})
    await replica.check_health()
    await replica.reconfigure({"model": "second", "size_mib": 8, "rss_residue_budget_mib": 64})
    with pytest.raises(RuntimeError, match=r"first left \d+\.\d MiB on cpu after teardown \(budget 64 MiB\)"):
        await replica.check_health()
    status = replica.status()
    assert status["healthy"] is False and "budget 64 MiB" in status["problem"]


async def test_a_clean_teardown_passes_the_health_check(replicas):
    replica = LeakyDeployment(LeakyHolder)
    replicas.append(replica)
    await replica.reconfigure({"model": "first", "leak": False, "rss_residue_budget_mib": 64})
    await replica.reconfigure({"model": "second", "size_mib": 8, "leak": False, "rss_residue_budget_mib": 64})
    await replica.check_health()
    assert replica.status()["healthy"] is True


async def test_check_health_raises_before_any_config():
    replica = LeakyDeployment(LeakyHolder)
    with pytest.raises(RuntimeError, match="no user_config yet"):
        await replica.check_health()


async def test_status_of_a_single_model_deployment(replicas):
    replica = LeakyDeployment(LeakyHolder)
    replicas.append(replica)
    await replica.reconfigure({"model": "first", "size_mib": 1})
    status = replica.status()
    assert status["deployment"] == "LeakyDeployment" and status["model"] == "first"
    assert status["device"] == "cpu" and status["memory_now_bytes"] > 0
    assert status["offered"] == [SINGLE_MODEL] and list(status["loaded"]) == [SINGLE_MODEL]
    assert status["loaded"][SINGLE_MODEL]["holder"] == "LeakyHolder"
    assert status["unloads"] == [] and status["last_teardown"] is None
    assert status["healthy"] is True and status["problem"] is None
    assert status["replica"] is None and status["replica_pid"] > 0, "outside Serve: no replica id"
    assert {"max_loaded_models", "idle_unload_s"} <= set(status)


async def test_the_shutdown_hook_tears_every_model_down(make_asr):
    built: list[FakeAsrHolder] = []

    def factory(spec: AsrConfig) -> FakeAsrHolder:
        built.append(FakeAsrHolder(spec))
        return built[-1]

    replica = AsrDeployment(holder_factory=factory)  # type: ignore[arg-type]
    await replica.reconfigure({"models": MODELS})
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    assert [h.model is not None for h in built] == [True, True]
    del replica
    gc.collect()  # Serve's graceful stop drops the replica the same way: __del__ is the hook
    assert [h.model for h in built] == [None, None]
    assert [h.last_teardown and h.last_teardown.model for h in built] == ["fake/tiny.en", "fake/base"]


async def test_the_shutdown_hook_records_shutdown_and_is_safe_twice(make_asr):
    replica = await make_asr()
    replica.__del__()
    replica.__del__()
    status = replica.status()
    assert status["loaded"] == {} and [(u["model"], u["reason"]) for u in status["unloads"]] == [
        ("tiny.en", "shutdown")]


def test_the_shutdown_hook_of_a_replica_without_config_does_nothing():
    replica = AsrDeployment(holder_factory=FakeAsrHolder)
    replica.__del__()


# --- ASR: which model a request runs on -----------------------------------------------------------


async def test_a_request_runs_on_the_model_it_names_else_the_default(make_asr):
    replica = await make_asr()
    named = await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    default = await transcribe_on(replica, AUDIO, AsrOptions(model=None))
    assert named.segments[0].text == "transcribe by fake/base"
    assert default.segments[0].text == "transcribe by fake/tiny.en"
    assert loaded(replica) == ["base", "tiny.en"]


async def test_an_unknown_model_lists_the_models_offered(make_asr):
    replica = await make_asr()
    with pytest.raises(UnknownModel, match=r"unknown model 'tiny'; this server offers base, small, tiny\.en") as e:
        await transcribe_on(replica, AUDIO, AsrOptions(model="tiny"))
    assert e.value.param == "model" and e.value.status_code == 400 and e.value.code == "model_not_found"


async def test_a_translation_with_an_english_only_default_goes_to_the_translation_model(make_asr):
    replica = await make_asr(translation_model="small")
    result = await transcribe_on(replica, AUDIO, AsrOptions(task="translate"))
    assert result.segments[0].text == "translate by fake/small"


async def test_without_a_translation_model_the_400_names_the_other_models(make_asr):
    replica = await make_asr()
    with pytest.raises(BadRequest, match=r"tiny\.en is English-only .*model=base or model=small") as e:
        await transcribe_on(replica, AUDIO, AsrOptions(task="translate"))
    assert e.value.param == "model" and not isinstance(e.value, UnknownModel)


async def test_a_multilingual_default_translates_itself(make_asr):
    replica = await make_asr(default_model="base")
    result = await transcribe_on(replica, AUDIO, AsrOptions(task="translate"))
    assert result.segments[0].text == "translate by fake/base"


async def test_describe_lists_the_models_and_which_are_loaded(make_asr):
    replica = await make_asr(translation_model="base")
    before = await replica.describe()
    assert before["default_model"] == "tiny.en" and before["translation_model"] == "base"
    assert {m["id"]: (m["loaded"], m["default"], m["source"], m["multilingual"]) for m in before["models"]} == {
        "tiny.en": (True, True, "fake/tiny.en", None), "base": (False, False, "fake/base", None),
        "small": (False, False, "fake/small", None)}, "multilingual: not known before a translation asks"
    await transcribe_on(replica, AUDIO, AsrOptions(task="translate"))
    learnt = {m["id"]: m["multilingual"] for m in (await replica.describe())["models"]}
    assert learnt == {"tiny.en": False, "base": None, "small": None}
    await transcribe_on(replica, AUDIO, AsrOptions(model="small"))
    after = {m["id"]: m["loaded"] for m in (await replica.describe())["models"]}
    assert after == {"tiny.en": False, "base": True, "small": True}, "two at most: tiny.en was least recently used"


async def test_a_call_for_a_model_not_offered_is_503(replicas):
    replica = AlignmentDeployment(holder_factory=FakeAlignmentHolder)
    replicas.append(replica)
    await replica.reconfigure({"models": {"en": "fake/align-en"}})
    assert await replica.languages() == ["en"]
    assert await replica.align(AUDIO, [], "fr") is None, "no model for the language: Whisper's words stay"
    with pytest.raises(ModelUnavailable, match="offers no model 'fr'"):
        await replica.call("fr", "align", AUDIO, [])


async def test_other_models_may_evict_the_default_which_loads_again_on_its_next_request(make_asr):
    replica = await make_asr(max_loaded_models=2)
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    await transcribe_on(replica, AUDIO, AsrOptions(model="small"))  # evicts the least recently used: tiny.en
    assert loaded(replica) == ["base", "small"]
    await replica.check_health()  # an evicted default is no health problem
    result = await transcribe_on(replica, AUDIO, AsrOptions())
    assert result.segments[0].text == "transcribe by fake/tiny.en" and "tiny.en" in loaded(replica)


async def test_a_config_change_does_not_reload_an_evicted_default(make_asr):
    replica = await make_asr(max_loaded_models=2)
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    await transcribe_on(replica, AUDIO, AsrOptions(model="small"))
    await replica.reconfigure({"models": MODELS, "max_loaded_models": 2, "beam_size": 1})
    assert loaded(replica) == ["base", "small"]


async def test_new_weights_behind_an_evicted_default_decide_how_translations_are_routed(make_asr):
    replica = await make_asr(max_loaded_models=2)
    await transcribe_on(replica, AUDIO, AsrOptions(model="base"))
    await transcribe_on(replica, AUDIO, AsrOptions(model="small"))  # tiny.en evicted
    await replica.reconfigure({"models": {**MODELS, "tiny.en": "fake/tiny-multilingual"}, "max_loaded_models": 2})
    result = await transcribe_on(replica, AUDIO, AsrOptions(task="translate"))
    assert result.segments[0].text == "translate by fake/tiny-multilingual"


async def test_an_update_that_fails_to_load_leaves_the_pool_bounds_as_they_were(make_asr):
    replica = await make_asr(max_loaded_models=3)
    with pytest.raises(ModelUnavailable):
        await replica.reconfigure({"models": {**MODELS, "tiny.en": "missing/tiny.en"}, "max_loaded_models": 1})
    assert replica.config.max_loaded_models == 3
    assert replica.status()["max_loaded_models"] == 3


# --- ASR: chunk batches -----------------------------------------------------------------------------


async def test_interactive_chunks_decode_ahead_of_background_chunks_already_waiting(make_asr, monkeypatch, tmp_path):
    batch_log = tmp_path / "batches"
    monkeypatch.setenv(BATCH_LOG_ENV, str(batch_log))
    monkeypatch.setenv(DELAY_ENV, "0.2")
    replica = await make_asr(batch_size=2, batch_wait_s=0)

    def chunks(samples: int, count: int, priority: int) -> list[ChunkTask]:  # told apart by their length
        return [ChunkTask(model="tiny.en", chunk=SpeechChunk(0.0, samples / SAMPLE_RATE_HZ),
                          audio=np.zeros(samples, dtype=np.float32), language="en", priority=priority)] * count

    job = [asyncio.ensure_future(replica.decode_chunk(task)) for task in chunks(100, 4, BACKGROUND)]
    while not batch_log.exists():  # the first batch decodes
        await asyncio.sleep(0.01)
    request = [asyncio.ensure_future(replica.decode_chunk(task)) for task in chunks(200, 2, INTERACTIVE)]
    await asyncio.gather(*job, *request)
    assert [line.split()[1] for line in batch_log.read_text().splitlines()] == ["100,100", "200,200", "100,100"]
