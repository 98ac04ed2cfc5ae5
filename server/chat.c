/* chat.c - chat templates: a list of messages -> one prompt string -> token ids.
 *
 * The checkpoint's own template comes first: tokenizer_config.json's `chat_template` (a string,
 * or a list of {name, template}; "default" unless the request or --chat-template names another,
 * and "tool_use" when a request carries tools, as transformers picks), or a chat_template.jinja
 * file beside it. It is compiled at load by jinja.c (an unsupported construct is a load error
 * naming it) and rendered per request as vLLM does (chat_template_render).
 *
 * Three built-in templates remain as --chat-template fallbacks:
 *   llama-2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
 *            (Meta's Llama-2-chat format, as its Hugging Face Jinja template renders it)
 *   chatml   <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n
 *   plain    <s>{system}\n\nUser: {user}\nAssistant: {assistant}</s>\nUser: ...\nAssistant:
 *            (the fallback for base models: no template is known)
 * They render text only: a request with tools, chat_template_kwargs, add_generation_prompt
 * false or continue_final_message is refused (400 naming the field) rather than rendered wrong.
 *
 * --chat-template NAME|FILE|TEMPLATE: a name from the checkpoint's list, a built-in name, a file
 * (Jinja text, or a JSON file with a chat_template like tokenizer_config.json), or the template
 * text itself (vLLM's rule: text with "{{" or "{%").
 *
 * Control tokens are written as their literal text ("<s>", "<|im_start|>") and chat_encode()
 * encodes the prompt without BOS, special-token text recognised - what Hugging Face's tokenizers
 * do with a rendered template (add_special_tokens=False). tokenizer_encode recognises the added
 * and special tokens itself; chat_encode only splits out the few pieces it would not (a
 * SentencePiece piece that tokenizer_config.json adds as a token). */
#include "server_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* Hugging Face's Llama-2 template strips the content (str.strip(); the ASCII whitespace here). */
static void put_stripped(struct strbuf *b, const char *s)
{
    const char *e = s + strlen(s);
    while (s < e && strchr(" \t\n\r\v\f", *s)) s++;
    while (e > s && strchr(" \t\n\r\v\f", e[-1])) e--;
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
            if (k == 0 && sys) { /* the template strips "<<SYS>>...<</SYS>>" + content as one string */
                struct strbuf c = {0};
                sb_printf(&c, "<<SYS>>\n%s\n<</SYS>>\n\n%s", sys, m[i].content);
                put_stripped(b, c.p);
                sb_free(&c);
            } else {
                put_stripped(b, m[i].content);
            }
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
        default: break; /* chat_render refused other roles */
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
    for (int i = 0; i < n; i++)
        if (m[i].role != CHAT_SYSTEM && m[i].role != CHAT_USER && m[i].role != CHAT_ASSISTANT) {
            sb_free(&b);
            return oai_err(e, 400, "messages", NULL, "messages[%d]: the built-in %s template renders system, "
                           "user and assistant messages only", i, chat_template_name(t));
        }
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


// ---------------------------------------------------------------------------------------------
// The checkpoint's Jinja templates

static char *read_all(const char *path, size_t *len, char *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, -1, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct strbuf b = {0};
    sb_append(&b, "", 0);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        sb_append(&b, buf, n);
        if (b.len > (64u << 20)) {
            fclose(f);
            sb_free(&b);
            set_err(err, -1, "%s: larger than 64 MiB", path);
            return NULL;
        }
    }
    fclose(f);
    *len = b.len;
    return b.p;
}

/* A special token's text: "..." or {"content": "..."} (an AddedToken); NULL for null/absent. */
static char *token_text(const cJSON *v)
{
    if (cJSON_IsString(v)) return xstrdup(v->valuestring);
    const cJSON *c = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "content") : NULL;
    return cJSON_IsString(c) ? xstrdup(c->valuestring) : NULL;
}

