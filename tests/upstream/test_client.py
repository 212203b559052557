"""The FastGPT client, over real HTTP against the double (fastgpt-api.md §8 quirks)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from fastgpt_portal.upstream.client import (
    FastGPTClient,
    api_root,
    client_for,
    keep_assigned_pools,
    new_http,
    shared_http,
    usage_from,
)
from fastgpt_portal.upstream.double import DOUBLE_APP_ID, FastGPTDouble
from fastgpt_portal.upstream.events import (
    AnswerDelta,
    Finished,
    FlowResponses,
    Interactive,
    NodeResponse,
    NodeStatus,
    ToolEvent,
    UpstreamError,
    VariablesUpdated,
    WorkflowDuration,
)
from fastgpt_portal.upstream.models import App
from tests.upstream.conftest import APP_KEY, GLOBAL_KEY, KEYS, OTHER_APP_ID, make_http

CHUNK = (
    '{{"id":"","object":"","created":0,"model":"",'
    '"choices":[{{"delta":{delta},"index":0,"finish_reason":{finish}}}]}}'
)


def chunk(content: str | None = "", *, finish: str | None = None, **extra: str) -> str:
    delta = {"role": "assistant", **extra}
    if content is not None or finish:
        delta["content"] = content
    return CHUNK.format(delta=json.dumps(delta, ensure_ascii=False), finish=json.dumps(finish))


def frame(data: str, event: str | None = "answer") -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


TAIL = frame(chunk(None, finish="stop")) + frame("[DONE]")


READING = {"how": "stream_chat"}


@pytest.fixture(autouse=True, params=["stream_chat", "stream_chat_to"])
def reading(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of an answer, read as an iterator and pushed to a sink: the worker's way."""
    READING["how"] = request.param
    yield request.param
    READING["how"] = "stream_chat"


def ask(api: FastGPTClient, text: str = "hello", *, chat_id: str = "c1", **kwargs) -> list:
    question = {"chat_id": chat_id, "custom_uid": "u-alice", "data_id": "d-1", "text": text}
    if READING["how"] == "stream_chat":
        return list(api.stream_chat(**question, **kwargs))
    events: list = []
    assert (
        api.stream_chat_to(lambda event: events.append(event) or False, **question, **kwargs)
        is False
    )
    return events


def ask_into(api: FastGPTClient, received: list) -> list:
    """Like ask(), but each event lands in `received` as it comes, for a test of a failure."""
    if READING["how"] == "stream_chat":
        for event in api.stream_chat(chat_id="c1", custom_uid="u", data_id="d", text="hi"):
            received.append(event)
    else:
        api.stream_chat_to(lambda e: received.append(e) or False, chat_id="c1", custom_uid="u",
                           data_id="d", text="hi")  # fmt: skip
    return []


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, AnswerDelta))


def failure(api: FastGPTClient, **kwargs) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        ask(api, **kwargs)
    return caught.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the request


def test_it_posts_only_the_new_message_with_our_ids(fg, api):
    ask(api, "What is 6*7?", chat_id="conv-42", variables={"lang": "en"})

    request = fg.received[-1]
    assert request["path"] == "/api/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {APP_KEY}"
    assert request["json"] == {
        "chatId": "conv-42",
        "customUid": "u-alice",
        "responseChatItemId": "d-1",
        "stream": True,
        "detail": True,
        "messages": [{"role": "user", "content": "What is 6*7?"}],
        "variables": {"lang": "en"},
    }


def test_it_sends_the_app_id_only_with_a_global_key(fg, http):
    api = FastGPTClient(fg.url, GLOBAL_KEY, app_id=DOUBLE_APP_ID, http=http)

    events = ask(api)
    with_global_key = fg.received[-1]["json"]
    ask(FastGPTClient(fg.url, APP_KEY, http=http))

    assert with_global_key["appId"] == DOUBLE_APP_ID
    assert isinstance(events[-1], Finished)
    assert "appId" not in fg.received[-1]["json"]


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/", "/api/v1/chat/completions"])
def test_it_accepts_the_base_url_with_or_without_api(fg, http, suffix):
    api = FastGPTClient(fg.url + suffix, APP_KEY, http=http)

    ask(api)

    assert api.root == fg.url
    assert fg.received[-1]["path"] == "/api/v1/chat/completions"


