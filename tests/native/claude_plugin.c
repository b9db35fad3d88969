/* A CLIProxyAPI-ABI executor plugin that speaks only Anthropic Messages (format
 * `claude`), for aogstream's format-negotiation tests (C, libc only; request fields found by
 * plain text search).
 *
 * It declares a model provider (model c-claude, provider c-claude) and an executor whose
 * input and output formats are ["anthropic"] (CPA's alias of `claude`):
 *   - executor.execute answers an Anthropic `message` whose text is
 *     "claude saw: <first text block> | system: <system>" when the Payload it got is an
 *     Anthropic request (it has "max_tokens" and "messages"); else an error with
 *     http_status 400 saying it wants an Anthropic request;
 *   - executor.execute_stream answers the same text as Anthropic SSE events in `chunks`
 *     (message_start, a text block in two deltas, message_delta with stop_reason and
 *     usage, message_stop; two events share one chunk, as a network read may);
 *   - executor.count_tokens answers {"input_tokens": 1000 + <length of the first text>}
 *     for an Anthropic request (so a test tells it from the gateway's estimate).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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


static char* first_text(const char* payload) {
    char* t = find_string(payload, strlen(payload), "text");
    return t ? t : strdup("");
}

static int is_claude(const char* payload) {
    return strstr(payload, "\"max_tokens\":") != NULL && strstr(payload, "\"messages\":") != NULL;
}

static int not_claude(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"bad_format\",\"message\":"
                           "\"c-claude wants an Anthropic Messages request\",\"http_status\":400}}");
}

static char* said(const char* payload) {
    char* text = first_text(payload);
    char* sys = find_string(payload, strlen(payload), "system");
    size_t cap = strlen(text) + (sys ? strlen(sys) : 0) + 64;
    char* out = malloc(cap);
    snprintf(out, cap, "claude saw: %s | system: %s", text, sys ? sys : "none");
    free(text); free(sys);
    return out;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    if (!is_claude(payload)) { free(payload); return not_claude(response); }
    char* text = said(payload);
    char* esc = json_escape(text);
    size_t cap = strlen(esc) + 400;
    char* body = malloc(cap);
    snprintf(body, cap,
             "{\"id\":\"msg_c1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c-claude\","
             "\"content\":[{\"type\":\"text\",\"text\":\"%s\"}],\"stop_reason\":\"end_turn\","
             "\"stop_sequence\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":5}}", esc);
    int rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    free(body); free(esc); free(text); free(payload);
    return rc;
}

/* {"Payload":"<b64>"} for one chunk. */
static char* chunk(const char* text) {
    char* b = b64_encode(text, strlen(text));
    size_t cap = strlen(b) + 32;
    char* out = malloc(cap);
    snprintf(out, cap, "{\"Payload\":\"%s\"}", b);
    free(b);
    return out;
}

static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    if (!is_claude(payload) || strstr(payload, "\"stream\":true") == NULL) {
        free(payload);
        return not_claude(response);
    }
    char* text = said(payload);
    size_t half = strlen(text) / 2;
    char* esc1;
    char* esc2;
    { char c = text[half]; text[half] = 0; esc1 = json_escape(text); text[half] = c;
      esc2 = json_escape(text + half); }
    size_t cap = strlen(esc1) + strlen(esc2) + 2048;
    char* ev[4];
    char* buf = malloc(cap);
    snprintf(buf, cap,
             "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_s1\","
             "\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c-claude\",\"content\":[],"
             "\"stop_reason\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":0}}}\n\n"
             "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
             "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    ev[0] = chunk(buf);
    snprintf(buf, cap, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
             "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n", esc1);
    ev[1] = chunk(buf);
    snprintf(buf, cap, "event: ping\ndata: {\"type\":\"ping\"}\n\n"
             "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
             "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n"
             "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
             esc2);
    ev[2] = chunk(buf);
    snprintf(buf, cap, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
             "{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}"
             "\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    ev[3] = chunk(buf);
    size_t total = 64;
    for (int i = 0; i < 4; i++) total += strlen(ev[i]) + 1;
    char* result = malloc(total);
    snprintf(result, total, "{\"headers\":null,\"chunks\":[%s,%s,%s,%s]}", ev[0], ev[1], ev[2], ev[3]);
    int rc = ok_reply(response, result);
    for (int i = 0; i < 4; i++) free(ev[i]);
    free(result); free(buf); free(esc1); free(esc2); free(text); free(payload);
    return rc;
}

static int count_tokens(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    if (!is_claude(payload) && strstr(payload, "\"messages\":") == NULL) {
        free(payload);
        return not_claude(response);
    }
    char* text = first_text(payload);
    char body[64];
    snprintf(body, sizeof body, "{\"input_tokens\":%zu}", 1000 + strlen(text));
    free(text); free(payload);
    return ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
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
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"c-claude\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-claude\","
            "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_provider\":true,"
            "\"executor\":true,\"executor_input_formats\":[\"anthropic\"],"
            "\"executor_output_formats\":[\"anthropic\"]}}");
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"c-claude\",\"Models\":[{\"ID\":\"c-claude\"}],"
                                  "\"AuthUpdate\":null}");
    if (strcmp(method, "executor.execute") == 0) return execute(req, n, response);
    if (strcmp(method, "executor.execute_stream") == 0) return execute_stream(req, n, response);
    if (strcmp(method, "executor.count_tokens") == 0) return count_tokens(req, n, response);
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