/* Add (name, template source) to ct's list, compiling it now. A template that does not compile
 * keeps its error: requests that select it get a 400 naming the construct. */
static void add_named(struct chat_templates *ct, const char *name, const char *src, const char *where)
{
    if (ct->n_named == CHAT_MAX_NAMED) {
        LOG_W("%s: more than %d chat templates; '%s' ignored", where, CHAT_MAX_NAMED, name);
        return;
    }
    char err[ERR_LEN];
    int i = ct->n_named++;
    ct->names[i] = xstrdup(name);
    ct->named_from[i] = xstrdup(where);
    if (jinja_compile(&ct->named[i], src, strlen(src), err)) {
        ct->named[i] = NULL;
        char msg[ERR_LEN + 160];
        snprintf(msg, sizeof msg, "%s: chat template '%s': %s", where, name, err);
        ct->named_err[i] = xstrdup(msg);
    }
}

static int find_named(const struct chat_templates *ct, const char *name)
{
    for (int i = 0; i < ct->n_named; i++)
        if (!strcmp(ct->names[i], name)) return i;
    return -1;
}

/* chat_template as tokenizer_config.json has it: a string or a list of {name, template}. */
static int add_from_json(struct chat_templates *ct, const cJSON *tmpl, const char *where, char *err)
{
    if (!tmpl || cJSON_IsNull(tmpl)) return 0;
    if (cJSON_IsString(tmpl)) {
        add_named(ct, "default", tmpl->valuestring, where);
        return 0;
    }
    if (!cJSON_IsArray(tmpl))
        return set_err(err, -1, "%s: field 'chat_template': expected a string or a list of {name, template}", where);
    const cJSON *it;
    cJSON_ArrayForEach(it, tmpl) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *tp = cJSON_GetObjectItemCaseSensitive(it, "template");
        if (!cJSON_IsString(nm) || !cJSON_IsString(tp))
            return set_err(err, -1, "%s: field 'chat_template': every item needs a string 'name' and 'template'", where);
        add_named(ct, nm->valuestring, tp->valuestring, where);
    }
    return 0;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* --chat-template FILE: Jinja text, or JSON with a chat_template (tokenizer_config.json). */
static int flag_file(struct chat_templates *ct, const char *path, char *err)
{
    size_t len;
    char *text = read_all(path, &len, err);
    if (!text) return -1;
    cJSON *root = NULL;
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t')) i++;
    if (i < len && text[i] == '{' && (root = cJSON_ParseWithLength(text, len)) && cJSON_IsObject(root) &&
        cJSON_GetObjectItemCaseSensitive(root, "chat_template")) {
        struct chat_templates tmp = {0};
        int rc = add_from_json(&tmp, cJSON_GetObjectItemCaseSensitive(root, "chat_template"), path, err);
        cJSON_Delete(root);
        free(text);
        if (rc) {
            chat_templates_free(&tmp);
            return -1;
        }
        int d = find_named(&tmp, "default");
        if (d < 0) d = tmp.n_named ? 0 : -1;
        if (d < 0) {
            chat_templates_free(&tmp);
            return set_err(err, -1, "--chat-template %s: no chat_template in the file", path);
        }
        if (!tmp.named[d]) {
            set_err(err, -1, "%s", tmp.named_err[d]);
            chat_templates_free(&tmp);
            return -1;
        }
        ct->jinja = tmp.named[d];
        tmp.named[d] = NULL;
        chat_templates_free(&tmp);
        return 0;
    }
    cJSON_Delete(root);
    char cerr[ERR_LEN];
    int rc = jinja_compile(&ct->jinja, text, len, cerr);
    free(text);
    if (rc) return set_err(err, -1, "--chat-template %s: %s", path, cerr);
    return 0;
}

static void describe(struct chat_templates *ct, const char *fmt, const char *a, const char *b)
{
    char buf[512];
    snprintf(buf, sizeof buf, fmt, a, b);
    free(ct->source);
    ct->source = xstrdup(buf);
}