def test_api_root_keeps_a_sub_path_deployment():
    assert api_root("https://example.org/fastgpt/api/") == "https://example.org/fastgpt"


# --------------------------------------------------------------------------- the stream


def test_it_streams_the_answer_and_the_node_events_in_order(api):
    events = ask(api, "hello")

    kinds = [type(e) for e in events]
    assert kinds[0] is NodeStatus
    assert ToolEvent in kinds
    assert kinds.index(WorkflowDuration) < kinds.index(FlowResponses) < kinds.index(Finished)
    assert events[-1] == Finished("stop")
    assert text_of(events).startswith("You asked: hello")
    assert "**FastGPT double**" in text_of(events)
    assert [e.kind for e in events if isinstance(e, ToolEvent)] == [
        "toolCall",
        "toolParams",
        "toolResponse",
    ]


def test_it_keeps_reading_after_done_for_flow_responses(api):
    events = ask(api)

    flow = [e for e in events if isinstance(e, FlowResponses)]
    assert len(flow) == 1
    assert usage_from(flow[0].items).points == pytest.approx(0.58)


def test_it_reads_flow_responses_sent_before_done(http):
    with FastGPTDouble(flow_responses_before_done=True) as double:
        events = ask(FastGPTClient(double.url, APP_KEY, http=http))

    assert any(isinstance(e, FlowResponses) for e in events)
    assert isinstance(events[-1], Finished)


def test_it_compares_the_whole_data_field_with_done(fg, api):
    body = (
        frame(chunk("The marker "))
        + frame(chunk("[DONE]"))
        + frame(chunk(" is text here."))
        + TAIL
        + frame("[]", "flowResponses")
    )
    fg.inject("raw", bytes=body)

    events = ask(api)

    assert text_of(events) == "The marker [DONE] is text here."
    assert isinstance(events[-1], Finished)


def test_it_keeps_reasoning_apart_from_the_answer(api):
    events = ask(api, "why? [[reasoning]]")

    deltas = [e for e in events if isinstance(e, AnswerDelta)]
    reasoning = "".join(d.reasoning for d in deltas)
    assert reasoning == "Let me think about this question step by step."
    assert all(not (d.text and d.reasoning) for d in deltas)
    assert "think" not in text_of(events)


def test_it_skips_heartbeats_and_the_stop_chunk_but_keeps_the_finish_reason(fg, api):
    body = (
        frame(chunk(""))
        + frame(chunk("Hi"))
        + frame(chunk(""))
        + frame(chunk(None, finish="length"))
        + frame("[DONE]")
    )
    fg.inject("raw", bytes=body)

    events = ask(api)

    assert [e for e in events if isinstance(e, AnswerDelta)] == [AnswerDelta(text="Hi")]
    assert events[-1] == Finished("length")


def test_a_lone_utf16_half_becomes_a_replacement_character_a_pair_in_one_chunk_stays_whole(fg, api):
    # Node writes "\ud83d" for a string cut inside an emoji; UTF-8 cannot carry it, so Redis
    # and PostgreSQL refused the answer. json.dumps would write the half raw: spliced in here.
    def escaped(text: str) -> str:
        return frame(chunk("@").replace('"@"', f'"{text}"'))

    body = (
        escaped("cut \\ud83d")
        + escaped("\\ude00 here, \\ud83d\\ude00 whole")
        + frame('{"status":"running","name":"AI \\udc00"}', "flowNodeStatus")
        + TAIL
    )
    fg.inject("raw", bytes=body)

    events = ask(api)

    assert text_of(events) == "cut \ufffd\ufffd here, \U0001f600 whole"
    assert NodeStatus(status="running", name="AI \ufffd") in events
    assert isinstance(events[-1], Finished)


def test_it_keeps_the_leading_newline_of_a_fast_answer(api):
    events = ask(api, "[[fast]]")

    fast = [e for e in events if isinstance(e, AnswerDelta) and e.fast]
    assert fast == [AnswerDelta(text="\nThis is a specified reply from the double.", fast=True)]


