"""edgekit.serve.chat: templates render as transformers' apply_chat_template does, from every artifact kind;
Gemma 4 replies split into content, thinking and OpenAI tool calls, streamed or whole."""

from __future__ import annotations

import json

import pytest

from edgekit.core.errors import ArtifactError
from edgekit.serve.chat import ChatTemplate, StreamSplitter, parse_reply, parse_tool_call

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "days": {"type": "integer"},
                },
            },
        },
    }
]
CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
}

CASES = {
    "user": ([{"role": "user", "content": "hi"}], {}),
    "system+history, thinking on": (
        [
            {"role": "system", "content": " Be brief. "},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"},
        ],
        {"enable_thinking": True},
    ),
    "thinking off": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        {"enable_thinking": False},
    ),
    "tools": ([{"role": "user", "content": "Weather in Paris?"}], {"tools": TOOLS}),
    "tools, thinking on": (
        [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather?"}],
        {"tools": TOOLS, "enable_thinking": True},
    ),
    "tool round trip": (
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"},
        ],
        {"tools": TOOLS},
    ),
    "after tool answer": (
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "Thanks"},
        ],
        {"tools": TOOLS},
    ),
    "earlier thinking dropped": (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>b"},
            {"role": "user", "content": "c"},
        ],
        {},
    ),
    "content parts": ([{"role": "user", "content": [{"type": "text", "text": "part one"}]}], {}),
}


@pytest.fixture(scope="module")
def hf_tok(tiny_ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="module")
def gguf_path(tiny_ckpt, tmp_path_factory):
    from edgekit.builder.pipeline import build

    out = build(str(tiny_ckpt), target="pi5", quants=["q8_0"], out=tmp_path_factory.mktemp("dist"))
    return next(out.glob("*.gguf"))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gen", [True, False])
def test_render_equals_transformers(tiny_ckpt, hf_tok, case, gen):
    messages, kw = CASES[case]
    want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kw)
    kw = dict(kw)
    got = ChatTemplate.from_artifact(tiny_ckpt).render(
        messages, tools=kw.pop("tools", None), add_generation_prompt=gen, **kw
    )
    assert got == want


def test_gemma4_shapes(tiny_ckpt):
    tpl = ChatTemplate.from_artifact(tiny_ckpt)
    on = tpl.render(CASES["tools, thinking on"][0], tools=TOOLS, enable_thinking=True)
    assert on.startswith("<bos><|turn>system\n<|think|>\nYou help.<|tool>declaration:get_weather{")
    assert on.endswith("<turn|>\n<|turn>user\nWeather?<turn|>\n<|turn>model\n")
    off = tpl.render([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert "<|think|>" not in off and "system" not in off
    trip = tpl.render(CASES["tool round trip"][0], tools=TOOLS)
    assert trip.endswith(
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>'
        '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>'
    )
    assert tpl.stop_texts == ("<turn|>", "<|tool_response>", "<eos>")


def test_gemma3_turns_stop_at_end_of_turn():
    # A Gemma 2/3 template ends each turn with <end_of_turn>; without it as a stop, a reply ran on to
    # max_tokens (found running the enterprise pack on Gemma 3 270M).
    tpl = ChatTemplate(
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    )
    assert tpl.stop_texts == ("<end_of_turn>", "<eos>")
    assert ChatTemplate("{{ messages[0]['content'] }}").stop_texts == ("<eos>",)


def test_gguf_carries_the_checkpoint_template(tiny_ckpt, gguf_path, hf_tok):
    tpl = ChatTemplate.from_artifact(gguf_path)
    assert (tpl.bos_token, tpl.eos_token) == ("<bos>", "<eos>")  # read from the file's token table
    messages, kw = CASES["tool round trip"]
    assert tpl.render(messages, tools=TOOLS) == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kw
    )


def test_missing_template_is_one_line(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no chat template"):
        ChatTemplate.from_artifact(tmp_path)


def test_sandbox_and_helpers():
    tpl = ChatTemplate("{{ messages[0]['content'] | tojson }}{{ raise_exception('no') if messages | length > 1 }}")
    assert tpl.render([{"role": "user", "content": "é<b>"}]) == '"é<b>"'
    from edgekit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="rejected these messages: no"):
        tpl.render([{"role": "user", "content": "a"}] * 2)
    with pytest.raises(ConfigError):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render([])


def test_tool_call_values():
    c = parse_tool_call(
        'call:plan{when:<|"|>a "quoted", {b}<|"|>,n:-2.5,ok:true,none:null,'
        'xs:[1,<|"|>x<|"|>,[]],o:{<|"|>k k<|"|>:{z:false}},raw:"json \\"s\\""}'
    )
    assert c.name == "plan"
    assert c.arguments == {
        "when": 'a "quoted", {b}',
        "n": -2.5,
        "ok": True,
        "none": None,
        "xs": [1, "x", []],
        "o": {"k k": {"z": False}},
        "raw": 'json "s"',
    }
    with pytest.raises(ValueError):
        parse_tool_call('call:f{a:<|"|>open')


def test_reply_with_thinking_and_calls():
    text = (
        '<|channel>thought\nNeed weather.<channel|>Checking.<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}'
        "<tool_call|><|tool_call>call:get_time{}<tool_call|>"
    )
    r = parse_reply(text)
    assert (r.content, r.reasoning) == ("Checking.", "Need weather.")
    assert r.openai_tool_calls() == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        },
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    bad = parse_reply("x<|tool_call>call:f{a:<tool_call|>y")
    assert bad.tool_calls == [] and bad.content == "x<|tool_call>call:f{a:<tool_call|>y"


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_stream_splitter_equals_whole(step):
    text = "<|channel>thought\nhm <ok><channel|>Hi <there> <|tool_call>call:f{a:1}<tool_call|>"
    s = StreamSplitter()
    events = [e for i in range(0, len(text), step) for e in s.feed(text[i : i + step])]
    joined = {k: "".join(t for kk, t in events if kk == k) for k in ("content", "reasoning")}
    assert joined == {"content": "Hi <there> ", "reasoning": "hm <ok>"}
    r = s.finish()
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("f", {"a": 1})] and r.content == "Hi <there> "


@pytest.mark.parametrize("text", ["Hi <", "Hi <|tool", "a <|chan", "<channel"])
def test_stream_splitter_rest_is_the_held_tail(text):
    # A reply may end in what could have begun a marker: the stream must still carry it, as the whole does.
    s = StreamSplitter()
    events = [e for ch in text for e in s.feed(ch)]
    events += s.rest()
    assert "".join(t for k, t in events if k == "content") == parse_reply(text).content == text
    assert s.rest() == []


def test_stop_scanner_cuts_across_pieces():
    from edgekit.serve.chat import StopScanner

    s = StopScanner(["END", "\n\n"])
    got = [s.feed(p) for p in ["Hello E", "N", "ough; E", "ND and more"]]
    assert got == ["Hello ", "", "ENough; ", ""] and s.hit and s.rest() == ""
    s = StopScanner(["END"])
    assert (s.feed("no stop at the E"), s.rest()) == ("no stop at the ", "E")
    s = StopScanner(["\n\n"])
    assert s.feed("a\n") == "a" and s.feed("\nb") == "" and s.hit