int chat_templates_load(struct chat_templates *ct, const char *model_dir, const char *flag, char *err)
{
    memset(ct, 0, sizeof *ct);
    ct->builtin = CHAT_TEMPLATE_PLAIN;
    ct->add_bos = -1;
    char path[4096];
    if (model_dir) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
        size_t len;
        char *text = is_file(path) ? read_all(path, &len, err) : NULL;
        if (is_file(path) && !text) goto fail;
        if (text) {
            cJSON *root = cJSON_ParseWithLength(text, len);
            free(text);
            if (!root || !cJSON_IsObject(root)) {
                cJSON_Delete(root);
                set_err(err, -1, "%s: not a JSON object", path);
                goto fail;
            }
            const cJSON *bos = cJSON_GetObjectItemCaseSensitive(root, "add_bos_token");
            if (cJSON_IsBool(bos)) ct->add_bos = cJSON_IsTrue(bos);
            ct->add_eos = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "add_eos_token"));
            char **toks[4] = {&ct->bos_token, &ct->eos_token, &ct->unk_token, &ct->pad_token};
            static const char *const keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
            for (int i = 0; i < 4; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
                *toks[i] = token_text(v);
                if (v) ct->tokens_set |= 1u << i; /* null counts: Qwen's bos_token null means none */
            }
            const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens_decoder"), *it;
            cJSON_ArrayForEach(it, added) {
                char *c = token_text(it);
                if (!c) continue;
                if (!*c || ct->n_added >= CHAT_MAX_ADDED) { free(c); continue; }
                ct->added = xrealloc(ct->added, sizeof *ct->added * (size_t)(ct->n_added + 1));
                ct->added[ct->n_added++] = c;
            }
            int rc = add_from_json(ct, cJSON_GetObjectItemCaseSensitive(root, "chat_template"), path, err);
            cJSON_Delete(root);
            if (rc) goto fail;
        }
        /* special_tokens_map.json's tokens win, as transformers loads it after tokenizer_config.json */
        snprintf(path, sizeof path, "%s/special_tokens_map.json", model_dir);
        if (is_file(path)) {
            size_t len;
            char *text = read_all(path, &len, err);
            if (!text) goto fail;
            cJSON *root = cJSON_ParseWithLength(text, len);
            free(text);
            if (!cJSON_IsObject(root)) {
                cJSON_Delete(root);
                set_err(err, -1, "%s: not a JSON object", path);
                goto fail;
            }
            char **toks[4] = {&ct->bos_token, &ct->eos_token, &ct->unk_token, &ct->pad_token};
            static const char *const keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
            for (int i = 0; i < 4; i++) {
                char *t = token_text(cJSON_GetObjectItemCaseSensitive(root, keys[i]));
                if (!t) continue;
                free(*toks[i]);
                *toks[i] = t;
                ct->tokens_set |= 1u << i;
            }
            cJSON_Delete(root);
        }
        /* transformers >= 4.43 may keep the template in its own file, which then wins */
        snprintf(path, sizeof path, "%s/chat_template.jinja", model_dir);
        if (is_file(path)) {
            size_t len;
            char *src = read_all(path, &len, err);
            if (!src) goto fail;
            int d = find_named(ct, "default");
            if (d >= 0) {
                jinja_free(ct->named[d]);
                free(ct->named_err[d]);
                ct->named[d] = NULL;
                ct->named_err[d] = NULL;
                char cerr[ERR_LEN];
                if (jinja_compile(&ct->named[d], src, len, cerr)) {
                    struct strbuf msg = {0};
                    sb_printf(&msg, "%s: %s", path, cerr);
                    ct->named_err[d] = msg.p;
                }
                free(ct->named_from[d]);
                ct->named_from[d] = xstrdup(path);
            } else {
                add_named(ct, "default", src, path);
            }
            free(src);
        }
    }
    if (flag) {
        int k = find_named(ct, flag);
        int b = chat_template_from_name(flag);
        if (k >= 0) {
            if (!ct->named[k]) {
                set_err(err, -1, "%s", ct->named_err[k]);
                goto fail;
            }
            ct->selected = k;
            describe(ct, "'%s' from %s (--chat-template)", flag, ct->named_from[k]);
        } else if (b >= 0) {
            ct->builtin = b;
            ct->selected = -1;
            ct->use_builtin = 1;
            describe(ct, "built-in %s (--chat-template%s)", chat_template_name(ct->builtin), "");
        } else if (is_file(flag)) {
            if (flag_file(ct, flag, err)) goto fail;
            ct->selected = -1;
            describe(ct, "%s (--chat-template)%s", flag, "");
        } else if (strstr(flag, "{{") || strstr(flag, "{%")) {
            char cerr[ERR_LEN];
            if (jinja_compile(&ct->jinja, flag, strlen(flag), cerr)) {
                set_err(err, -1, "--chat-template: %s", cerr);
                goto fail;
            }
            ct->selected = -1;
            describe(ct, "the template given to --chat-template%s%s", "", "");
        } else {
            struct strbuf names = {0};
            sb_append(&names, "", 0);
            for (int i = 0; i < ct->n_named; i++) sb_printf(&names, "%s, ", ct->names[i]);
            set_err(err, -1, "--chat-template %s: not a template of this checkpoint, a built-in (%sllama-2, chatml, "
                    "plain), a file, or a Jinja template", flag, names.p);
            sb_free(&names);
            goto fail;
        }
        return 0;
    }
    ct->selected = find_named(ct, "default");
    if (ct->selected < 0 && ct->n_named == 1) ct->selected = 0;
    if (ct->selected >= 0) {
        if (!ct->named[ct->selected]) {
            set_err(err, -1, "%s (serve with --chat-template chatml, llama-2, plain or a template file to use "
                    "another template)", ct->named_err[ct->selected]);
            goto fail;
        }
        describe(ct, "'%s' from %s", ct->names[ct->selected], ct->named_from[ct->selected]);
    } else {
        ct->use_builtin = 1;
        describe(ct, "built-in plain (no chat_template in %s/tokenizer_config.json)%s", model_dir ? model_dir : ".", "");
    }
    return 0;