def test_it_reads_a_stream_without_detail_frames(fg, api):
    body = "".join(frame(chunk(t), None) for t in ["One", " two"])
    fg.inject("raw", bytes=body + frame(chunk(None, finish="stop"), None) + "data: [DONE]\n\n")

    events = ask(api)

    assert text_of(events) == "One two"
    assert events[-1] == Finished("stop")


def test_it_passes_on_variables_interactive_and_v2_node_responses(fg, api):
    node = {"moduleType": "chatNode", "totalPoints": 0.3}
    body = (
        frame('{"lang":"fr"}', "updateVariables")
        + frame(json.dumps(node), "flowNodeResponse")
        + frame('{"interactive":{"type":"userSelect","params":{}}}', "interactive")
        + TAIL
    )
    fg.inject("raw", bytes=body)

    events = ask(api)

    assert VariablesUpdated({"lang": "fr"}) in events
    assert NodeResponse(node) in events
    assert Interactive({"type": "userSelect", "params": {}}) in events


def test_it_ignores_unknown_events(fg, api):
    fg.inject("raw", bytes=frame("not even json", "somethingNew") + frame(chunk("ok")) + TAIL)

    assert text_of(ask(api)) == "ok"


def test_it_joins_multi_line_data_and_reads_crlf_line_endings(fg, api):
    # One JSON object over two data: lines; the SSE spec joins them with a newline.
    body = 'event: answer\r\ndata: {"choices":[{"delta":\r\ndata: {"content":"Hello"}}]}\r\n\r\n'
    fg.inject("raw", bytes=body + TAIL.replace("\n", "\r\n"))

    events = ask(api)

    assert text_of(events) == "Hello"
    assert isinstance(events[-1], Finished)


def test_it_does_not_split_lines_at_unicode_line_separators(fg, api):
    # Node's JSON.stringify leaves U+2028 raw; str.splitlines would cut the JSON in two.
    text = "line one\u2028line two\x85end"
    raw = frame(json.dumps({"choices": [{"delta": {"content": text}}]}, ensure_ascii=False))
    fg.inject("raw", bytes=raw + TAIL)

    assert text_of(ask(api)) == text


def test_it_reassembles_frames_split_anywhere_across_reads(fg, api):
    body = frame(chunk("né "), "fastAnswer") + frame(chunk("ok")) + TAIL
    body = body.replace("\n", "\r\n").encode()
    cr = body.index(b"\r\n")  # right after "event: fastAnswer"
    accent = body.index("é".encode()) + 1  # inside the two bytes of é
    pieces = [body[: cr + 1], body[cr + 1 : accent], body[accent:]]
    fg.inject("raw", bytes=pieces, pause=0.02)

    deltas = [e for e in ask(api) if isinstance(e, AnswerDelta)]

    assert deltas == [AnswerDelta(text="né ", fast=True), AnswerDelta(text="ok")]


def test_it_streams_a_ten_megabyte_answer(fg, api):
    fg.inject("big_answer", size=10_000_000)

    events = ask(api)

    assert len(text_of(events)) == 10_000_000
    assert isinstance(events[-1], Finished)


# --------------------------------------------------------------------------- stream failures


def test_it_reports_a_connection_lost_mid_answer_after_the_partial_text(fg, api):
    fg.inject("drop_mid_stream", after_tokens=3)
    received = []

    with pytest.raises(UpstreamError) as caught:
        received.extend(ask_into(api, received))

    assert text_of(received) == "You asked: hi"
    assert caught.value.message == "The connection to FastGPT was lost during the answer."
    assert caught.value.permanent and caught.value.code is None


def test_it_reports_a_stream_that_ends_without_done_as_lost(fg, api):
    fg.inject("raw", bytes=frame(chunk("partial")))

    error = failure(api)

    assert error.message == "The connection to FastGPT was lost during the answer."
    assert error.permanent


def test_it_finishes_when_the_connection_drops_after_done(fg, api):
    fg.inject("raw", bytes=frame(chunk("All of it")) + TAIL, abort=True)

    events = ask(api)

    assert text_of(events) == "All of it"
    assert isinstance(events[-1], Finished)


