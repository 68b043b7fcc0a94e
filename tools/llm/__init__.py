"""LLM and VLM backends behind one OpenAI-style chat interface.

``chat_model(LLMSettings.from_env())`` gives the embedded Qwen2.5-Coder GGUF (offline default)
or, when a base URL is set (``--llm-base-url`` / ``MEL_LLM_BASE_URL``; ``MEL_VLM_*`` for the
VLM), a client of any OpenAI-compatible server: vLLM, llama.cpp's server, Ollama or OpenAI.
"""

from __future__ import annotations

from tools.llm.answers import parse_choice
from tools.llm.base import ChatModel, ChatReply, ChatStats, LLMError, LLMSettings
from tools.llm.embedded import EmbeddedChat
from tools.llm.openai_chat import OpenAIChat

__all__ = [
    "ChatModel",
    "ChatReply",
    "ChatStats",
    "EmbeddedChat",
    "LLMError",
    "LLMSettings",
    "OpenAIChat",
    "chat_model",
    "parse_choice",
]


def chat_model(settings: LLMSettings) -> ChatModel:
    """The OpenAI-compatible client when ``settings.base_url`` is set, else the embedded model.

    Cheap: nothing is loaded or contacted until the first ``chat``; the embedded weights are
    loaded once per process and shared by every ``EmbeddedChat``.
    """
    if settings.base_url:
        return OpenAIChat(settings)
    return EmbeddedChat(settings)
