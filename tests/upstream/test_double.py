"""The FastGPT double against fastgpt-api.md: the conformance cases of §10 and the rest it
promises, checked with plain httpx so that nothing of our client is involved."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fastgpt_portal.lib.embedded_redis import free_port
from fastgpt_portal.upstream.double import DOUBLE_APP_ID, FAULTS, FastGPTDouble
from tests.upstream.conftest import APP_KEY, GLOBAL_KEY, OTHER_APP_ID, OTHER_TEAM_KEY

COMPLETIONS = "/api/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[2]


def post(fg, http, body, *, key: str | None = APP_KEY, path: str = COMPLETIONS, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    headers.update(kwargs.pop("headers", {}))
    return http.post(fg.url + path, json=body, headers=headers, **kwargs)


def question(text: str = "hello", **body) -> dict:
    return {"messages": [{"role": "user", "content": text}], **body}


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) of each frame, exactly as written."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


def crud(fg, http, path: str, body=None, *, method: str = "POST", params=None, key=APP_KEY):
    response = http.request(
        method,
        fg.url + path,
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {key}"},
    )
    return response


# --------------------------------------------------------------------------- §10.1-10.3 auth


def test_10_1_an_unknown_key_gets_514_on_http_500(fg, http):
    response = post(fg, http, question(), key="fastgpt-doesnotexist")

    assert response.status_code == 500
    assert response.json() == {
        "code": 514,
        "statusText": "unAuthApiKey",
        "message": "common:code_error.error_message.514",
        "data": None,
    }


def test_10_2_a_missing_header_gets_403_and_clears_the_cookie(fg, http):
    response = post(fg, http, question(), key=None)

    assert response.status_code == 500
    assert response.json()["code"] == 403
    assert response.json()["statusText"] == "unAuthorization"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("fastgpt_token=;") and "Max-Age=0" in cookie


@pytest.mark.parametrize("authorization", ["Bearer", f"Bearer  {APP_KEY}", f"Bearer {APP_KEY}-x-y"])
def test_a_malformed_authorization_gets_403(fg, http, authorization):
    response = http.post(
        fg.url + COMPLETIONS, json=question(), headers={"Authorization": authorization}
    )

    assert response.json()["code"] == 403


def test_the_first_word_of_the_header_is_never_checked(fg, http):
    response = http.post(
        fg.url + COMPLETIONS, json=question(), headers={"Authorization": f"Token {APP_KEY}"}
    )

    assert response.status_code == 200


def test_the_legacy_key_dash_app_id_form_names_the_app(fg, http):
    response = post(fg, http, question(chatId="c-legacy"), key=f"{GLOBAL_KEY}-{DOUBLE_APP_ID}")

    assert response.status_code == 200
    assert fg.chats["c-legacy"]["appId"] == DOUBLE_APP_ID


def test_10_3_a_global_key_without_app_id_is_refused(fg, http):
    response = post(fg, http, question(), key=GLOBAL_KEY)

    assert response.status_code == 500
    body = response.json()
    assert (body["code"], body["statusText"]) == (500, "error")
    assert body["message"].startswith("Key is error.")


def test_10_3_an_app_key_ignores_the_body_app_id(fg, http):
    response = post(fg, http, question(chatId="c1", appId=OTHER_APP_ID))

    assert response.status_code == 200
    assert fg.chats["c1"]["appId"] == DOUBLE_APP_ID


def test_a_global_key_with_an_unknown_app_gets_app_is_empty(fg, http):
    response = post(fg, http, question(appId="65f0d0b1e0000000000000ff"), key=GLOBAL_KEY)

    assert response.json()["message"] == "app is empty"


def test_a_chat_of_another_team_gets_504000(fg, http):
    post(fg, http, question(chatId="c-team"), key=OTHER_TEAM_KEY)

    response = post(fg, http, question(chatId="c-team"))

    assert response.json()["code"] == 504000
    assert response.json()["statusText"] == "unAuthChat"


def test_empty_messages_are_refused_after_auth(fg, http):
    response = post(fg, http, {"messages": [], "chatId": "NO_RECORD_HISTORIES"})

    assert response.status_code == 500
    assert response.json()["message"] == "messages is empty"


# --------------------------------------------------------------------------- §10.4-10.5 non-stream


def test_10_4_a_non_stream_answer_and_the_saved_chat(fg, http):
    body = question("hi", chatId="c1", customUid="u-7", responseChatItemId="ai-1")

    response = post(fg, http, body)

    answer = response.json()
    assert set(answer) == {"id", "model", "usage", "choices"}
    assert answer["id"] == "c1" and answer["model"] == ""
    assert answer["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1}
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("You asked: hi")
    chat = fg.chats["c1"]
    assert (chat["source"], chat["outLinkUid"], chat["sourceName"]) == ("api", "u-7", "portal key")
    assert chat["tmbId"] == "65f0d0b1e000000000000b01"
    assert [i["obj"] for i in chat["items"]] == ["Human", "AI"]
    assert chat["items"][1]["dataId"] == "ai-1"


def test_the_last_custom_uid_sent_wins(fg, http):
    post(fg, http, question(chatId="c1", customUid="u-1"))
    post(fg, http, question(chatId="c1", customUid="u-2"))
    post(fg, http, question(chatId="c1"))

    assert fg.chats["c1"]["outLinkUid"] == "u-2"
    assert len(fg.chats["c1"]["items"]) == 6


def test_10_5_without_chat_id_the_id_is_empty_but_the_chat_is_saved(fg, http):
    answer = post(fg, http, question()).json()

    assert answer["id"] == ""
    (chat_id,) = fg.chats
    assert len(chat_id) == 24 and fg.chats[chat_id]["source"] == "api"
    listed = crud(fg, http, "/api/core/chat/history/getHistories", {"appId": DOUBLE_APP_ID})
    assert [c["chatId"] for c in listed.json()["data"]["list"]] == [chat_id]


def test_the_later_variant_returns_the_generated_id(http):
    with FastGPTDouble(return_generated_id=True) as double:
        answer = post(double, http, question()).json()

        assert answer["id"] in double.chats and len(answer["id"]) == 24


def test_no_record_histories_saves_nothing(fg, http):
    post(fg, http, question(chatId="NO_RECORD_HISTORIES"))

    assert fg.chats == {}


def test_a_detailed_non_stream_answer_has_nodes_variables_and_typed_content(fg, http):
    answer = post(fg, http, question(detail=True, variables={"lang": "en"})).json()

    content = answer["choices"][0]["message"]["content"]
    assert [item["type"] for item in content] == ["tool", "text"]
    assert [n["moduleType"] for n in answer["responseData"]] == [
        "datasetSearchNode",
        "tools",
        "chatNode",
    ]
    assert answer["newVariables"] == {"lang": "en"}


def test_an_interactive_only_answer_has_no_content_key(fg, http):
    answer = post(fg, http, question("[[select]]")).json()

    assert answer["choices"][0]["message"] == {"role": "assistant"}


def test_reasoning_comes_as_reasoning_content(fg, http):
    message = post(fg, http, question("[[reasoning]]")).json()["choices"][0]["message"]

    assert message["reasoning_content"] == "Let me think about this question step by step."


def test_a_node_error_shows_as_a_top_level_error_only(fg, http):
    fg.inject("node_error")

    response = post(fg, http, question(detail=True))

    assert response.status_code == 200
    assert response.json()["error"].startswith("LLM request failed")
    assert response.json()["choices"][0]["message"]["content"] == ""


# --------------------------------------------------------------------------- §10.6-10.8 streams


def test_10_6_a_stream_without_detail_is_openai_shaped(fg, http):
    response = post(fg, http, question("hi", stream=True))

    frames = sse(response.text)
    assert all(event is None for event, _ in frames)
    assert frames[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in frames[:-1]]
    assert all(c["id"] == "" and c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    last = chunks[-1]["choices"][0]
    assert (last["finish_reason"], last["delta"]["content"]) == ("stop", None)
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks).startswith("You")
    assert "Calculator" not in response.text and "flowResponses" not in response.text


def test_stream_responses_carry_fastgpts_headers(fg, http):
    response = post(fg, http, question(stream=True))

    assert response.headers["content-type"] == "text/event-stream;charset=utf-8"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["access-control-allow-origin"] == "*"


def test_10_7_a_v1_detail_stream_ends_with_the_documented_tail(fg, http):
    response = post(fg, http, question(stream=True, detail=True))

    frames = sse(response.text)
    assert [event for event, _ in frames[-4:]] == [
        "workflowDuration",
        "answer",
        "answer",
        "flowResponses",
    ]
    assert json.loads(frames[-3][1])["choices"][0]["finish_reason"] == "stop"
    assert frames[-2][1] == "[DONE]"
    nodes = json.loads(frames[-1][1])
    assert sum(n["totalPoints"] for n in nodes) == pytest.approx(0.58)
    tool = next(n for n in nodes if n["moduleType"] == "tools")
    assert tool["toolDetail"][0]["totalPoints"] == tool["childTotalPoints"]
    events = {event for event, _ in frames}
    assert {"flowNodeStatus", "toolCall", "toolParams", "toolResponse"} <= events


def test_the_later_variant_sends_flow_responses_before_done(http):
    with FastGPTDouble(flow_responses_before_done=True) as double:
        frames = sse(post(double, http, question(stream=True, detail=True)).text)

    assert [e for e, _ in frames[-3:]] == ["answer", "flowResponses", "answer"]
    assert frames[-1][1] == "[DONE]"


def test_10_7_a_v2_stream_sends_node_responses_and_no_flow_responses(fg, http):
    response = post(fg, http, question(stream=True, detail=True), path="/api/v2/chat/completions")

    frames = sse(response.text)
    nodes = [json.loads(d) for e, d in frames if e == "flowNodeResponse"]
    assert [n["moduleType"] for n in nodes] == ["datasetSearchNode", "tools", "chatNode"]
    assert "flowResponses" not in {e for e, _ in frames}
    assert frames[-1] == ("answer", "[DONE]")


def test_10_8_an_auth_failure_on_a_stream_is_one_error_frame_on_http_200(fg, http):
    response = post(fg, http, question(stream=True), key="fastgpt-doesnotexist")

    assert response.status_code == 200
    assert "text/event-stream" not in response.headers.get("content-type", "")
    assert sse(response.text) == [
        (
            "error",
            '{"code":514,"statusText":"unAuthApiKey",'
            '"message":"common:code_error.error_message.514","data":null}',
        )
    ]


def test_an_unnamed_error_frame_carries_only_the_message(fg, http):
    response = post(fg, http, question(stream=True), key=GLOBAL_KEY)

    (frame,) = sse(response.text)
    assert frame[0] == "error"
    assert json.loads(frame[1]) == {
        "message": "Key is error. You need to use the app key rather than the account key."
    }


def test_10_8_a_qpm_rejection_is_json_even_on_a_stream(fg, http):
    fg.inject("rate_429", limit=30, seconds=9)

    response = post(fg, http, question(stream=True))

    assert response.status_code == 500
    assert response.json() == {
        "code": 429,
        "statusText": "error",
        "message": "Rate limit exceeded. Maximum 30 requests per 60 seconds for this team. "
        "Please try again in 9 seconds.",
        "data": None,
    }


def test_points_exhaustion_streams_as_an_error_frame(fg, http):
    fg.inject("points")

    frames = sse(post(fg, http, question(stream=True)).text)

    assert frames[0][0] == "error" and json.loads(frames[0][1])["code"] == 500004


def test_fast_answers_start_with_a_newline(fg, http):
    frames = sse(post(fg, http, question("[[fast]]", stream=True, detail=True)).text)

    (fast,) = [json.loads(d) for e, d in frames if e == "fastAnswer"]
    assert fast["choices"][0]["delta"]["content"].startswith("\n")


def test_reasoning_chunks_have_no_content_key(fg, http):
    frames = sse(post(fg, http, question("[[reasoning]]", stream=True)).text)

    deltas = [json.loads(d)["choices"][0]["delta"] for _, d in frames[:-1]]
    reasoning = [d for d in deltas if "reasoning_content" in d]
    assert reasoning and all("content" not in d for d in reasoning)


def test_a_variable_update_node_sends_the_merged_variables(fg, http):
    post(fg, http, question(chatId="c-v", variables={"a": 1}))

    frames = sse(post(fg, http, question("[[vars]]", chatId="c-v", stream=True, detail=True)).text)

    (update,) = [json.loads(d) for e, d in frames if e == "updateVariables"]
    assert update == {"a": 1, "double_turns": 1}
    assert fg.chats["c-v"]["variables"] == {"a": 1, "double_turns": 1}


def test_heartbeats_flow_while_the_first_token_is_slow(http):
    with FastGPTDouble(heartbeat_seconds=0.1) as double:
        double.inject("slow_first_token", seconds=0.35)
        started = time.monotonic()
        frames = sse(post(double, http, question(stream=True, detail=True)).text)

    deltas = [
        json.loads(d)["choices"][0]["delta"] for e, d in frames if e == "answer" and d[0] == "{"
    ]
    assert [d["content"] for d in deltas[:3]] == ["", "", ""]
    assert time.monotonic() - started >= 0.35


def test_pacing_spreads_the_tokens_and_records_write_times(http):
    with FastGPTDouble(token_rate=50, tokens=11, record_writes=True) as double:
        post(double, http, question(stream=True, chatId="c-paced"))
        writes = double.received[-1]["writes"]

    assert len(writes) == 11 and writes == sorted(writes)
    assert 0.15 <= writes[-1] - writes[0] < 0.5  # 10 gaps of 20 ms


def test_paced_streams_do_not_block_each_other():
    async def run(url: str) -> float:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            started = time.monotonic()
            await asyncio.gather(
                *(
                    client.post(url + COMPLETIONS, json=question(stream=True),
                                headers={"Authorization": f"Bearer {APP_KEY}"})
                    for _ in range(100)
                )
            )  # fmt: skip
            return time.monotonic() - started

    with FastGPTDouble(token_rate=40, tokens=9, record_writes=True) as double:
        elapsed = asyncio.run(run(double.url))
        spans = [r["writes"][-1] - r["time"] for r in double.received]

    # Each stream is paced over 0.2 s (8 gaps of 25 ms; timer slack may round one down)...
    assert len(spans) == 100 and min(spans) >= 0.19
    assert elapsed < 1.5  # ...and they run at once: one after the other would take 20 s


# --------------------------------------------------------------------------- §10.9 interactive


def test_10_9_an_interactive_round_trip_resumes_the_same_ai_item(fg, http):
    first = post(fg, http, question("[[select]]", chatId="c9", stream=True, detail=True))
    (interactive,) = [
        json.loads(d)["interactive"] for e, d in sse(first.text) if e == "interactive"
    ]
    ai = fg.chats["c9"]["items"][-1]
    data_id = ai["dataId"]
    option = interactive["params"]["userSelectOptions"][0]["value"]

    post(fg, http, question(option, chatId="c9", stream=True, responseChatItemId="ignored"))

    assert interactive["type"] == "userSelect"
    assert {"key", "value"} == set(interactive["params"]["userSelectOptions"][0])
    items = fg.chats["c9"]["items"]
    assert len(items) == 2 and items[-1]["dataId"] == data_id
    assert items[-1]["value"][0]["interactive"]["params"]["userSelectedVal"] == option
    assert items[-1]["value"][-1]["text"]["content"] == f"You chose **{option}**. Thank you."


def test_the_interactive_fault_behaves_like_the_trigger(fg, http):
    fg.inject("interactive")

    frames = sse(post(fg, http, question(stream=True, detail=True)).text)

    assert "interactive" in {e for e, _ in frames}


# --------------------------------------------------------------------------- §10.10 history


def seed(fg, http, *chat_ids: str) -> None:
    for chat_id in chat_ids:
        post(fg, http, question(f"q {chat_id}", chatId=chat_id, customUid=f"u-{chat_id}"))


@pytest.mark.parametrize(
    "path", ["/api/core/chat/history/getHistories", "/api/core/chat/getHistories"]
)
def test_10_10_get_histories_pins_first_then_newest(fg, http, path):
    seed(fg, http, "c1", "c2", "c3")
    pin = {"appId": DOUBLE_APP_ID, "chatId": "c1", "top": True}
    crud(fg, http, "/api/core/chat/history/updateHistory", pin, method="PUT")

    response = crud(
        fg, http, path, {"appId": DOUBLE_APP_ID, "offset": 0, "pageSize": 2, "source": "api",
                         "customUid": "u-c3", "outLinkUid": "u-c3"},
    )  # fmt: skip

    body = response.json()
    assert (body["code"], body["statusText"], body["message"]) == (200, "", "")
    assert body["data"]["total"] == 3
    listed = body["data"]["list"]
    assert [c["chatId"] for c in listed] == ["c1", "c3"]
    assert set(listed[0]) == {"chatId", "updateTime", "appId", "customTitle", "title", "top"}


def test_10_10_a_deleted_chat_leaves_the_list_but_not_the_logs(fg, http):
    seed(fg, http, "c1", "c2")

    response = crud(
        fg, http, "/api/core/chat/history/delHistory", method="DELETE",
        params={"appId": DOUBLE_APP_ID, "chatId": "c1"},
    )  # fmt: skip

    assert response.json()["data"] is None
    listed = crud(fg, http, "/api/core/chat/history/getHistories", {"appId": DOUBLE_APP_ID})
    assert [c["chatId"] for c in listed.json()["data"]["list"]] == ["c2"]
    assert fg.chats["c1"]["deleteTime"] is not None


def test_clear_histories_soft_deletes_every_api_chat_of_the_app(fg, http):
    seed(fg, http, "c1", "c2")

    crud(fg, http, "/api/core/chat/history/clearHistories", method="DELETE",
         params={"appId": DOUBLE_APP_ID})  # fmt: skip

    listed = crud(fg, http, "/api/core/chat/history/getHistories", {"appId": DOUBLE_APP_ID})
    assert listed.json()["data"] == {"list": [], "total": 0}
    assert len(fg.chats) == 2


def test_10_10_records_page_from_the_newest_in_chronological_order(fg, http):
    for n in range(6):
        post(fg, http, question(f"q{n}", chatId="c1"))

    response = crud(
        fg, http, "/api/core/chat/record/getPaginationRecords",
        {"appId": DOUBLE_APP_ID, "chatId": "c1", "offset": 0, "pageSize": 10},
    )  # fmt: skip

    data = response.json()["data"]
    assert data["total"] == 12
    texts = [i["value"][-1]["text"]["content"] for i in data["list"] if i["obj"] == "Human"]
    assert texts == ["q1", "q2", "q3", "q4", "q5"]
    assert all("responseData" not in i for i in data["list"])
    older = crud(
        fg, http, "/api/core/chat/getPaginationRecords",
        {"appId": DOUBLE_APP_ID, "chatId": "c1", "offset": 10, "pageSize": 10},
    ).json()["data"]["list"]  # fmt: skip
    assert [i["value"][-1]["text"]["content"] for i in older][0] == "q0"


def test_10_10_feedback_is_set_and_cleared_by_leaving_it_out(fg, http):
    post(fg, http, question(chatId="c1", responseChatItemId="ai-1"))
    where = {"appId": DOUBLE_APP_ID, "chatId": "c1", "dataId": "ai-1"}

    set_ = crud(fg, http, "/api/core/chat/feedback/updateUserFeedback",
                {**where, "userGoodFeedback": "yes"})  # fmt: skip
    good = dict(fg.chats["c1"]["items"][-1])
    crud(fg, http, "/api/core/chat/feedback/updateUserFeedback", where)

    assert set_.json()["data"] == {}
    assert good["userGoodFeedback"] == "yes"
    assert "userGoodFeedback" not in fg.chats["c1"]["items"][-1]


def test_item_delete_reads_only_the_body(fg, http):
    post(fg, http, question(chatId="c1", responseChatItemId="ai-1"))
    where = {"appId": DOUBLE_APP_ID, "chatId": "c1", "contentId": "ai-1"}

    by_query = crud(fg, http, "/api/core/chat/item/delete", params=where)
    by_body = crud(fg, http, "/api/core/chat/item/delete", where)

    assert by_query.status_code == 500
    assert by_query.json()["message"] == "contentId or chatId is empty"
    assert by_body.json()["data"] is None
    records = crud(fg, http, "/api/core/chat/record/getPaginationRecords",
                   {"appId": DOUBLE_APP_ID, "chatId": "c1"}).json()["data"]  # fmt: skip
    assert [i["obj"] for i in records["list"]] == ["Human"]


def test_get_res_data_gives_the_nodes_of_an_ai_item_only(fg, http):
    post(fg, http, question(chatId="c1", responseChatItemId="ai-1"))
    human = fg.chats["c1"]["items"][0]["dataId"]

    def res_data(data_id):
        params = {"appId": DOUBLE_APP_ID, "chatId": "c1", "dataId": data_id}
        return crud(fg, http, "/api/core/chat/record/getResData", method="GET", params=params)

    assert len(res_data("ai-1").json()["data"]) == 3
    assert res_data(human).json()["data"] == []


def test_chat_init_returns_the_chat_and_the_app(fg, http):
    post(fg, http, question("Tell me", chatId="c1", variables={"lang": "de"}))

    data = crud(fg, http, "/api/core/chat/init", method="GET",
                params={"appId": DOUBLE_APP_ID, "chatId": "c1"}).json()["data"]  # fmt: skip

    assert (data["chatId"], data["title"], data["variables"]) == ("c1", "Tell me", {"lang": "de"})
    assert data["app"]["name"] == "Double app"


def test_history_calls_refuse_another_teams_chat(fg, http):
    post(fg, http, question(chatId="c-other"), key=OTHER_TEAM_KEY)

    response = crud(
        fg, http, "/api/core/chat/history/updateHistory",
        {"appId": OTHER_APP_ID, "chatId": "c-other", "customTitle": "x"}, key=GLOBAL_KEY,
    )  # fmt: skip

    assert response.json()["code"] == 504000


def test_the_key_health_check(fg, http):
    ok = http.get(fg.url + "/api/support/openapi/health", params={"apiKey": APP_KEY})
    bad = http.get(fg.url + "/api/support/openapi/health", params={"apiKey": "fastgpt-nope"})

    assert ok.json()["data"] == {"appId": DOUBLE_APP_ID}
    assert bad.status_code == 500 and bad.json()["message"] == "APIKey invalid"


def test_v2_stop_ends_a_running_v2_stream(http):
    with FastGPTDouble(token_rate=20, tokens=100) as double:
        result = {}

        def stream():
            body = question(chatId="c-v2", stream=True, detail=True)
            result["text"] = post(double, http, body, path="/api/v2/chat/completions").text

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(0.3)
        stopped = post(double, httpx.Client(), {"appId": DOUBLE_APP_ID, "chatId": "c-v2"},
                       path="/api/v2/chat/stop")  # fmt: skip
        thread.join(3)

    assert stopped.json()["data"] == {"success": True}
    assert sse(result["text"])[-1] == ("answer", "[DONE]")
    assert 0 < result["text"].count('"content":"') < 100


def test_an_unknown_path_is_a_404_page(fg, http):
    assert http.get(fg.url + "/api/nothing").status_code == 404


# --------------------------------------------------------------------------- faults and control


@pytest.mark.parametrize("status", [502, 503, 504])
def test_proxy_faults_answer_with_an_nginx_page(fg, http, status):
    fg.inject(f"proxy_{status}")

    response = post(fg, http, question(stream=True))

    assert response.status_code == status
    assert "nginx" in response.text and response.headers["content-type"] == "text/html"


def test_a_fault_applies_to_the_next_count_requests_only(fg, http):
    fg.inject("proxy_503", count=2)

    statuses = [post(fg, http, question()).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]


def test_drop_mid_stream_cuts_the_connection(fg, http):
    fg.inject("drop_mid_stream", after_tokens=2)

    with pytest.raises(httpx.RemoteProtocolError):
        post(fg, http, question(stream=True))


def test_malformed_sse_writes_a_frame_that_is_not_json(fg, http):
    fg.inject("malformed_sse")

    frames = sse(post(fg, http, question(stream=True)).text)

    bad = [d for _, d in frames if d != "[DONE]" and not _is_json(d)]
    assert len(bad) == 1


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_big_answer_streams_the_requested_size(fg, http):
    fg.inject("big_answer", size=100_000, chunk=1000)

    frames = sse(post(fg, http, question(stream=True)).text)

    text = "".join(json.loads(d)["choices"][0]["delta"]["content"] or "" for _, d in frames[:-1])
    assert len(text) == 100_000


def test_inject_refuses_an_unknown_fault(fg):
    with pytest.raises(ValueError, match="unknown fault"):
        fg.inject("gremlins")
    assert "raw" in FAULTS


def test_faults_received_and_reset_over_http(fg, http):
    injected = http.post(fg.url + "/__double__/faults", json={"fault": "proxy_502", "count": 1})
    refused = http.post(fg.url + "/__double__/faults", json={"fault": "gremlins"})
    status = post(fg, http, question(chatId="c1")).status_code

    received = http.get(fg.url + "/__double__/received").json()
    http.post(fg.url + "/__double__/reset")

    assert injected.json() == {"ok": True} and refused.status_code == 400
    assert status == 502
    assert [r["path"] for r in received] == [COMPLETIONS]
    assert received[0]["json"]["chatId"] == "c1"
    assert received[0]["headers"]["authorization"] == f"Bearer {APP_KEY}"
    assert fg.received == [] and fg.chats == {}


def test_the_management_command_serves_the_double():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "fastgpt_double", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DEBUG": "true"},
    )
    try:
        first_line = process.stdout.readline()
        key_line = process.stdout.readline()
        response = httpx.post(
            f"http://127.0.0.1:{port}{COMPLETIONS}",
            json=question(),
            headers={"Authorization": f"Bearer {APP_KEY}"},
        )
    finally:
        process.terminate()
        process.wait(10)

    assert first_line.strip() == f"FastGPT double listening on http://127.0.0.1:{port}"
    assert APP_KEY in key_line
    assert response.status_code == 200