def test_it_rejects_malformed_event_data_readably(fg, api):
    fg.inject("malformed_sse")

    error = failure(api)

    assert error.permanent
    assert "malformed 'answer' event" in error.message


def test_it_reports_node_errors_that_come_without_an_error_event(fg, api):
    fg.inject("node_error")

    events = ask(api)

    assert text_of(events) == ""
    assert isinstance(events[-1], Finished)
    flow = next(e for e in events if isinstance(e, FlowResponses))
    assert usage_from(flow.items).node_errors == [
        "LLM request failed: the model provider answered 503 Service Unavailable"
    ]


def test_it_yields_the_select_and_continues_it_in_the_same_chat(fg, api):
    first = ask(api, "[[select]]", chat_id="c-sel")
    interactive = next(e for e in first if isinstance(e, Interactive)).interactive
    choice = interactive["params"]["userSelectOptions"][1]["value"]

    second = ask(api, choice, chat_id="c-sel")

    assert interactive["type"] == "userSelect"
    assert text_of(second) == f"You chose **{choice}**. Thank you."
    assert len(fg.chats["c-sel"]["items"]) == 2


def test_closing_the_stream_closes_the_connection_so_v1_stops(http):
    with FastGPTDouble(token_rate=100, tokens=200) as double:
        api = FastGPTClient(double.url, APP_KEY, http=http)
        stream = api.stream_chat(chat_id="c-stop", custom_uid="u", data_id="d", text="hi")
        for event in stream:
            if isinstance(event, AnswerDelta):
                break
        stream.close()
        deadline = time.monotonic() + 3
        while "c-stop" not in double.chats and time.monotonic() < deadline:
            time.sleep(0.02)

        saved = double.chats["c-stop"]["items"][-1]["value"][-1]["text"]["content"]
    assert 0 < len(saved.split()) < 50


def test_a_sink_that_stops_closes_the_connection_so_v1_stops(http):
    received = []

    def sink(event) -> bool:
        received.append(event)
        return isinstance(event, AnswerDelta)

    with FastGPTDouble(token_rate=100, tokens=200) as double:
        api = FastGPTClient(double.url, APP_KEY, http=http)
        assert api.stream_chat_to(sink, chat_id="c-stop", custom_uid="u", data_id="d", text="hi")
        deadline = time.monotonic() + 3
        while "c-stop" not in double.chats and time.monotonic() < deadline:
            time.sleep(0.02)

        saved = double.chats["c-stop"]["items"][-1]["value"][-1]["text"]["content"]
    assert isinstance(received[-1], AnswerDelta)
    assert 0 < len(saved.split()) < 50


def test_what_a_sink_raises_reaches_the_caller_and_closes_the_connection(fg, api):
    def sink(event) -> bool:
        if isinstance(event, AnswerDelta):
            raise ValueError("the sink failed")
        return False

    with pytest.raises(ValueError, match="the sink failed"):
        api.stream_chat_to(sink, chat_id="c1", custom_uid="u", data_id="d", text="hello")

    assert ask(api, chat_id="c2")[-1] == Finished("stop")  # the pool is still good


def test_the_portals_transport_hands_events_to_the_sink_on_its_loop_thread(fg):
    import threading

    threads = set()

    def sink(event) -> bool:
        if isinstance(event, AnswerDelta):  # Finished comes after the end, in the caller
            threads.add(threading.current_thread().name)
        return False

    api = FastGPTClient(fg.url, APP_KEY, http=shared_http())
    assert (
        api.stream_chat_to(sink, chat_id="c1", custom_uid="u", data_id="d", text="hello") is False
    )

    assert threads == {"fastgpt-http"}  # no thread woken per piece of the answer


