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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef SECOND
#define NAME "c-xlate2"
#define TAG "B"
#else
#define NAME "c-xlate"
#define TAG "A"
#endif
typedef struct { void* ptr; size_t len; } cliproxy_buffer;
typedef struct {
    uint32_t abi_version;
    void* host_ctx;
    int (*call)(void* host_ctx, const char* method, const uint8_t* request, size_t request_len,
                cliproxy_buffer* response);
    void (*free_buffer)(void* ptr, size_t len);
} cliproxy_host_api;
typedef struct {
    uint32_t abi_version;
    int (*call)(const char* method, const uint8_t* request, size_t request_len,
                cliproxy_buffer* response);
    void (*free_buffer)(void* ptr, size_t len);
    void (*shutdown)(void);
} cliproxy_plugin_api;

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char* b64_encode(const char* in, size_t n) {
    char* out = malloc(4 * ((n + 2) / 3) + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint8_t)in[i] << 16;
        if (i + 1 < n) v |= (uint8_t)in[i + 1] << 8;
        if (i + 2 < n) v |= (uint8_t)in[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = 0;
    return out;
}

static char* b64_decode(const char* in, size_t n, size_t* out_len) {
    char* out = malloc(n * 3 / 4 + 4);
    uint32_t v = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char* p = strchr(B64, in[i]);
        if (in[i] == '=' || p == NULL || in[i] == 0) break;
        v = (v << 6) | (uint32_t)(p - B64);
        bits += 6;
        if (bits >= 8) { bits -= 8; out[o++] = (char)((v >> bits) & 0xff); }
    }
    out[o] = 0;
    *out_len = o;
    return out;
}

/* Where "key": starts its value in json, or NULL. */
static const char* find_value(const char* json, size_t n, const char* key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    size_t plen = strlen(pat);
    for (const char* p = json; p + plen <= json + n; p++)
        if (memcmp(p, pat, plen) == 0) return p + plen;
    return NULL;
}

static char* find_string(const char* json, size_t n, const char* key) {
    const char* p = find_value(json, n, key);
    if (p == NULL || *p != '"') return NULL;
    p++;
    const char* q = p;
    while (q < json + n && *q != '"') q++;
    char* out = malloc((size_t)(q - p) + 1);
    memcpy(out, p, (size_t)(q - p));
    out[q - p] = 0;
    return out;
}

static long find_long(const char* json, size_t n, const char* key) {
    const char* p = find_value(json, n, key);
    return p ? strtol(p, NULL, 10) : 0;
}

/* The base64 field `key` decoded ("" when absent or null). */
static char* find_bytes(const char* json, size_t n, const char* key) {
    char* b64 = find_string(json, n, key);
    size_t len;
    char* out = b64 ? b64_decode(b64, strlen(b64), &len) : strdup("");
    free(b64);
    return out;
}

/* s with every `from` replaced by `to` (a new string). */
static char* replace(const char* s, const char* from, const char* to) {
    size_t fl = strlen(from), tl = strlen(to), count = 0;
    for (const char* p = strstr(s, from); p; p = strstr(p + fl, from)) count++;
    char* out = malloc(strlen(s) + count * (tl > fl ? tl - fl : 0) + 1);
    char* o = out;
    for (const char* p = s;;) {
        const char* q = strstr(p, from);
        if (q == NULL) { strcpy(o, p); break; }
        memcpy(o, p, (size_t)(q - p)); o += q - p;
        memcpy(o, to, tl); o += tl;
        p = q + fl;
    }
    return out;
}

static void event(const char* line) {
    const char* path = getenv("NATIVE_TEST_EVENTS");
    FILE* f = path ? fopen(path, "a") : NULL;
    if (f == NULL) return;
    fprintf(f, "%s\n", line);
    fclose(f);
}

static int reply(cliproxy_buffer* response, const char* text) {
    size_t n = strlen(text);
    char* buf = malloc(n);
    memcpy(buf, text, n);
    response->ptr = buf;
    response->len = n;
    return 0;
}