fail:
    chat_templates_free(ct);
    return -1;
}

void chat_templates_free(struct chat_templates *ct)
{
    if (!ct) return;
    jinja_free(ct->jinja);
    for (int i = 0; i < ct->n_named; i++) {
        free(ct->names[i]);
        free(ct->named_from[i]);
        jinja_free(ct->named[i]);
        free(ct->named_err[i]);
    }
    for (int i = 0; i < ct->n_added; i++) free(ct->added[i]);
    free(ct->added);
    for (int i = 0; i < ct->n_markers; i++) free(ct->markers[i]);
    free(ct->markers);
    free(ct->marker_ids);
    free(ct->bos_token);
    free(ct->eos_token);
    free(ct->unk_token);
    free(ct->pad_token);
    free(ct->source);
    memset(ct, 0, sizeof *ct);
}

const char *chat_templates_describe(const struct chat_templates *ct)
{
    return ct->source ? ct->source : "built-in plain";
}

/* The template a request renders with: -2 built-in, -1 ct->jinja, else a named one. */
static int select_template(const struct chat_templates *ct, const struct oai_request *r, struct oai_error *e)
{
    if (r->chat_template) {
        int k = find_named(ct, r->chat_template);
        if (k < 0) {
            struct strbuf names = {0};
            sb_append(&names, "", 0);
            for (int i = 0; i < ct->n_named; i++) sb_printf(&names, "%s'%s'", i ? ", " : "", ct->names[i]);
            oai_err(e, 400, "chat_template", NULL, "'chat_template' must name one of this model's chat templates "
                    "(%s); template text in a request is not accepted", ct->n_named ? names.p : "it has none");
            sb_free(&names);
            return -3;
        }
        return k;
    }
    if (ct->use_builtin) return -2;
    if (ct->jinja) return -1;
    if (r->has_tools && ct->selected >= 0 && !strcmp(ct->names[ct->selected], "default")) {
        int k = find_named(ct, "tool_use"); /* transformers: tools pick "tool_use" when there is one */
        if (k >= 0) return k;
    }
    return ct->selected;
}