def test_a_pushed_body_closed_from_another_thread_ends_the_push_with_an_error():
    import threading

    from fastgpt_portal.upstream.transport import PUSH

    question = {"chatId": "c-close", "stream": True, "detail": True,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    with FastGPTDouble(token_rate=50, tokens=200) as double, new_http() as http:
        with http.stream(
            "POST", f"{double.url}/api/v1/chat/completions", json=question,
            headers={"Authorization": f"Bearer {APP_KEY}"},
        ) as response:  # fmt: skip
            pieces = []

            def feed(chunk: bytes) -> bool:
                pieces.append(chunk)
                if len(pieces) == 1:
                    threading.Thread(target=response.close).start()
                return False

            with pytest.raises(httpx.ReadError):
                response.extensions[PUSH](feed)  # returns instead of waiting for the end
    assert 0 < len(pieces) < 50


# --------------------------------------------------------------------------- errors


def test_an_error_frame_before_any_sse_header_raises(fg, api):
    fg.inject("key_rejected")

    error = failure(api)

    assert error.code == 514 and error.status_text == "unAuthApiKey"
    assert error.permanent and error.admin_action
    assert error.message == (
        "FastGPT rejected the app key (514 unAuthApiKey): an administrator must replace it."
    )


def test_an_unknown_key_is_an_admin_problem(fg, http):
    error = failure(FastGPTClient(fg.url, "fastgpt-unknownkey0", http=http))

    assert error.code == 514 and error.admin_action and error.permanent


def test_a_malformed_key_is_an_admin_problem(fg, http):
    error = failure(FastGPTClient(fg.url, "fastgpt-a-b-c", http=http))

    assert error.code == 403 and error.admin_action
    assert "403 unAuthorization" in error.message


def test_an_error_frame_without_detail_or_code_raises_readably(fg, api):
    fg.inject("raw", bytes='event: error\ndata: {"message":"Invalid file url"}\n\n', headers={})

    error = failure(api)

    assert error.message == "FastGPT refused a file address that is not on its allowed list."
    assert error.code == 500 and error.permanent


def test_a_global_key_without_app_id_needs_an_admin(fg, http):
    error = failure(FastGPTClient(fg.url, GLOBAL_KEY, http=http))

    assert error.admin_action and error.permanent
    assert "global (team) key" in error.message


def test_an_unknown_app_id_needs_an_admin(fg, http):
    error = failure(FastGPTClient(fg.url, GLOBAL_KEY, app_id="nope", http=http))

    assert error.admin_action
    assert "app is empty" in error.message


def test_a_qpm_rejection_is_retryable_after_the_given_seconds(fg, api):
    fg.inject("rate_429", limit=30, seconds=7)

    error = failure(api)

    assert error.code == 429 and not error.permanent and error.retry_after == 7
    assert "Please try again in 7 seconds." in error.message


def test_running_out_of_points_needs_an_admin(fg, api):
    fg.inject("points")

    error = failure(api)

    assert error.code == 500004 and error.admin_action and error.permanent
    assert error.message == (
        "The FastGPT team has run out of AI points: an administrator must top it up."
    )


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_error_is_retryable(fg, api, status):
    fg.inject(f"proxy_{status}")

    error = failure(api)

    assert error.code == status and not error.permanent


def test_a_refused_connection_is_retryable(http):
    api = FastGPTClient(f"http://127.0.0.1:{closed_port()}", APP_KEY, http=http)

    error = failure(api)

    assert not error.permanent and error.code is None
    assert "could not be reached" in error.message


def test_a_read_timeout_after_sending_is_permanent(fg, http):
    fg.inject("hang", seconds=3)
    api = FastGPTClient(fg.url, APP_KEY, timeout=0.3, http=http)

    error = failure(api)

    assert error.permanent
    assert error.message == "FastGPT did not start answering within 0.3 seconds."


def test_an_answer_that_goes_quiet_for_the_read_timeout_fails_with_what_came(fg, http):
    # Quiet after the second piece: aiohttp's own timer covers only the first gap.
    pieces = [frame(chunk("Hel")), frame(chunk("lo")), frame(chunk(" world")) + TAIL]
    fg.inject("raw", bytes=pieces, pause=[0.1, 1.5])
    api = FastGPTClient(fg.url, APP_KEY, timeout=0.3, http=http)
    received: list = []

    with pytest.raises(UpstreamError) as caught:
        ask_into(api, received)

    assert caught.value.permanent
    assert caught.value.message == "FastGPT stopped sending the answer (nothing for 0.3 seconds)."
    assert text_of(received) == "Hello"


def test_an_answer_that_keeps_coming_outlasts_the_read_timeout(fg, http):
    # The timeout is a pause between reads, not a limit on the whole answer.
    fg.inject("raw", bytes=[frame(chunk(w)) for w in "abcdef"] + [TAIL], pause=0.1)
    api = FastGPTClient(fg.url, APP_KEY, timeout=0.3, http=http)

    assert text_of(ask(api)) == "abcdef"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"code": 504000, "status_text": "unAuthChat", "message": "common:code_error.x"},
            "FastGPT refused access to this conversation (504000 unAuthChat)",
        ),
        (
            {"code": 500001, "status_text": "unAuthTeam", "message": "common:code_error.team.un"},
            "FastGPT reported an error (500001 unAuthTeam: common:code_error.team.un).",
        ),
        (
            {"code": 400, "status_text": "error", "message": "Data validation error"},
            "FastGPT rejected the request as invalid (Data validation error).",
        ),
    ],
)
def test_it_turns_i18n_error_keys_into_sentences(fg, api, params, expected):
    fg.inject("error", **params)

    error = failure(api)

    assert error.message.startswith(expected)
    assert error.permanent and not error.admin_action


