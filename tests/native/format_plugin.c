/* CLIProxyAPI-ABI executor plugins that speak formats other than `openai`, for
 * aogstream's translation tests (C, libc only; request fields found by plain text search).
 *
 * Built plain it is c-lines: a model provider (model c-lines, provider c-lines) and an
 * executor whose only input and output format is `x-lines`, a format no translator of the
 * gateway knows:
 *   - executor.execute wants {"line":"<text>",...} and answers {"text":"lines saw: <text>
 *     mark"}; anything else is refused with http_status 400;
 *   - executor.execute_stream answers the chunks {"piece":"lines saw: "},
 *     {"piece":"<text> mark"} and {"done":true};
 *   - it also declares a thinking applier for provider "gemini", a name the host keeps for
 *     itself (so thinking.apply must never reach it: it records "lines thinking").
 * Built with -DGEMINI it is c-gemini: model c-gemini, provider c-gemini, an executor that
 * speaks only `gemini` (Gemini generateContent):
 *   - executor.execute wants a Gemini request ("contents") and answers a
 *     GenerateContentResponse whose text is "gemini saw: <first text> | system: <system
 *     instruction text> mark", with usageMetadata 6 / 4;
 *   - executor.execute_stream answers the same text as `data:` frames of partial
 *     responses (two text parts, then finishReason STOP with usageMetadata);
 *   - it records "gemini payload source=<SourceFormat> format=<Format> <the Payload it
 *     got>" for each call.
 * Built with -DOTHER it is c-other: c-lines under another name and format (`x-other`),
 * which no test translator handles.
 * Events go, one line each, to the file named by NATIVE_TEST_EVENTS.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GEMINI
#define NAME "c-gemini"
#define FORMAT "gemini"
#elif defined(OTHER)
#define NAME "c-other"
#define FORMAT "x-other"
#else
#define NAME "c-lines"
#define FORMAT "x-lines"
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

/* The base64 field `key` decoded ("" when absent or null). */
static char* find_bytes(const char* json, size_t n, const char* key) {
    char* b64 = find_string(json, n, key);
    size_t len;
    char* out = b64 ? b64_decode(b64, strlen(b64), &len) : strdup("");
    free(b64);
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

static int refuse(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"bad_format\",\"message\":\""
                           NAME " wants an " FORMAT " request\",\"http_status\":400}}");
}

/* {"Payload":"<b64>"} for one stream chunk. */
static char* chunk(const char* text) {
    char* b = b64_encode(text, strlen(text));
    size_t cap = strlen(b) + 32;
    char* out = malloc(cap);
    snprintf(out, cap, "{\"Payload\":\"%s\"}", b);
    free(b);
    return out;
}

static int chunks3(cliproxy_buffer* response, const char* a, const char* b, const char* c) {
    char* ev[3] = {chunk(a), chunk(b), chunk(c)};
    size_t total = strlen(ev[0]) + strlen(ev[1]) + strlen(ev[2]) + 64;
    char* result = malloc(total);
    snprintf(result, total, "{\"headers\":null,\"chunks\":[%s,%s,%s]}", ev[0], ev[1], ev[2]);
    int rc = ok_reply(response, result);
    for (int i = 0; i < 3; i++) free(ev[i]);
    free(result);
    return rc;
}

#ifdef GEMINI
/* "gemini saw: <first text> | system: <system text> mark" for a Gemini request, or NULL. */
static char* said(const char* payload) {
    if (strstr(payload, "\"contents\":") == NULL) return NULL;
    char* text = find_string(payload, strlen(payload), "text");
    const char* sys_at = strstr(payload, "\"systemInstruction\":");
    char* sys = sys_at ? find_string(sys_at, strlen(sys_at), "text") : NULL;
    size_t cap = (text ? strlen(text) : 0) + (sys ? strlen(sys) : 0) + 64;
    char* out = malloc(cap);
    snprintf(out, cap, "gemini saw: %s | system: %s mark", text ? text : "",
             sys ? sys : "none");
    free(text); free(sys);
    return out;
}

