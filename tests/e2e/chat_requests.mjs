// chat_requests.mjs - sends chat completion bodies through the official `openai` npm client and
// prints what it got back, for tests that check the answers themselves
// (tests/test_chat_checkpoints.py). Usage: node chat_requests.mjs BASE_URL < bodies.json
// stdin: a JSON list of request bodies (fields the SDK does not type, such as
// chat_template_kwargs or prompt_logprobs, travel in the body as they are).
// stdout: a JSON list, one entry per body: the response object, or {"error": {status, param,
// message}} when the SDK threw.
import OpenAI from 'openai';

const [baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 120000 });
let input = '';
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const body of JSON.parse(input)) {
  try {
    out.push(await client.chat.completions.create(body));
  } catch (e) {
    out.push({ error: { status: e?.status ?? null, param: e?.param ?? null, message: String(e?.message) } });
  }
}
console.log(JSON.stringify(out));