def test_the_key_never_appears_in_an_error_or_a_repr(fg, api):
    fg.inject("error", code=500, status_text="error", message=f"bad key {APP_KEY}", named=False)

    error = failure(api)

    assert APP_KEY not in error.message and APP_KEY not in repr(error)
    assert APP_KEY not in repr(api)


def test_a_web_page_instead_of_the_api_points_at_the_base_url(fg, api):
    fg.inject("raw", bytes="<!DOCTYPE html><p>Login</p>", headers={"content-type": "text/html"})

    error = failure(api)

    assert error.admin_action and "web page" in error.message


def test_a_missing_api_points_at_the_base_url(fg, http):
    error = failure(FastGPTClient(fg.url + "/somewhere-else", APP_KEY, http=http))

    assert error.code == 404 and error.admin_action


# --------------------------------------------------------------------------- client_for


def test_client_for_uses_the_app_and_one_shared_pool(fg):
    app = App(base_url=fg.url + "/api", api_key=APP_KEY, fastgpt_app_id="")
    other = App(base_url=fg.url, api_key=GLOBAL_KEY, fastgpt_app_id=DOUBLE_APP_ID)

    first, second = client_for(app), client_for(other)

    assert first._http is second._http is shared_http()
    assert second.app_id == DOUBLE_APP_ID
    assert isinstance(ask(first)[-1], Finished)
    assert isinstance(ask(second)[-1], Finished)


# --------------------------------------------------------------------------- check


def check(fg, http, key: str, app_id: str = ""):
    return FastGPTClient(fg.url, key, app_id=app_id, http=http).check()


def test_check_says_an_app_key_works(fg, http):
    result = check(fg, http, APP_KEY)

    assert (result.ok, result.kind) == (True, "app")
    assert result.message == "The key works: it is an app key."


def test_check_runs_nothing_and_saves_nothing(fg, http):
    check(fg, http, APP_KEY)

    assert fg.chats == {}
    assert fg.received[-1]["json"]["messages"] == []
    assert fg.received[-1]["json"]["chatId"] == "NO_RECORD_HISTORIES"


def test_check_says_a_global_key_needs_an_app_id(fg, http):
    result = check(fg, http, GLOBAL_KEY)

    assert (result.ok, result.kind) == (False, "global")
    assert "set the FastGPT app ID" in result.message


def test_check_says_a_global_key_works_with_its_app_id(fg, http):
    result = check(fg, http, GLOBAL_KEY, DOUBLE_APP_ID)

    assert (result.ok, result.kind, result.app_id) == (True, "global", DOUBLE_APP_ID)


def test_check_says_an_app_id_is_not_needed_with_an_app_key(fg, http):
    result = check(fg, http, APP_KEY, OTHER_APP_ID)

    assert (result.ok, result.kind) == (True, "app")
    assert "not needed" in result.message


