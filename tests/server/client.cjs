// Drives deepstack-server with the official openai npm package, as an application would.
// Usage: node client.cjs CONFIG.json  (NODE_PATH must reach node_modules/openai)
// CONFIG: {"baseURL", "apiKey", "groups": [[{"name", "stream", "body"}, ...], ...]}: the requests
// of a group run at once, groups one after another. Prints one JSON object: per request name its
// text, finish_reason, usage, and for streams the chunk count and whether the first chunk gave
// the assistant role; a failed request gives {"error": message, "status": HTTP status}.
const fs = require("fs");
const OpenAI = require("openai");

async function run(client, { stream, body }) {
  if (!stream) {
    const r = await client.chat.completions.create(body);
    return { text: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason, usage: r.usage, object: r.object, id: r.id };
  }
  const s = await client.chat.completions.create({ ...body, stream: true });
  let text = "", finish_reason = null, usage = null, chunks = 0, role_first = false, objects = new Set();
  for await (const chunk of s) {
    if (chunks === 0) role_first = chunk.choices.length === 1 && chunk.choices[0].delta.role === "assistant";
    chunks++;
    objects.add(chunk.object);
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta && c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish_reason = c.finish_reason;
    }
  }
  return { text, finish_reason, usage, chunks, role_first, objects: [...objects] };
}

(async () => {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const client = new OpenAI({ baseURL: config.baseURL, apiKey: config.apiKey || "none", maxRetries: 0, timeout: 300000 });
  const out = {};
  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);
  for (const group of config.groups) {
    const results = await Promise.all(
      group.map((req) => run(client, req).catch((e) => ({ error: String(e && e.message), status: e && e.status }))));
    group.forEach((req, i) => (out[req.name] = results[i]));
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
