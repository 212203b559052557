from django import template
from django.utils.safestring import SafeString, mark_safe

from fastgpt_portal.lib.markdown import render

register = template.Library()


@register.filter
def markdown(text: str) -> SafeString:
    # Safe because lib.markdown renders with raw HTML off and sanitises with nh3 afterwards.
    return mark_safe(render(text or ""))  # noqa: S308
