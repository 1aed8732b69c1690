"""Choices shared by several commands (plain Enums, so `--help` lists them)."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    caption = "caption"
    vqa = "vqa"
    retrieval = "retrieval"