def test_check_says_the_app_id_is_wrong(fg, http):
    result = check(fg, http, GLOBAL_KEY, "65f0d0b1e0000000000000ff")

    assert (result.ok, result.kind) == (False, "global")
    assert "cannot find the app 65f0d0b1e0000000000000ff" in result.message


def test_check_says_fastgpt_does_not_know_the_key(fg, http):
    result = check(fg, http, "fastgpt-unknownkey0")

    assert not result.ok
    assert result.message.startswith("FastGPT does not know this key (514 unAuthApiKey)")


def test_check_says_a_malformed_key_cannot_be_read(fg, http):
    result = check(fg, http, "fastgpt-with-two-dashes-x")

    assert not result.ok
    assert result.message.startswith("FastGPT cannot read this key (403 unAuthorization)")


def test_check_says_the_team_is_out_of_points(fg, http):
    fg.inject("points")

    result = check(fg, http, APP_KEY)

    assert not result.ok and "run out of AI points" in result.message


@pytest.mark.parametrize("fault", ["proxy_502", None])
def test_check_says_fastgpt_cannot_be_reached(fg, http, fault):
    if fault:
        fg.inject(fault)
        base = fg.url
    else:
        base = f"http://127.0.0.1:{closed_port()}"

    result = FastGPTClient(base, APP_KEY, http=http).check()

    assert (result.ok, result.kind) == (False, "unknown")
    assert result.message.startswith("The check failed: FastGPT")


# --------------------------------------------------------------------------- usage


def test_usage_counts_only_top_level_points_and_tokens():
    items = [
        {"totalPoints": 0.02, "inputTokens": 12, "embeddingTokens": 12},
        {
            "totalPoints": 0.15,
            "inputTokens": 200,
            "outputTokens": 20,
            "toolDetail": [{"totalPoints": 0.05, "inputTokens": 999, "outputTokens": 999}],
            "pluginDetail": [{"totalPoints": 1.0}],
        },
        {"totalPoints": 0.41, "inputTokens": 950, "outputTokens": 120},
    ]

    usage = usage_from(items)

    assert usage.points == pytest.approx(0.58)
    assert (usage.input_tokens, usage.output_tokens) == (1162, 140)


def test_usage_falls_back_to_the_deprecated_tokens_field():
    usage = usage_from([{"tokens": 300}, {"tokens": 5, "inputTokens": 7}])

    assert (usage.input_tokens, usage.output_tokens) == (307, 0)


def test_usage_lists_node_errors():
    usage = usage_from([{"errorText": "LLM down"}, {"error": {"message": "HTTP 500"}}, {}])

    assert usage.node_errors == ["LLM down", "HTTP 500"]
    assert usage_from([]).points == 0


def test_usage_from_the_double_matches_its_node_list(fg, api):
    flow = next(e for e in ask(api) if isinstance(e, FlowResponses)).items

    usage = usage_from(flow)

    assert usage.points == pytest.approx(sum(n["totalPoints"] for n in flow))
    assert usage.output_tokens == flow[-1]["outputTokens"] + 20


def test_keys_of_the_fixture_are_not_mistaken_for_real_ones():
    # A repo hook flags fastgpt-<40+ alphanumerics> as a leaked key.
    assert all(len(k.split("-")[1]) < 40 for k in KEYS)


def test_a_shared_client_survives_many_threads(fg):
    from concurrent.futures import ThreadPoolExecutor

    api = FastGPTClient(fg.url, APP_KEY, http=shared_http())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: ask(api, chat_id=f"t{i}")[-1], range(48)))

    assert results == [Finished("stop")] * 48
    assert isinstance(shared_http(), httpx.Client)


