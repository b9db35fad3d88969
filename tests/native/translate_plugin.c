/* A CLIProxyAPI-ABI translator plugin for aogstream's translation tests (C, libc only;
 * request fields found by plain text search, as CPA's example plugins do).
 *
 * It declares request_translator, request_normalizer, response_translator,
 * response_before_translator, response_after_translator and thinking_applier. Built plain
 * it is the plugin c-xlate (tag A); built with -DSECOND it is c-xlate2 (tag B). Both:
 *   - request.normalize: A turns "norm-me" into "norm-A", B turns "norm-A" into "norm-A-B"
 *     (so the text tells the chain's order);
 *   - response.normalize_before: A turns "mark" into "markA", B "markA" into "markAB";
 *     response.normalize_after: A turns "markAB" into "markABa", B "markABa" into "markABab";
 *   - request.translate: A declines every pair (an empty Body: not handled); B turns a chat
 *     request into an `x-lines` request {"line":"<the user's content>","stream":<bool>};
 *   - response.translate from `x-lines`: A turns {"text":"..."} into a chat completion whose
 *     content is "<text> [by A]", and a stream chunk {"piece":"..."} into a `data:` frame of
 *     a chat chunk ({"done":true} into the finish chunk); B would do the same with "[by B]";
 *   - thinking.identifier: "c-gemini" (both); thinking.apply turns "think-about-it" into
 *     "thought-applied-<tag>".
 * Events go, one line each, to the file named by NATIVE_TEST_EVENTS:
 *   "<tag> <method> <FromFormat>-><ToFormat> stream=<0|1>" for every translate/normalize
 *   call, and "<tag> thinking provider=<Provider> model=<Model.ID> mode=<Mode>
 *   level=<Level> budget=<Budget>".
 */
#include "cliproxy_plugin.h"

#ifdef SECOND
#define NAME "c-xlate2"
#define TAG "B"
#else
#define NAME "c-xlate"
#define TAG "A"
#endif

/* ---- methods ----------------------------------------------------------------------- */

static void record(const char* method, const char* req, size_t n) {
    char* from = find_string(req, n, "FromFormat");
    char* to = find_string(req, n, "ToFormat");
    char line[256];
    snprintf(line, sizeof line, "%s %s %s->%s stream=%d", TAG, method, from ? from : "",
             to ? to : "", strstr(req, "\"Stream\":true") != NULL);
    event(line);
    free(from); free(to);
}

/* Body with `from` replaced by `to` as the answer (null Body: unchanged). */
static int rewrite(const char* req, size_t n, cliproxy_buffer* response, const char* from,
                   const char* to) {
    char* body = find_bytes(req, n, "Body");
    int rc;
    if (strstr(body, from)) {
        char* fresh = replace(body, from, to);
        rc = ok_bytes(response, "Body", fresh, "");
        free(fresh);
    } else {
        rc = ok_reply(response, "{\"Body\":null}");
    }
    free(body);
    return rc;
}

static int translate_request(const char* req, size_t n, cliproxy_buffer* response) {
    record("translate", req, n);
#ifdef SECOND
    char* to = find_string(req, n, "ToFormat");
    int lines = to && strcmp(to, "x-lines") == 0;
    free(to);
    if (lines) {
        char* body = find_bytes(req, n, "Body");
        const char* user = strstr(body, "\"role\":\"user\"");  /* the user's text */
        char* content = find_string(user ? user : body, strlen(user ? user : body),
                                    "content");
        char* esc = json_escape(content ? content : "");
        size_t cap = strlen(esc) + 64;
        char* out = malloc(cap);
        snprintf(out, cap, "{\"line\":\"%s\",\"stream\":%s}", esc,
                 strstr(req, "\"Stream\":true") ? "true" : "false");
        int rc = ok_bytes(response, "Body", out, "");
        free(out); free(esc); free(content); free(body);
        return rc;
    }
#endif
    return ok_reply(response, "{\"Body\":null}");  /* not handled */
}

/* A `data:` frame of a chat completion chunk with this delta and finish_reason. */
#define CHAT_CHUNK(delta, finish)                                                       \
    "data: {\"id\":\"x1\",\"object\":\"chat.completion.chunk\",\"created\":1,"           \
    "\"model\":\"c-lines\",\"choices\":[{\"index\":0,\"delta\":" delta ","              \
    "\"finish_reason\":" finish "}]}\n\n"

