"""Prompt formats. The only module that knows how a conversation becomes a prompt."""

from chatsmith.templates.base import IGNORE_INDEX, Rendered, Segment, Template
from chatsmith.templates.registry import TEMPLATES, get_template, template_names

__all__ = ["IGNORE_INDEX", "TEMPLATES", "Rendered", "Segment", "Template", "get_template", "template_names"]