def test_a_connection_handed_to_a_request_is_not_closed_before_the_request_uses_it(fg):
    # encode/httpcore#1110, step by step: the pool hands an idle connection to a waiting request;
    # before that request's thread runs, the connection's keep-alive runs out and another
    # thread's pass over the pool closes it as expired, under the request about to be sent.
    import httpcore
    from httpcore._sync.connection_pool import PoolRequest

    # httpx's transport serves FastGPT only through a proxy (HTTPS_PROXY) now.
    http = keep_assigned_pools(httpx.Client(limits=httpx.Limits(keepalive_expiry=0.5)))
    pool = http._transport._pool
    try:
        answer = FastGPTClient(fg.url, APP_KEY, http=http)
        assert ask(answer)[-1] == Finished("stop")  # leaves one idle, kept-alive connection
        [connection] = pool.connections
        waiting = PoolRequest(httpcore.Request("POST", f"{fg.url}/api/v1/chat/completions"))
        with pool._optional_thread_lock:
            pool._requests.append(waiting)
            assert pool._assign_requests_to_connections() == []
        assert waiting.connection is connection
        time.sleep(0.6)  # past its keep-alive, still idle: its thread has not run yet
        with pool._optional_thread_lock:
            closing = pool._assign_requests_to_connections()  # another request's pass
            pool._requests.remove(waiting)
        assert closing == [] and not connection.is_closed()
        assert connection in pool.connections
        # Once nothing waits for it, an expired connection is closed as before.
        with pool._optional_thread_lock:
            assert pool._assign_requests_to_connections() == [connection]
    finally:
        http.close()


# --------------------------------------------------------------------------- kept-alive sockets


class IdleClosingServer:
    """A raw HTTP server that answers the first request of each connection with a short SSE
    answer, keeps the connection open, and then closes it unanswered when the next request
    arrives on it: what Node does when its keep-alive timer fires as the client reuses the
    socket. With `drop_first`, it also closes a new connection's first request unanswered."""

    def __init__(self, *, drop_first: bool = False) -> None:
        import threading

        self.drop_first = drop_first
        self.answered = 0
        self.dropped = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                return False
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1] for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )  # fmt: skip
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            served = 0
            while self._read_request(conn):
                if served or self.drop_first:
                    self.dropped += 1
                    return  # closed with the request unanswered
                sse = (frame(chunk("Hi")) + TAIL).encode()
                # Counted before the client can have the answer, so a test may assert at once.
                served += 1
                self.answered += 1
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    + f"Content-Length: {len(sse)}\r\n\r\n".encode()
                    + sse
                )

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("transport", ["loop", "httpx"])
def test_a_kept_alive_socket_closed_as_it_is_reused_is_resent_on_a_new_one(transport):
    server = IdleClosingServer()
    try:
        with make_http(transport) as http:
            api = FastGPTClient(server.url, APP_KEY, timeout=5, connect_timeout=2, http=http)
            assert text_of(ask(api)) == "Hi"
            # The pooled socket is reused, closed unanswered, and the question resent once.
            assert text_of(ask(api)) == "Hi"
        assert (server.answered, server.dropped) == (2, 1)
    finally:
        server.close()


@pytest.mark.parametrize("transport", ["loop", "httpx"])
def test_a_new_connection_closed_unanswered_is_not_resent(transport):
    # FastGPT may have started the workflow: sending again could answer twice.
    server = IdleClosingServer(drop_first=True)
    try:
        with make_http(transport) as http:
            api = FastGPTClient(server.url, APP_KEY, timeout=5, connect_timeout=2, http=http)
            error = failure(api)
        assert error.permanent and "lost before it answered" in error.message
        assert (server.answered, server.dropped) == (0, 1)
    finally:
        server.close()


def test_event_data_beyond_strict_json_reads_as_with_the_standard_library_but_utf8_safe():
    from fastgpt_portal.upstream.client import _loads

    # orjson reads events in C, and refuses these; json reads them, and so still does the client,
    # except that a lone UTF-16 half, which UTF-8 (Redis, PostgreSQL) cannot carry, is U+FFFD.
    assert _loads('{"x": NaN}')["x"] != _loads('{"x": NaN}')["x"]
    assert _loads('{"t": "\\ud800", "\\udc00": ["\\ud83d\\ude00 \\ude00"]}') == {
        "t": "\ufffd",
        "\ufffd": ["\U0001f600 \ufffd"],
    }
    assert _loads('{"t": "ok"}') == {"t": "ok"}