static int translate_response(const char* req, size_t n, cliproxy_buffer* response) {
    record("rtranslate", req, n);
    char* from = find_string(req, n, "FromFormat");
    int lines = from && strcmp(from, "x-lines") == 0;
    free(from);
    if (!lines) return ok_reply(response, "{\"Body\":null}");
    char* body = find_bytes(req, n, "Body");
    char* out = NULL;
    size_t cap;
    if (strstr(req, "\"Stream\":true")) {
        char* piece = find_string(body, strlen(body), "piece");
        char* esc = json_escape(piece ? piece : "");
        cap = strlen(esc) + 512;
        out = malloc(cap);
        if (piece)
            snprintf(out, cap, CHAT_CHUNK("{\"content\":\"%s\"}", "null"), esc);
        else
            snprintf(out, cap, CHAT_CHUNK("{\"content\":\" [by " TAG "]\"}", "null")
                               CHAT_CHUNK("{}", "\"stop\""));
        free(piece); free(esc);
    } else {
        char* text = find_string(body, strlen(body), "text");
        char* esc = json_escape(text ? text : "");
        cap = strlen(esc) + 512;
        out = malloc(cap);
        snprintf(out, cap, "{\"id\":\"x1\",\"object\":\"chat.completion\",\"created\":1,"
                 "\"model\":\"c-lines\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                 "\"assistant\",\"content\":\"%s [by " TAG "]\"},\"finish_reason\":\"stop\"}],"
                 "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}",
                 esc);
        free(text); free(esc);
    }
    int rc = ok_bytes(response, "Body", out, "");
    free(out); free(body);
    return rc;
}

static int thinking_apply(const char* req, size_t n, cliproxy_buffer* response) {
    char* provider = find_string(req, n, "Provider");
    char* id = find_string(req, n, "ID");
    char* mode = find_string(req, n, "Mode");
    char* level = find_string(req, n, "Level");
    char line[512];
    snprintf(line, sizeof line, "%s thinking provider=%s model=%s mode=%s level=%s budget=%ld",
             TAG, provider ? provider : "", id ? id : "", mode ? mode : "",
             level ? level : "", find_long(req, n, "Budget"));
    event(line);
    free(provider); free(id); free(mode); free(level);
    return rewrite(req, n, response, "think-about-it", "thought-applied-" TAG);
}

/* The normalizer hooks: each method's event name and the text it rewrites in the Body. */
static const struct { const char* method; const char* event; const char* from; const char* to; }
NORMALIZERS[] = {
#ifdef SECOND
    {"request.normalize", "normalize", "norm-A", "norm-A-B"},
    {"response.normalize_before", "before", "markA", "markAB"},
    {"response.normalize_after", "after", "markABa", "markABab"},
#else
    {"request.normalize", "normalize", "norm-me", "norm-A"},
    {"response.normalize_before", "before", "mark", "markA"},
    {"response.normalize_after", "after", "markAB", "markABa"},
#endif
};

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
    if (is_registration(method))
        return ok_reply(response, CLIPROXY_REGISTRATION(3, NAME,
            "\"request_translator\":true,\"request_normalizer\":true,"
            "\"response_translator\":true,\"response_before_translator\":true,"
            "\"response_after_translator\":true,\"thinking_applier\":true"));
    if (strcmp(method, "request.translate") == 0) return translate_request(req, n, response);
    if (strcmp(method, "response.translate") == 0) return translate_response(req, n, response);
    for (size_t i = 0; i < sizeof NORMALIZERS / sizeof NORMALIZERS[0]; i++)
        if (strcmp(method, NORMALIZERS[i].method) == 0) {
            record(NORMALIZERS[i].event, req, n);
            return rewrite(req, n, response, NORMALIZERS[i].from, NORMALIZERS[i].to);
        }
    if (strcmp(method, "thinking.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"c-gemini\"}");
    if (strcmp(method, "thinking.apply") == 0) return thinking_apply(req, n, response);
    return unknown_method(response);
}
