"""Typed events parsed from FastGPT's SSE stream (fastgpt-api.md §3.3-3.7), and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UpstreamError(Exception):
    """A failure talking to FastGPT.

    code: FastGPT's business code (514, 403, 500004, 429...) or an HTTP status from a proxy,
    None for transport errors. message: readable text for users and admins (never the key).
    permanent: False only when FastGPT cannot have run the question (connect error, proxy
    502/503/504, 429), so retrying cannot answer it twice.
    admin_action: the problem is the app's configuration (key, points), not the user's input.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | str | None = None,
        permanent: bool = True,
        admin_action: bool = False,
        status_text: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.permanent = permanent
        self.admin_action = admin_action
        self.status_text = status_text
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UpstreamError({self.message!r}, code={self.code!r}, permanent={self.permanent})"


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """Text (and/or reasoning) from an `answer` or `fastAnswer` event."""

    text: str = ""
    reasoning: str = ""
    fast: bool = False


@dataclass(frozen=True, slots=True)
class NodeStatus:
    status: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolEvent:
    kind: str  # toolCall | toolParams | toolResponse
    tool: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VariablesUpdated:
    variables: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Interactive:
    interactive: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkflowDuration:
    seconds: float


@dataclass(frozen=True, slots=True)
class NodeResponse:
    """v2 `flowNodeResponse`: one finished node."""

    item: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FlowResponses:
    """v1 `flowResponses` (after [DONE]): the node list, with the request's cost."""

    items: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Finished:
    """The answer is complete: `finish_reason` seen and the stream has ended."""

    finish_reason: str = "stop"


@dataclass(slots=True)
class Usage:
    points: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    node_errors: list[str] = field(default_factory=list)


Event = (
    AnswerDelta
    | NodeStatus
    | ToolEvent
    | VariablesUpdated
    | Interactive
    | WorkflowDuration
    | NodeResponse
    | FlowResponses
    | Finished
)
