"""Bad input at scale, through the real app under a real Ray Serve with fake holders (tests/serve/fake_app.py).

Three properties, each over hundreds of generated cases, each printing how many ran and what they got:
- the form: every field of POST /v1/audio/transcriptions and /translations with valid, boundary and hostile
  values, repeated, unknown, a file part in a text field, no file (hypothesis);
- the route set: any method on any path;
- the media: the corpus of damaged, lying and hostile uploads of tests/media_files.py.
Every answer is a 200 with a body in the format asked for, or a 4xx in OpenAI's error shape, within a
bound; never a 5xx, never a hang, never a byte of a local file. The service answers /health after each.

The hypothesis runs are derandomized (the same cases on every run) and keep no example database.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serve_app.formats import RESPONSE_FORMATS
from tests.media_files import TONE, corrupted_corpus, encode_audio
from tests.serve.served import fake_app_served, free_port, multipart

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]

CASE_TIMEOUT_S = 60
"""The longest any one case may take to be answered."""
WAV = encode_audio(TONE, "wav", "pcm_s16le", 16_000)
BOUNDARY = "fuzz-b0undary-7f3c"
MODELS = {"whisper-1": "fake/tiny.en", "tiny.en": "fake/tiny.en", "base": "fake/base", None: "fake/tiny.en"}
"""What each model the requests name (None: none named) serves with; the fake models answer
'<task> by <source>'."""
PASSWD_LINE = next((line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith("root:")),
                   "root:x:0:0")


def _fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with fake_app_served(free_port()) as url, httpx.Client(base_url=url, timeout=CASE_TIMEOUT_S) as c:
        yield c


def assert_healthy(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}, response.text


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    """A 4xx whose body is OpenAI's error object; returns that object."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:2000])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in error["message"] and PASSWD_LINE not in error["message"]
    return error


