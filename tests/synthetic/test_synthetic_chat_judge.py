"""ChatJudge against a fake OpenAI-compatible endpoint on 127.0.0.1 (a thread in this test process)."""
from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dam_model.evaluation import ChatJudge, ChatJudgeError, RuleJudge, evaluate_captions, make_questions
from dam_model.synthetic import COLORS, POSITIONS, SHAPES, SIZES, iter_region_samples

SECRET = "sk-test-7f3a9c-do-not-log"


VOCABULARY = {"colour": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position in the image": list(POSITIONS)}


def keyword_llm(prompt: str) -> str:
    """Answers the way a careful LLM would: reads the subject from the first sentence, the relation from the rest."""
    description = prompt.split("The description is:\n", 1)[1].split("\n\nFrom the description above", 1)[0].lower()
    choices = dict(re.findall(r"^([A-C])\. (.*)$", prompt, flags=re.M))
    phrase = re.match(r"The description says that the object is (.*)\.$", choices["A"]).group(1)
    phrase = re.sub(r"^(a|an) ", "", phrase)
    subject, _, rest = description.partition(". ")
    if phrase.startswith(("the ", "next to")):  # a relation to other objects
        return "A" if phrase in rest else ("C" if "C" in choices and "it is" in rest else "B")
    if phrase in subject:
        return "A"
    if "C" not in choices:
        return "B"
    noun = re.match(r"The description does not mention the object's (.*)\.$", choices["B"]).group(1)
    others = [v for v in VOCABULARY[noun] if v != phrase.replace("in the ", "").replace(" of the image", "")]
    return "C" if any(re.search(rf"\b{v}\b", subject) for v in others) else "B"


class FakeLLM:
    """Records requests; `answer(prompt) -> reply text` decides what the model says."""

    def __init__(self, answer=keyword_llm, require_key: str | None = SECRET):
        self.answer, self.require_key, self.requests = answer, require_key, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if fake.require_key and self.headers.get("Authorization") != f"Bearer {fake.require_key}":
                    # a careless server that echoes the credential back in its error page
                    self._send(401, {"error": f"bad credentials: {self.headers.get('Authorization')}"})
                    return
                reply = fake.answer(body["messages"][-1]["content"])
                self._send(200, {"id": "x", "object": "chat.completion",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_llm():
    servers = []

    def start(**kwargs) -> FakeLLM:
        servers.append(FakeLLM(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_chat_judge_agrees_with_the_rule_judge_on_good_and_bad_captions(fake_llm, small_scenes):
    llm = fake_llm()
    judge = ChatJudge(llm.url, "judge-model", SECRET)
    samples = list(iter_region_samples(small_scenes[:2]))
    good = [s.caption for s in samples]
    bad = [s.caption.replace(s.attributes["color"], "green" if s.attributes["color"] != "green" else "red")
           for s in samples]
    for captions in (good, bad):
        chat = evaluate_captions(captions, samples, judge)
        rule = evaluate_captions(captions, samples, RuleJudge())
        assert (chat.positive, chat.negative) == pytest.approx((rule.positive, rule.negative))
    assert evaluate_captions(good, samples, judge).average == 1.0
    assert evaluate_captions(bad, samples, judge).average < 0.9
    request = llm.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0.0
    assert "Output only the letter" in request["body"]["messages"][0]["content"]


@pytest.mark.parametrize("reply, index", [("B", 1), ("(C)", 2), ("A. The description says ...", 0),
                                          ("Answer: B", 1), ("c", None), ("Maybe", None), ("D", None)])
def test_letter_parsing(reply, index):
    assert ChatJudge.parse_letter(reply, 3) == index


def test_base_url_with_v1_and_env_configuration(fake_llm, monkeypatch):
    llm = fake_llm(answer=lambda prompt: "A", require_key=None)
    monkeypatch.setenv("DAM_JUDGE_BASE_URL", llm.url + "/v1/")
    monkeypatch.setenv("DAM_JUDGE_MODEL", "env-model")
    monkeypatch.delenv("DAM_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = ChatJudge()
    question = make_questions({"color": "red", "shape": "circle", "size": "small", "position": "center"})[0]
    (verdict,) = judge.score("a small red circle", [question])
    assert verdict.outcome == "correct" and verdict.answer == "A"
    assert llm.requests[0]["path"] == "/v1/chat/completions" and llm.requests[0]["auth"] is None
    assert llm.requests[0]["body"]["model"] == "env-model"


def test_unparsable_replies_are_retried_then_fail(fake_llm):
    llm = fake_llm(answer=lambda prompt: "I would rather not say.", require_key=None)
    judge = ChatJudge(llm.url, "m", max_attempts=3)
    question = make_questions({"color": "red", "shape": "circle", "size": "small", "position": "center"})[0]
    with pytest.raises(ChatJudgeError, match="no valid choice letter"):
        judge.score("a small red circle", [question])
    assert len(llm.requests) == 3


def test_api_key_never_reaches_errors_logs_or_repr(fake_llm, caplog, monkeypatch):
    llm = fake_llm(require_key="the-right-key")
    judge = ChatJudge(llm.url, "m", SECRET)
    question = make_questions({"color": "red", "shape": "circle", "size": "small", "position": "center"})[0]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ChatJudgeError) as failure:
        judge.score("a small red circle", [question])
    assert "401" in str(failure.value)
    assert llm.requests[0]["auth"] == f"Bearer {SECRET}"  # the key was sent ...
    assert SECRET not in str(failure.value) and "***" in str(failure.value)  # ... and redacted from the echo
    assert failure.value.__cause__ is None and failure.value.__context__ is None or SECRET not in repr(failure.value.__context__)
    assert SECRET not in caplog.text and SECRET not in repr(judge)
    # an unreachable endpoint: clear error, no key
    llm.close()
    with pytest.raises(ChatJudgeError, match="unreachable") as unreachable:
        ChatJudge(llm.url, "m", SECRET, timeout_s=2).score("x", [question])
    assert SECRET not in str(unreachable.value)


def test_missing_configuration_is_a_value_error(monkeypatch):
    for name in ("DAM_JUDGE_BASE_URL", "OPENAI_BASE_URL", "DAM_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="base_url"):
        ChatJudge()
    with pytest.raises(ValueError, match="model"):
        ChatJudge("http://127.0.0.1:9")