static int ok_reply(cliproxy_buffer* response, const char* result) {
    size_t n = strlen(result) + 32;
    char* text = malloc(n);
    snprintf(text, n, "{\"ok\":true,\"result\":%s}", result);
    reply(response, text);
    free(text);
    return 0;
}

/* {"<key>":"<base64 of text>"<extra>} as a success envelope. */
static int ok_bytes(cliproxy_buffer* response, const char* key, const char* text,
                    const char* extra) {
    char* b = b64_encode(text, strlen(text));
    size_t n = strlen(b) + strlen(extra) + 64;
    char* result = malloc(n);
    snprintf(result, n, "{\"%s\":\"%s\"%s}", key, b, extra);
    ok_reply(response, result);
    free(result); free(b);
    return 0;
}

static char* json_escape(const char* s) {
    size_t n = strlen(s);
    char* out = malloc(n * 6 + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { out[o++] = '\\'; out[o++] = (char)c; }
        else if (c < 0x20) o += (size_t)sprintf(out + o, "\\u%04x", c);
        else out[o++] = (char)c;
    }
    out[o] = 0;
    return out;
}

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
            snprintf(out, cap, "data: {\"id\":\"x1\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1,\"model\":\"c-lines\",\"choices\":[{\"index\":0,\"delta\":"
                     "{\"content\":\"%s\"},\"finish_reason\":null}]}\n\n", esc);
        else
            snprintf(out, cap, "data: {\"id\":\"x1\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1,\"model\":\"c-lines\",\"choices\":[{\"index\":0,\"delta\":"
                     "{\"content\":\" [by " TAG "]\"},\"finish_reason\":null}]}\n\n"
                     "data: {\"id\":\"x1\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1,\"model\":\"c-lines\",\"choices\":[{\"index\":0,\"delta\":"
                     "{},\"finish_reason\":\"stop\"}]}\n\n");
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

static int plugin_call(const char* method, const uint8_t* request, size_t request_len,
                       cliproxy_buffer* response) {
    response->ptr = NULL;
    response->len = 0;
    if (method == NULL) return 1;
    const char* req = request ? (const char*)request : "";
    size_t n = request_len;
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":3,\"metadata\":{\"Name\":\"" NAME "\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/" NAME
            "\",\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"request_translator\":true,"
            "\"request_normalizer\":true,\"response_translator\":true,"
            "\"response_before_translator\":true,\"response_after_translator\":true,"
            "\"thinking_applier\":true}}");
    if (strcmp(method, "request.translate") == 0) return translate_request(req, n, response);
    if (strcmp(method, "response.translate") == 0) return translate_response(req, n, response);
    if (strcmp(method, "request.normalize") == 0) {
        record("normalize", req, n);
#ifdef SECOND
        return rewrite(req, n, response, "norm-A", "norm-A-B");
#else
        return rewrite(req, n, response, "norm-me", "norm-A");
#endif
    }
    if (strcmp(method, "response.normalize_before") == 0) {
        record("before", req, n);
#ifdef SECOND
        return rewrite(req, n, response, "markA", "markAB");
#else
        return rewrite(req, n, response, "mark", "markA");
#endif
    }
    if (strcmp(method, "response.normalize_after") == 0) {
        record("after", req, n);
#ifdef SECOND
        return rewrite(req, n, response, "markABa", "markABab");
#else
        return rewrite(req, n, response, "markAB", "markABa");
#endif
    }
    if (strcmp(method, "thinking.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"c-gemini\"}");
    if (strcmp(method, "thinking.apply") == 0) return thinking_apply(req, n, response);
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"unknown_method\","
                           "\"message\":\"unknown method\"}}");
}

static void plugin_free(void* ptr, size_t len) { (void)len; free(ptr); }

__attribute__((visibility("default")))
int cliproxy_plugin_init(const cliproxy_host_api* h, cliproxy_plugin_api* plugin) {
    (void)h;
    plugin->abi_version = 1;
    plugin->call = plugin_call;
    plugin->free_buffer = plugin_free;
    plugin->shutdown = NULL;
    return 0;
}