def timed(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
    """The response (the client times out after CASE_TIMEOUT_S) and how long it took, in seconds."""
    started = time.monotonic()
    response = client.request(method, url, **kwargs)
    assert response.headers.get("x-request-id"), response.headers
    return response, time.monotonic() - started


# --- the form ------------------------------------------------------------------------------------------
# Each value comes with what the API must make of it on its own: OK (accepted), BAD (a 4xx) or ANY (either,
# as long as it is not a 5xx). A request whose parts are all OK, alone and together, must be a 200; one with
# any BAD part must be a 4xx. Half the requests draw valid values only, so that the answers' formats get
# checked as often as the refusals.

OK, BAD, ANY = "ok", "bad", "any"
Verdicted = st.SearchStrategy[tuple[str, str]]


@dataclass(frozen=True)
class Pool:
    """The values of one field: valid ones, and the others (BAD or ANY)."""

    valid: Verdicted
    other: Verdicted

    def draw_from(self, clean: bool) -> Verdicted:
        return self.valid if clean else self.valid | self.other


def _tagged(verdict: str, values: Sequence[str]) -> Verdicted:
    return st.sampled_from([(verdict, v) for v in values])


def _pool(ok: Sequence[str] | Verdicted, bad: Sequence[str] = (), any_: Sequence[str] = ()) -> Pool:
    valid = ok if isinstance(ok, st.SearchStrategy) else _tagged(OK, ok)
    return Pool(valid, st.one_of(*(_tagged(verdict, values) for verdict, values in ((BAD, bad), (ANY, any_))
                                   if values)))


HOSTILE = ["", " ", "\x00", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0x10", "null", "None", "[]", "{}",
           "true", "🎙️", "é" * 3, "\r\n", "'; DROP TABLE x; --", "{{7*7}}", "${jndi:ldap://127.0.0.1/a}",
           "../../etc/passwd", "%00", "a" * 10_000, "9" * 400]


def _hostile_except(*accepted: str) -> list[str]:
    return [v for v in HOSTILE if v not in accepted]


FIELDS: dict[str, Pool] = {
    "temperature": Pool(
        st.floats(0, 1).map(lambda x: (OK, repr(x))) | _tagged(OK, ["0", "1", "0.0", "1.0", "1e-3", "-0", ".5"]),
        _tagged(ANY, [" 0.5", "0.5 ", "1_0"]) | _tagged(BAD, ["1.0001", "-0.1", "2", "1e3", *_hostile_except("-0")])
        | st.floats().filter(lambda x: not 0 <= x <= 1).map(lambda x: (BAD, repr(x)))),
    "prompt": Pool(
        st.text(max_size=300).map(lambda s: (OK, s))
        | _tagged(OK, ["a" * 2000, "日本語のプロンプト", "\x00\x01\x7f", "text --" + BOUNDARY, *HOSTILE[:-2]]),
        _tagged(BAD, ["a" * 2001, "b" * 100_000]) | _tagged(ANY, ["--" + BOUNDARY + "--"])),
    "diarize": _pool(["true", "false", "1", "0", "True", "FALSE", "yes", "no", "on", "off"],
                     bad=["maybe", "2", "-1", "", "nan", "truee", "a" * 10_000]),
    "align": _pool(["true", "false", "1", "0"], bad=["maybe", "", "0.5"]),
    "max_line_chars": _pool(["10", "42", "200"], any_=[" 42", "42.0", "4_2"],
                            bad=["9", "201", "0", "-42", "42.5", *_hostile_except()]),
    "max_cue_duration_s": _pool(["0.5", "5", "60", "7.25", "6e1"], any_=[" 5"],
                                bad=["0.49", "60.01", "0", "-5", *_hostile_except()]),
}
RESPONSE_FORMAT = _pool(["vtt", "diarized_json", "verbose_json", "srt", "text", "json"],
                        bad=["JSON", "json ", "xml", "srt\x00", "verbose-json", *_hostile_except()])
SPEAKERS = _pool(st.integers(1, 64).map(lambda n: (OK, str(n))), any_=[" 2", "2.0"],
                 bad=["0", "65", "-1", "1.5", "1e1", "two", *_hostile_except()])
GRANULARITY = _pool(["word", "segment"], bad=["WORD", "char", "", "word,segment", "a" * 10_000])
LANGUAGE = {english_only: _pool(ok, bad=["xx", "klingon", "english", "e", *_hostile_except("")])
            for english_only, ok in ((True, ["en", "EN", " en ", ""]),
                                     (False, ["en", "", "de", "fr", "ja", "zh", "haw", " DE "]))}
"""By whether the model is English-only."""
MODEL = {task: Pool(st.sampled_from(ok).map(lambda m: (OK, m)),
                    _tagged(BAD, ["large-v9", "a" * 10_000, "../base"]) | _tagged(ANY, ["", "TINY.EN", "base ",
                                                                                        "fake/base"]))
         for task, ok in (("transcribe", [None, "whisper-1", "tiny.en", "base"]), ("translate", ["base"]))}
"""By task: only the multilingual model translates."""
FILENAME = _pool(["tone.wav", "x", "../../etc/passwd", "playlist.m3u8", "img%03d.png", "日本語.wav", "a" * 200,
                  "con.wav"], any_=["", "x.wav\r\nX-Injected: 1", 'a".wav'])
UNKNOWN_FIELDS = ["diarise", "foo", "task", "Model", "model[]", "file_name", "timestamp_granularity", "🎙️",
                  "a" * 1000]
TRICKS = ["repeat", "unknown", "file-in-text", "no-file", "file-as-text", "two-files", "empty-file",
          "not-multipart", "no-boundary"]


class FormCase:
    """One generated request: the route, the parts in order, and what the API must make of it. (Not a
    dataclass: hypothesis would print a failing one field by field, uploaded bytes and all.)"""

    def __init__(self, task: str) -> None:
        self.task = task
        self.parts: list[tuple[str, str | None, bytes]] = []
        self.verdicts: list[str] = []
        self.fields: dict[str, str] = {}  # the first value of each field
        self.content_type = f"multipart/form-data; boundary={BOUNDARY}"

    def add(self, name: str, verdict: str, value: str, filename: str | None = None) -> None:
        self.parts.append((name, filename, value.encode()))
        self.verdicts.append(verdict)
        self.fields.setdefault(name, value)

    def __repr__(self) -> str:  # what a failure prints: the uploaded bytes elided
        parts = [(n, f, v if len(v) <= 80 else f"<{len(v)} bytes: {v[:40]!r}...>") for n, f, v in self.parts]
        return f"FormCase({self.task!r}, {self.verdict}, content_type={self.content_type!r}, parts={parts})"

    @property
    def verdict(self) -> str:
        if BAD in self.verdicts:
            return BAD
        return OK if all(v == OK for v in self.verdicts) else ANY


def _combination_verdict(case: FormCase) -> str:
    """What the fields make together: speaker bounds, and translations are not diarized_json."""
    if case.task == "translate" and case.fields.get("response_format") == "diarized_json":
        return BAD
    bounds = {k: int(case.fields[k]) for k in ("num_speakers", "min_speakers", "max_speakers")
              if k in case.fields and case.fields[k].isdigit()}
    low, high = bounds.get("min_speakers", 1), bounds.get("max_speakers", 64)
    return OK if low <= bounds.get("num_speakers", low) <= high else BAD


def _add_trick(draw: st.DrawFn, case: FormCase, trick: str) -> None:
    """Break the form in one of the ways a client can (each a 4xx)."""
    case.verdicts.append(BAD)
    if trick == "repeat":
        name, _, value = draw(st.sampled_from([p for p in case.parts if not p[0].startswith("timestamp")]
                                              or [("model", None, b"whisper-1")]))
        case.add(name, BAD, value.decode())
        if name == "model" and len(case.parts) == 1:
            case.add(name, BAD, value.decode())
    elif trick == "unknown":
        case.add(draw(st.sampled_from(UNKNOWN_FIELDS)), BAD, draw(st.sampled_from(["1", "true", ""])))
    elif trick == "file-in-text":
        case.add(draw(st.sampled_from(["model", "language", "prompt"])), BAD, "whisper-1", filename="field.txt")
    elif trick in ("not-multipart", "no-boundary"):
        case.content_type = "application/x-www-form-urlencoded" if trick == "not-multipart" else "multipart/form-data"


@st.composite
def form_cases(draw: st.DrawFn) -> FormCase:
    clean = draw(st.booleans())
    case = FormCase(task=draw(st.sampled_from(["transcribe", "translate"])))
    model_verdict, model = draw(MODEL[case.task].draw_from(clean))
    if model is not None:
        case.add("model", model_verdict, model)
    language = draw(st.none() | LANGUAGE[MODELS.get(model, "").endswith(".en")].draw_from(clean))
    if language is not None:
        case.add("language", *language)
    response_format = draw(RESPONSE_FORMAT.draw_from(clean) | st.none())
    if response_format is not None:
        case.add("response_format", *response_format)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        case.add(name, *draw(FIELDS[name].draw_from(clean)))
    for name in draw(st.lists(st.sampled_from(["num_speakers", "min_speakers", "max_speakers"]), max_size=2,
                              unique=True)):
        case.add(name, *draw(SPEAKERS.draw_from(clean)))
    key = draw(st.sampled_from(["timestamp_granularities[]", "timestamp_granularities"]))
    for verdict, value in draw(st.lists(GRANULARITY.draw_from(clean), max_size=3)):
        case.add(key, verdict, value)

    trick = None if clean else draw(st.none() | st.sampled_from(TRICKS))
    if trick is not None:
        _add_trick(draw, case, trick)
    if trick == "file-as-text":
        case.parts.append(("file", None, WAV[:200]))
    elif trick != "no-file":
        filename_verdict, filename = draw(FILENAME.draw_from(clean))
        case.parts.insert(draw(st.integers(0, len(case.parts))), ("file", filename,
                                                                  b"" if trick == "empty-file" else WAV))
        case.verdicts.append(filename_verdict)
        if trick == "two-files":
            case.parts.append(("file", "second.wav", WAV))
    case.verdicts.append(_combination_verdict(case))
    return case


SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", re.MULTILINE)
VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", re.MULTILINE)


def assert_answer_in_format(response: httpx.Response, case: FormCase) -> None:
    """A 200's body is in the format asked for and carries what the fake model said."""
    model = case.fields.get("model")
    # Compared without spaces: a diarized text is rebuilt from the words, joined without spaces for a
    # language written without them (the fake model answers in English words whatever the language).
    said = f"{case.task}by{MODELS.get(model, 'fake/')}"
    fmt = case.fields.get("response_format", "json")
    media_type = response.headers["content-type"]
    if fmt in ("json", "verbose_json", "diarized_json"):
        assert media_type.startswith("application/json"), media_type
        body = response.json()
        assert said in body["text"].replace(" ", "") and body["usage"]["type"] == "duration", body
        if fmt == "diarized_json":
            assert body["segments"] and {s["speaker"] for s in body["segments"]} == {"SPEAKER_00"}, body
        if fmt == "verbose_json":
            granularities = {v.decode() for n, _, v in case.parts if n.startswith("timestamp")} or {"segment"}
            assert ("segments" in body, "words" in body) == ("segment" in granularities, "word" in granularities)
            assert body["duration"] > 0 and body["task"] == case.task, body
    elif fmt == "text":
        assert media_type.startswith("text/plain") and said in response.text.replace(" ", ""), response.text
    elif fmt == "srt":
        assert media_type.startswith("text/plain") and SRT_CUE.search(response.text), response.text
    else:
        assert media_type.startswith("text/vtt") and response.text.startswith("WEBVTT"), response.text
        assert VTT_CUE.search(response.text), response.text


def _valid_case(response_format: str) -> FormCase:
    """A valid request for `response_format`, run before the generated ones so that every format is met."""
    case = FormCase(task="transcribe")
    case.add("model", OK, "whisper-1")
    case.add("response_format", OK, response_format)
    case.add("timestamp_granularities[]", OK, "word")
    case.parts.append(("file", "tone.wav", WAV))
    case.verdicts.append(OK)
    return case


def test_every_form_is_answered_in_its_format_or_refused_in_openai_shape(client):
    seen: Counter[tuple[str, int]] = Counter()

    def check(case: FormCase) -> None:
        route = "/v1/audio/transcriptions" if case.task == "transcribe" else "/v1/audio/translations"
        response, _ = timed(client, "POST", route, content=multipart(*case.parts, boundary=BOUNDARY),
                            headers={"content-type": case.content_type})
        seen[case.verdict, response.status_code] += 1
        if response.status_code == 200:
            assert case.verdict != BAD, f"a request with a bad part was accepted: {case}"
            assert_answer_in_format(response, case)
        else:
            assert case.verdict != OK, f"a valid request was refused: {response.text[:500]} {case}"
            assert_openai_error(response)

    run = given(case=form_cases())(check)
    for response_format in RESPONSE_FORMATS:
        run = example(case=_valid_case(response_format))(run)
    _fuzz_settings(max_examples=700)(run)()
    print(f"\nform cases: {sum(seen.values())}; (verdict, status): {dict(sorted(seen.items()))}")
    assert_healthy(client)
    assert seen[OK, 200] and seen[BAD, 400] and seen[BAD, 422], seen


# --- the route set ------------------------------------------------------------------------------------

ROUTES = ["/health", "/v1/models", "/v1/models/status", "/v1/audio/transcriptions", "/v1/audio/translations"]
SEGMENT = st.text(st.sampled_from("abcxyz019._~%!$&'()*+,;=:@-"), min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-"))  # /-/... is the Serve proxy's own
PATHS = st.one_of(
    st.sampled_from(ROUTES + [r + "/" for r in ROUTES] + ["/", "//v1/models", "/v1/models/../health", "/v1",
                                                          "/v1/audio", "/V1/MODELS", "/health%00", "/v1/models/" +
                                                          "a" * 4000]),
    st.tuples(st.sampled_from([*ROUTES, "", "/v1/models"]), st.lists(SEGMENT, min_size=1, max_size=4)).map(
        lambda t: t[0] + "/" + "/".join(t[1])),
    st.sampled_from(["whisper-1", "tiny.en", "base", "large-v9", "fake/base", "..", "status/x", "日本語", "%2e%2e",
                     "%2Fetc%2Fpasswd"]).map(lambda m: "/v1/models/" + m),
)
GET_ROUTES = {"/v1/models", "/v1/models/status", "/health"}


def test_any_method_on_any_path_is_answered_in_openai_shape_or_served(client):
    seen: Counter[int] = Counter()

    @_fuzz_settings(max_examples=800)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]), path=PATHS,
           body=st.sampled_from([b"", b"{}", b"model=whisper-1", WAV[:1000]]))
    def check(method: str, path: str, body: bytes) -> None:
        response, _ = timed(client, method, path, content=body or None)
        status = response.status_code
        seen[status] += 1
        assert status < 500, (method, path, status, response.text[:500])
        if method == "HEAD" or status in (307, 308):  # no body; a redirect to the path without its slash
            return
        if status >= 400:
            assert_openai_error(response)
            return
        assert status == 200 and method == "GET", (method, path, status)
        body_json = response.json()
        if path in GET_ROUTES:
            assert isinstance(body_json, dict) and body_json, body_json
        else:  # a model card
            assert body_json["object"] == "model" and path.endswith(body_json["id"]), body_json

    check()
    print(f"\nroute cases: {sum(seen.values())}; statuses: {dict(sorted(seen.items()))}")
    assert_healthy(client)