static void record_payload(const char* req, size_t n, const char* payload) {
    char* source = find_string(req, n, "SourceFormat");
    char* format = find_string(req, n, "Format");
    size_t cap = strlen(payload) + 128;
    char* line = malloc(cap);
    snprintf(line, cap, "gemini payload source=%s format=%s %s", source ? source : "",
             format ? format : "", payload);
    event(line);
    free(line); free(source); free(format);
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    record_payload(req, n, payload);
    char* text = said(payload);
    free(payload);
    if (text == NULL) return refuse(response);
    char* esc = json_escape(text);
    size_t cap = strlen(esc) + 512;
    char* body = malloc(cap);
    snprintf(body, cap, "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":"
             "\"%s\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":"
             "{\"promptTokenCount\":6,\"candidatesTokenCount\":4,\"totalTokenCount\":10},"
             "\"modelVersion\":\"c-gemini\",\"responseId\":\"g1\"}", esc);
    int rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    free(body); free(esc); free(text);
    return rc;
}

static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    record_payload(req, n, payload);
    char* text = said(payload);
    free(payload);
    if (text == NULL) return refuse(response);
    size_t half = strlen(text) / 2;
    char c = text[half];
    text[half] = 0;
    char* esc1 = json_escape(text);
    text[half] = c;
    char* esc2 = json_escape(text + half);
    size_t cap = strlen(esc1) + strlen(esc2) + 512;
    char* a = malloc(cap);
    char* b = malloc(cap);
    snprintf(a, cap, "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":"
             "[{\"text\":\"%s\"}]},\"index\":0}],\"modelVersion\":\"c-gemini\"}\n\n", esc1);
    snprintf(b, cap, "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":"
             "[{\"text\":\"%s\"}]},\"index\":0}],\"modelVersion\":\"c-gemini\"}\n\n", esc2);
    int rc = chunks3(response, a, b,
                     "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[]},"
                     "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":"
                     "{\"promptTokenCount\":6,\"candidatesTokenCount\":4,\"totalTokenCount\":10},"
                     "\"modelVersion\":\"c-gemini\"}\n\n");
    free(a); free(b); free(esc1); free(esc2); free(text);
    return rc;
}
#else
static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    char* line = find_string(payload, strlen(payload), "line");
    free(payload);
    if (line == NULL) return refuse(response);
    char* esc = json_escape(line);
    size_t cap = strlen(esc) + 64;
    char* body = malloc(cap);
    snprintf(body, cap, "{\"text\":\"lines saw: %s mark\"}", esc);
    int rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    free(body); free(esc); free(line);
    return rc;
}

static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    char* line = find_string(payload, strlen(payload), "line");
    free(payload);
    if (line == NULL) return refuse(response);
    char* esc = json_escape(line);
    size_t cap = strlen(esc) + 64;
    char* piece = malloc(cap);
    snprintf(piece, cap, "{\"piece\":\"%s mark\"}", esc);
    int rc = chunks3(response, "{\"piece\":\"lines saw: \"}", piece, "{\"done\":true}");
    free(piece); free(esc); free(line);
    return rc;
}
#endif

static int plugin_call(const char* method, const uint8_t* request, size_t request_len,
                       cliproxy_buffer* response) {
    response->ptr = NULL;
    response->len = 0;
    if (method == NULL) return 1;
    const char* req = request ? (const char*)request : "";
    size_t n = request_len;
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"" NAME "\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/" NAME
            "\",\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_provider\":true,"
            "\"executor\":true,\"executor_input_formats\":[\"" FORMAT "\"],"
            "\"executor_output_formats\":[\"" FORMAT "\"]"
#ifndef GEMINI
            ",\"thinking_applier\":true"
#endif
            "}}");
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"" NAME "\",\"Models\":[{\"ID\":\"" NAME
                                  "\"}],\"AuthUpdate\":null}");
    if (strcmp(method, "executor.execute") == 0) return execute(req, n, response);
    if (strcmp(method, "executor.execute_stream") == 0) return execute_stream(req, n, response);
#ifndef GEMINI
    if (strcmp(method, "thinking.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"gemini\"}");
    if (strcmp(method, "thinking.apply") == 0) {
        event("lines thinking");
        return ok_reply(response, "{\"Body\":null}");
    }
#endif
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