int chat_apply(const struct chat_templates *ct, const struct oai_request *r, const char *body, size_t len,
               int add_bos, char **out, struct oai_error *e)
{
    *out = NULL;
    int k = select_template(ct, r, e);
    if (k == -3) return -1;
    if (k == -2) {
        const char *field = r->has_tools ? "tools" : r->has_template_kwargs ? "chat_template_kwargs"
                            : !r->add_generation_prompt ? "add_generation_prompt"
                            : r->continue_final_message ? "continue_final_message" : NULL;
        if (field)
            return oai_err(e, 400, field, NULL, "'%s' needs the model's own chat template; the built-in %s template "
                           "renders plain text turns only", field, chat_template_name(ct->builtin));
        if (r->template_only_field[0])
            return oai_err(e, 400, "messages", NULL, "messages[%d].%s needs the model's own chat template; the "
                           "built-in %s template renders plain text turns only", r->template_only_msg,
                           r->template_only_field, chat_template_name(ct->builtin));
        return chat_render(ct->builtin, r->msgs, r->n_msgs, add_bos, out, e);
    }
    const jinja_tmpl_t *t = k == -1 ? ct->jinja : ct->named[k];
    if (!t) return oai_err(e, 400, r->chat_template ? "chat_template" : "messages", NULL, "%s", ct->named_err[k]);
    struct chat_template_args a = {
        .bos_token = ct->bos_token, .eos_token = ct->eos_token, .unk_token = ct->unk_token,
        .pad_token = ct->pad_token, .add_generation_prompt = r->add_generation_prompt,
        .continue_final_message = r->continue_final_message,
    };
    char err[ERR_LEN];
    size_t n;
    if (chat_template_render(t, body, len, &a, out, &n, err))
        return oai_err(e, 400, "messages", NULL, "%s", err);
    if (memchr(*out, 0, n)) {
        free(*out);
        *out = NULL;
        return oai_err(e, 400, "messages", NULL, "the chat template rendered a NUL character");
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Prompt text -> ids

static void add_marker(struct chat_templates *ct, const tokenizer_t *tok, const char *text)
{
    if (!text || !*text) return;
    int32_t id = tokenizer_piece_to_id(tok, text);
    if (id < 0) return;
    /* Text the tokenizer itself turns into this token (tokenizer.json's added tokens, with
     * Hugging Face's lstrip/rstrip/single_word rules; SentencePiece's control pieces) is left to
     * it, and so is a special token it is told to split (split_special_tokens): only a piece it
     * would not find (a SentencePiece piece that tokenizer_config.json adds) is a marker. With a
     * real tokenizer.json that leaves none, and a chat prompt is encoded in one call, exactly as
     * vLLM encodes it. */
    if (tokenizer_is_special(tok, id)) return;
    int32_t *one = NULL;
    char err[ERR_LEN];
    int m = tokenizer_encode(tok, text, strlen(text), 0, &one, err);
    int itself = m == 1 && one[0] == id;
    free(one);
    if (itself) return;
    for (int i = 0; i < ct->n_markers; i++)
        if (!strcmp(ct->markers[i], text)) return;
    ct->markers = xrealloc(ct->markers, sizeof *ct->markers * (size_t)(ct->n_markers + 1));
    ct->marker_ids = xrealloc(ct->marker_ids, sizeof *ct->marker_ids * (size_t)(ct->n_markers + 1));
    ct->markers[ct->n_markers] = xstrdup(text);
    ct->marker_ids[ct->n_markers] = id;
    ct->n_markers++;
}

static int by_length_desc(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

void chat_templates_set_tokenizer(struct chat_templates *ct, const tokenizer_t *tok)
{
    /* tokens neither config names (not even as null): the tokenizer's own, as a slow LLaMA
     * tokenizer defaults to "<s>" / "</s>" / "<unk>" */
    char **toks[4] = {&ct->bos_token, &ct->eos_token, &ct->unk_token, &ct->pad_token};
    int ids[4] = {tokenizer_bos_id(tok), tokenizer_eos_id(tok), tokenizer_unk_id(tok), tokenizer_pad_id(tok)};
    for (int i = 0; i < 4; i++) {
        const char *piece = ids[i] >= 0 ? tokenizer_id_to_piece(tok, ids[i]) : NULL;
        if (!(ct->tokens_set & (1u << i)) && !*toks[i] && piece) *toks[i] = xstrdup(piece);
    }
    /* tokenizer_config.json's tokens: special ones and those of a tokenizer.json the tokenizer
     * finds itself (add_marker); a piece that merely exists in the vocabulary ("</s>" in Qwen's)
     * is no token in text, as in Hugging Face's tokenizers */
    for (int i = 0; i < ct->n_added; i++) add_marker(ct, tok, ct->added[i]);
    for (int i = 0; i < 4; i++) add_marker(ct, tok, *toks[i]);
    /* longest first: where two markers start at the same place the longer one wins */
    char **m = xmalloc(sizeof *m * (size_t)(ct->n_markers + 1));
    if (ct->n_markers) memcpy(m, ct->markers, sizeof *m * (size_t)ct->n_markers); /* NULL when none */
    qsort(m, (size_t)ct->n_markers, sizeof *m, by_length_desc);
    for (int i = 0; i < ct->n_markers; i++) {
        ct->markers[i] = m[i];
        ct->marker_ids[i] = tokenizer_piece_to_id(tok, m[i]);
    }
    free(m);
    memset(ct->first_byte, 0, sizeof ct->first_byte);
    for (int i = 0; i < ct->n_markers; i++) ct->first_byte[(unsigned char)ct->markers[i][0]] = 1;
}

int chat_encode(const struct chat_templates *ct, const tokenizer_t *tok, const char *text, int32_t **ids,
                struct oai_error *e)
{
    int32_t *out = NULL;
    int n = 0, cap = 0;
    char err[ERR_LEN];
    const char *seg = text, *p = text;
    for (;;) {
        /* the next marker: one pass over the text, markers tried only where their first byte is */
        int hit = -1;
        for (; *p; p++) {
            if (!ct->first_byte[(unsigned char)*p]) continue;
            for (int k = 0; k < ct->n_markers && hit < 0; k++)
                if (ct->markers[k][0] == *p && !strncmp(p, ct->markers[k], strlen(ct->markers[k]))) hit = k;
            if (hit >= 0) break;
        }
        size_t len = (size_t)(p - seg);
        if (len) {
            int32_t *part = NULL;
            int m = tokenizer_encode(tok, seg, len, 0, &part, err);
            if (m < 0) {
                free(out);
                return oai_err(e, 400, "messages", NULL, "could not tokenize the messages: %s", err);
            }
            if (n + m + 1 > cap) {
                cap = (n + m + 1) * 2 + 16;
                out = xrealloc(out, sizeof(int32_t) * (size_t)cap);
            }
            memcpy(out + n, part, sizeof(int32_t) * (size_t)m);
            n += m;
            free(part);
        }
        if (hit < 0) break;
        if (n + 1 > cap) {
            cap = n * 2 + 16;
            out = xrealloc(out, sizeof(int32_t) * (size_t)cap);
        }
        out[n++] = ct->marker_ids[hit];
        p += strlen(ct->markers[hit]);
        seg = p;
    }
    *ids = out ? out : xmalloc(sizeof(int32_t));
    return n;
}