# --- the media ---------------------------------------------------------------------------------------


def test_every_corrupted_upload_is_transcribed_or_refused_in_openai_shape(client):
    corpus = corrupted_corpus()
    by_batch: dict[str, Counter[int]] = {}
    slowest = (0.0, "")
    for i, case in enumerate(corpus):
        response, took_s = timed(client, "POST", "/v1/audio/transcriptions", data={"model": "whisper-1"},
                                 files={"file": (case.filename, case.data)})
        slowest = max(slowest, (took_s, case.name))
        by_batch.setdefault(case.batch, Counter())[response.status_code] += 1
        assert PASSWD_LINE not in response.text and PASSWD_LINE not in str(response.headers), case.name
        if case.valid:
            assert response.status_code == 200, (case.name, response.text)
        if response.status_code == 200:
            # The fake ASR says its phrase once per 30 s speech chunk.
            text, phrase = response.json()["text"], "transcribe by fake/tiny.en"
            assert text.count(phrase) >= 1 and text == " ".join([phrase] * text.count(phrase)), (case.name, text)
        else:
            error = assert_openai_error(response)
            assert response.status_code in (400, 413, 415) and error["param"] == "file", (case.name, error)
            assert "the decoder failed on it" not in error["message"], f"the decoder process died on {case.name}"
        if i + 1 == len(corpus) or case.batch != corpus[i + 1].batch:
            assert_healthy(client)
    statuses = sum(by_batch.values(), Counter())
    print(f"\ncorrupted media: {len(corpus)} cases; statuses: {dict(sorted(statuses.items()))}; by batch: "
          + "; ".join(f"{batch} {dict(sorted(c.items()))}" for batch, c in by_batch.items())
          + f"; slowest {slowest[0]:.2f} s ({slowest[1]})")
