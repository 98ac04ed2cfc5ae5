/* chat.c - chat templates: a list of messages -> one prompt string -> token ids.
 *
 * Three built-in templates cover the checkpoints this server targets:
 *   llama-2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
 *            (Meta's Llama-2-chat format, as its Hugging Face Jinja template renders it)
 *   chatml   <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
 *   plain    <s>{system}\n\nUser: {user}\nAssistant: {assistant}</s>\nUser: ...\nAssistant:
 *            (the fallback for base models: no template is known)
 * The template is chosen by --chat-template NAME or recognised from the Jinja string in
 * tokenizer_config.json (markers it contains); anything unrecognised falls back to plain.
 *
 * Control tokens are written as their literal pieces ("<s>", "</s>", "<|im_start|>") and
 * chat_encode() maps those to control ids when the vocabulary has them, encoding the text between
 * markers without BOS - what Hugging Face's legacy LLaMA tokenizer does with the rendered
 * template. Rejected alternative: a Jinja interpreter; three formats do not justify one. */
#include "server_internal.h"

#include <stdlib.h>
#include <string.h>

int chat_template_from_name(const char *name)
{
    if (!name) return -1;
    if (!strcmp(name, "llama-2") || !strcmp(name, "llama2") || !strcmp(name, "llama-2-chat"))
        return CHAT_TEMPLATE_LLAMA2;
    if (!strcmp(name, "chatml")) return CHAT_TEMPLATE_CHATML;
    if (!strcmp(name, "plain") || !strcmp(name, "none")) return CHAT_TEMPLATE_PLAIN;
    return -1;
}

const char *chat_template_name(enum chat_template t)
{
    switch (t) {
    case CHAT_TEMPLATE_LLAMA2: return "llama-2";
    case CHAT_TEMPLATE_CHATML: return "chatml";
    default: return "plain";
    }
}

enum chat_template chat_template_detect(const char *jinja)
{
    if (!jinja) return CHAT_TEMPLATE_PLAIN;
    if (strstr(jinja, "<|im_start|>")) return CHAT_TEMPLATE_CHATML;
    if (strstr(jinja, "[INST]")) return CHAT_TEMPLATE_LLAMA2;
    return CHAT_TEMPLATE_PLAIN;
}

/* Hugging Face's Llama-2 template strips the content. */
static void put_stripped(struct strbuf *b, const char *s)
{
    const char *e = s + strlen(s);
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')) s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\t' || e[-1] == '\r')) e--;
    sb_append(b, s, (size_t)(e - s));
}

static int render_llama2(const struct chat_message *m, int n, int add_bos, struct strbuf *b,
                         struct oai_error *e)
{
    const char *sys = NULL;
    int i = 0;
    if (n > 0 && m[0].role == CHAT_SYSTEM) sys = m[i++].content;
    if (i >= n)
        return oai_err(e, 400, "messages", NULL, "'messages' needs a user message after the system one");
    for (int k = 0; i < n; i++, k++) {
        enum chat_role want = (k % 2 == 0) ? CHAT_USER : CHAT_ASSISTANT;
        if (m[i].role != want)
            return oai_err(e, 400, "messages", NULL,
                           "messages[%d]: the llama-2 template needs roles to alternate "
                           "user/assistant/user/... after an optional first system message", i);
        if (m[i].role == CHAT_USER) {
            if (add_bos) sb_puts(b, "<s>");
            sb_puts(b, "[INST] ");
            if (k == 0 && sys) {
                sb_puts(b, "<<SYS>>\n");
                sb_puts(b, sys);
                sb_puts(b, "\n<</SYS>>\n\n");
            }
            put_stripped(b, m[i].content);
            sb_puts(b, " [/INST]");
        } else {
            sb_puts(b, " ");
            put_stripped(b, m[i].content);
            sb_puts(b, " </s>");
        }
    }
    return 0;
}

static void render_chatml(const struct chat_message *m, int n, int add_bos, struct strbuf *b)
{
    static const char *names[] = {"system", "user", "assistant"};
    if (add_bos) sb_puts(b, "<s>");
    for (int i = 0; i < n; i++) {
        sb_puts(b, "<|im_start|>");
        sb_puts(b, names[m[i].role]);
        sb_puts(b, "\n");
        sb_puts(b, m[i].content);
        sb_puts(b, "<|im_end|>\n");
    }
    sb_puts(b, "<|im_start|>assistant\n");
}

static void render_plain(const struct chat_message *m, int n, int add_bos, struct strbuf *b)
{
    if (add_bos) sb_puts(b, "<s>");
    for (int i = 0; i < n; i++) {
        switch (m[i].role) {
        case CHAT_SYSTEM:
            sb_puts(b, m[i].content);
            sb_puts(b, "\n\n");
            break;
        case CHAT_USER:
            sb_puts(b, "User: ");
            sb_puts(b, m[i].content);
            sb_puts(b, "\n");
            break;
        case CHAT_ASSISTANT:
            sb_puts(b, "Assistant: ");
            sb_puts(b, m[i].content);
            sb_puts(b, "</s>\n");
            break;
        }
    }
    sb_puts(b, "Assistant:");
}

int chat_render(enum chat_template t, const struct chat_message *m, int n, int add_bos, char **out,
                struct oai_error *e)
{
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    if (n <= 0) return oai_err(e, 400, "messages", NULL, "'messages' must not be empty");
    switch (t) {
    case CHAT_TEMPLATE_LLAMA2:
        if (render_llama2(m, n, add_bos, &b, e)) {
            sb_free(&b);
            return -1;
        }
        break;
    case CHAT_TEMPLATE_CHATML: render_chatml(m, n, add_bos, &b); break;
    default: render_plain(m, n, add_bos, &b); break;
    }
    *out = b.p;
    return 0;
}

static const char *const markers[] = {"<s>", "</s>", "<|im_start|>", "<|im_end|>"};

int chat_encode(const tokenizer_t *tok, const char *text, int32_t **ids, struct oai_error *e)
{
    int32_t *out = NULL;
    int n = 0, cap = 0;
    const char *p = text;
    char err[ERR_LEN];
    while (*p) {
        /* the next marker that the vocabulary knows */
        const char *best = NULL;
        int best_k = -1;
        int32_t best_id = -1;
        for (int k = 0; k < (int)(sizeof markers / sizeof *markers); k++) {
            const char *q = strstr(p, markers[k]);
            if (!q || (best && q >= best)) continue;
            int32_t id = tokenizer_piece_to_id(tok, markers[k]);
            if (id < 0) continue;
            best = q;
            best_k = k;
            best_id = id;
        }
        size_t seg = best ? (size_t)(best - p) : strlen(p);
        if (seg) {
            int32_t *part = NULL;
            int m = tokenizer_encode(tok, p, seg, 0, &part, err);
            if (m < 0) {
                free(out);
                return oai_err(e, 400, "messages", NULL, "could not tokenize the messages: %s", err);
            }
            if (n + m > cap) {
                cap = (n + m) * 2 + 16;
                out = xrealloc(out, sizeof(int32_t) * (size_t)cap);
            }
            memcpy(out + n, part, sizeof(int32_t) * (size_t)m);
            n += m;
            free(part);
        }
        if (!best) break;
        if (n + 1 > cap) {
            cap = n * 2 + 16;
            out = xrealloc(out, sizeof(int32_t) * (size_t)cap);
        }
        out[n++] = best_id;
        p = best + strlen(markers[best_k]);
    }
    *ids = out ? out : xmalloc(sizeof(int32_t));
    return n;
}
