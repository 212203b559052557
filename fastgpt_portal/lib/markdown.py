"""Markdown from the model to safe HTML: render with raw HTML off, then sanitise, always."""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_formatter = HtmlFormatter(nowrap=True, classprefix="hl-")


def _highlight(code: str, lang: str, _attrs: str) -> str:
    if not lang:
        return ""  # markdown-it escapes it itself
    try:
        lexer = get_lexer_by_name(lang)
    except ClassNotFound:
        return ""
    return highlight(code, lexer, _formatter)


_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight}).enable(
    ["table", "strikethrough"]
)

_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
    "img",
}  # fmt: skip
_ATTRS = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "span": {"class"},
    "ol": {"start"},
}


# Rendering is fast for prose but not for structure: 1 MB of Markdown lists or tables takes 3-5 s
# (measured on the 2-core dev machine). Beyond this many characters only the beginning is
# rendered, with a note saying so, so that a 10 MB answer cannot stall a page.
MAX_RENDER_CHARS = 100_000


def render(text: str) -> str:
    if len(text) <= MAX_RENDER_CHARS:
        return _render(text)
    return _render(text[:MAX_RENDER_CHARS]) + (
        f'<p class="truncated muted"><em>This answer is {len(text):,} characters long; only the '
        f"first {MAX_RENDER_CHARS:,} are shown here.</em></p>"
    )


@lru_cache(maxsize=2048)
def _render(text: str) -> str:
    html = _md.render(text)
    # Inline style attributes (table alignment) are dropped: the CSP forbids them anyway.
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRS,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
