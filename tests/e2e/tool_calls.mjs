// tool_calls.mjs - chat requests with tools through the official `openai` npm client, for
// tests/test_tool_calls.py. Usage: node tool_calls.mjs BASE_URL < bodies.json
// stdin: a JSON list of request bodies. A body with "stream": true goes through
// client.chat.completions.stream() (the SDK's own accumulation of content and tool_call deltas);
// its entry is {"final": finalChatCompletion(), "chunks": [every chunk as received]}. Others go
// through client.chat.completions.create(). An SDK error becomes {"error": {status, param, message}}.
import OpenAI from 'openai';

const [baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 120000 });
let input = '';
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const body of JSON.parse(input)) {
  try {
    if (body.stream) {
      const { stream, ...rest } = body;
      const s = client.chat.completions.stream(rest);
      const chunks = [];
      for await (const c of s) chunks.push(c);
      out.push({ final: await s.finalChatCompletion(), chunks });
    } else {
      out.push(await client.chat.completions.create(body));
    }
  } catch (e) {
    out.push({ error: { status: e?.status ?? null, param: e?.param ?? null, message: String(e?.message) } });
  }
}
console.log(JSON.stringify(out));
