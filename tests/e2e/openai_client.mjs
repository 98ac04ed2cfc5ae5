// openai_client.mjs - the official `openai` npm client (pinned in package.json) against a running
// ropeserve: completions, chat, streaming, logprobs, echo, n, stop, extra sampling fields and the
// error classes the SDK maps statuses to. Usage: node openai_client.mjs BASE_URL API_KEY MODEL
// Prints one line per failure and ends with "openai_client: N passed, N failed".
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
let passed = 0, failed = 0;

function check(name, cond, detail) {
  if (cond) passed++;
  else { failed++; console.log(`FAIL ${name}${detail !== undefined ? ': ' + JSON.stringify(detail).slice(0, 400) : ''}`); }
}

async function test(name, fn) {
  try { await fn(); } catch (e) { failed++; console.log(`FAIL ${name}: threw ${e?.constructor?.name}: ${e?.message}`); }
}

// expect the call to throw the SDK error class with this status (and param/code when given)
async function expectError(name, fn, cls, status, param, code) {
  try {
    await fn();
    check(name, false, 'no error');
  } catch (e) {
    const ok = e instanceof cls && e.status === status &&
      (param === undefined || e.param === param) && (code === undefined || e.code === code);
    check(name, ok, { cls: e?.constructor?.name, status: e?.status, param: e?.param, code: e?.code, msg: e?.message });
  }
}

const PROMPT = 'Once upon a time';

await test('models.list', async () => {
  const page = await client.models.list();
  const m = page.data[0];
  check('models.list id', m && m.id === model, page.data);
  check('models.list max_model_len', m && m.max_model_len > 0, m);
  check('models.list rope', m && m.rope && typeof m.rope.type === 'string', m);
});

let greedy = null;
await test('completions', async () => {
  const r = await client.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true });
  greedy = r.choices[0].text;
  check('completions object', r.object === 'text_completion' && r.id.startsWith('cmpl-'), r);
  check('completions text', typeof greedy === 'string' && r.choices[0].finish_reason === 'length', r.choices[0]);
  check('completions usage', r.usage.completion_tokens === 24 && r.usage.total_tokens === r.usage.prompt_tokens + 24, r.usage);
});

await test('completions stream == non-stream', async () => {
  const stream = await client.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true,
    stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) { text += c.text; if (c.finish_reason) finish = c.finish_reason; }
    if (chunk.usage) usage = chunk.usage;
  }
  check('stream text', text === greedy, { text, greedy });
  check('stream finish', finish === 'length', finish);
  check('stream usage', usage && usage.completion_tokens === 24, usage);
});

await test('completions logprobs', async () => {
  const r = await client.completions.create({ model, prompt: PROMPT, max_tokens: 5, temperature: 0, logprobs: 3 });
  const lp = r.choices[0].logprobs;
  check('logprobs arrays', lp && lp.tokens.length === r.usage.completion_tokens && lp.token_logprobs.length === lp.tokens.length &&
    lp.top_logprobs.length === lp.tokens.length && lp.text_offset.length === lp.tokens.length, lp);
  check('logprobs values', lp && lp.token_logprobs.every((v) => v <= 0) && lp.top_logprobs.every((d) => Object.keys(d).length >= 3), lp);
});

await test('echo scoring', async () => {
  const r = await client.completions.create({ model, prompt: PROMPT, max_tokens: 0, echo: true, logprobs: 1 });
  const c = r.choices[0];
  check('echo text', c.text === PROMPT, c.text);
  check('echo first logprob null', c.logprobs.token_logprobs[0] === null, c.logprobs.token_logprobs);
  check('echo prompt logprobs', c.logprobs.tokens.length === r.usage.prompt_tokens &&
    c.logprobs.token_logprobs.slice(1).every((v) => typeof v === 'number' && v <= 0), c.logprobs);
  check('echo no completion', r.usage.completion_tokens === 0, r.usage);
});

await test('n and batch', async () => {
  const r = await client.completions.create({ model, prompt: ['a', 'b'], max_tokens: 3, n: 2, temperature: 0 });
  check('n x prompts choices', r.choices.length === 4 && r.choices.map((c) => c.index).join() === '0,1,2,3', r.choices);
});

await test('stop', async () => {
  const stop = greedy && greedy.length > 8 ? greedy.slice(6, 8) : 'zz';
  const r = await client.completions.create({ model, prompt: PROMPT, max_tokens: 24, temperature: 0, ignore_eos: true, stop: [stop] });
  const want = greedy.slice(0, greedy.indexOf(stop));
  check('stop text', r.choices[0].text === want && r.choices[0].finish_reason === 'stop', { got: r.choices[0], want, stop });
});

let chatText = null;
await test('chat', async () => {
  const r = await client.chat.completions.create({ model, temperature: 0, max_tokens: 8,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }] });
  chatText = r.choices[0].message.content;
  check('chat object', r.object === 'chat.completion' && r.id.startsWith('chatcmpl-'), r);
  check('chat message', r.choices[0].message.role === 'assistant' && typeof chatText === 'string', r.choices[0]);
});

await test('chat stream == non-stream', async () => {
  const stream = await client.chat.completions.create({ model, temperature: 0, max_tokens: 8, stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }] });
  let text = '', role = null, usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) { if (c.delta.role) role = c.delta.role; text += c.delta.content ?? ''; }
    if (chunk.usage) usage = chunk.usage;
  }
  check('chat stream text', text === chatText, { text, chatText });
  check('chat stream role', role === 'assistant', role);
  check('chat stream usage', usage && usage.prompt_tokens > 0, usage);
});

await test('chat logprobs', async () => {
  const r = await client.chat.completions.create({ model, temperature: 0, max_completion_tokens: 4, logprobs: true, top_logprobs: 2,
    ignore_eos: true, messages: [{ role: 'user', content: 'Hi' }] });
  const content = r.choices[0].logprobs?.content;
  check('chat logprobs content', Array.isArray(content) && content.length === 4 &&
    content.every((t) => typeof t.token === 'string' && t.logprob <= 0 && t.top_logprobs.length === 2 && Array.isArray(t.bytes)), r.choices[0]);
});

await expectError('400 bad temperature', () => client.completions.create({ model, prompt: 'x', temperature: 5 }),
  OpenAI.BadRequestError, 400, 'temperature');
await expectError('400 context_length_exceeded', () => client.completions.create({ model, prompt: 'x', max_tokens: 100000 }),
  OpenAI.BadRequestError, 400, 'max_tokens', 'context_length_exceeded');
await expectError('400 unknown token id', () => client.completions.create({ model, prompt: [1, 2, 999999] }),
  OpenAI.BadRequestError, 400, 'prompt');
await expectError('400 chat missing messages', () => client.chat.completions.create({ model, messages: [] }),
  OpenAI.BadRequestError, 400, 'messages');
await expectError('404 unknown model', () => client.completions.create({ model: 'no-such-model', prompt: 'x' }),
  OpenAI.NotFoundError, 404, 'model');
const wrongKey = new OpenAI({ baseURL, apiKey: 'wrong-key', maxRetries: 0 });
await expectError('401 wrong key', () => wrongKey.models.list(), OpenAI.AuthenticationError, 401);

console.log(`openai_client: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
