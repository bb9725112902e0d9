"""A DLC-Bench-style judge on an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM and the like).

One multiple-choice question per request; the reply's choice letter is the verdict. Only urllib is used.
"""
from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Sequence

from .questions import Question, Verdict

logger = logging.getLogger(__name__)


class ChatJudgeError(RuntimeError):
    """The chat endpoint failed or kept answering without a valid choice letter."""


_JUDGE_PROMPT = """Answer the multiple-choice question about a text description of one object in an image. Rules:
1. Do not output any reasoning and do not correct the description. Output exactly one of the choices.
2. The wording does not have to match exactly: choose the closest option based on the description.

The description is:
{caption}

From the description above, answer the following question with one of the choices:
{question}
{choices}

Output only the letter of the correct choice, nothing else."""


class ChatJudge:
    """DLC-Bench-style judge on an OpenAI-compatible chat endpoint (POST <base>/v1/chat/completions).

    base_url: e.g. "http://127.0.0.1:8000" or ".../v1"; default env DAM_JUDGE_BASE_URL, then OPENAI_BASE_URL.
    model: default env DAM_JUDGE_MODEL. api_key: default env DAM_JUDGE_API_KEY, then OPENAI_API_KEY; sent as a
    Bearer token and never logged, printed or put into an error message. timeout_s: per request (seconds).
    max_attempts: requests per question before a ChatJudgeError (an unparsable reply is retried).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 60.0, max_attempts: int = 3, temperature: float = 0.0) -> None:
        base_url = base_url or os.environ.get("DAM_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = model or os.environ.get("DAM_JUDGE_MODEL")
        if not base_url:
            raise ValueError("ChatJudge needs a base_url (or DAM_JUDGE_BASE_URL)")
        if not model:
            raise ValueError("ChatJudge needs a model name (or DAM_JUDGE_MODEL)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        base = base_url.rstrip("/")
        self.endpoint = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self._api_key = api_key or os.environ.get("DAM_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.temperature = temperature

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"ChatJudge(endpoint={self.endpoint!r}, model={self.model!r}, api_key={'***' if self._api_key else None})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def prompt(self, caption: str, question: Question) -> str:
        """The user message for one question."""
        letters = "ABCDEFGH"
        choices = "\n".join(f"{letters[i]}. {text}" for i, (text, _) in enumerate(question.choices()))
        return _JUDGE_PROMPT.format(caption=caption.strip(), question=question.text, choices=choices)

    def _complete(self, content: str) -> str:
        body = json.dumps({
            "model": self.model, "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature, "max_tokens": 8,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise ChatJudgeError(self._redact(f"judge endpoint {self.endpoint} answered HTTP {exc.code}: {detail}")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ChatJudgeError(self._redact(f"judge endpoint {self.endpoint} unreachable: {exc}")) from None
        except ValueError:
            raise ChatJudgeError(f"judge endpoint {self.endpoint} answered with invalid JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ChatJudgeError(f"judge endpoint {self.endpoint} answered without choices[0].message.content") from None

    @staticmethod
    def parse_letter(reply: str, count: int) -> int | None:
        """Index of the chosen letter in a reply like "B", "(B)", "B. The description..." or "Answer: B"."""
        valid = "ABCDEFGH"[:count]
        text = reply.strip()
        match = re.match(r"^\(?([A-H])\)?(?:[.:)\s]|$)", text) or re.search(r"\b(?:answer|choice)\s*(?:is)?\s*:?\s*\(?([A-H])\b", text, re.I)
        letter = match.group(1).upper() if match else None
        return valid.index(letter) if letter and letter in valid else None

    def score(self, caption: str, questions: Sequence[Question]) -> list[Verdict]:
        verdicts = []
        for question in questions:
            choices = question.choices()
            content = self.prompt(caption, question)
            for attempt in range(1, self.max_attempts + 1):
                reply = self._complete(content)
                index = self.parse_letter(reply, len(choices))
                if index is not None:
                    verdicts.append(Verdict(question, choices[index][1], "ABCDEFGH"[index]))
                    break
                logger.warning("judge reply without a valid letter (attempt %d/%d): %r", attempt, self.max_attempts,
                               self._redact(reply[:80]))
            else:
                raise ChatJudgeError(f"judge gave no valid choice letter after {self.max_attempts} attempts")
        return verdicts
