/* The CLIProxyAPI C ABI boilerplate every C plugin of aogstream's tests (the .c files here)
 * and the benchmarks' native relay (benchmarks/native_relay) would otherwise repeat: the
 * ABI's types, the exported init, the call entry point, answer buffers and their free,
 * base64, and the plain-text JSON field search CPA's own C examples use (no unescaping,
 * no whitespace after the colon: the host writes compact JSON). Header-only, C, libc
 * only: each plugin is one translation unit that includes it once.
 *
 * A plugin defines
 *     static int plugin_dispatch(const char* method, const char* req, size_t n,
 *                                cliproxy_buffer* response);
 * which answers its methods (`req` is never NULL) and ends with `return unknown_method(response);`.
 * Knobs, defined before the include:
 *   CLIPROXY_SHUTDOWN   the plugin's shutdown function (default: none);
 *   CLIPROXY_ON_INIT    a statement run first in the init (after `host` is set);
 *   CLIPROXY_OWN_INIT   the plugin exports its own init (the load-failure variants);
 *   CLIPROXY_OWN_BUFFERS the plugin defines reply() and plugin_free() itself (to check
 *                        that the host frees the very pointer and length it was given).
 */
#ifndef AOGSTREAM_CLIPROXY_PLUGIN_H
#define AOGSTREAM_CLIPROXY_PLUGIN_H

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

/* Helpers a plugin may leave unused without a warning. */
#define CLIPROXY_HELPER static __attribute__((unused))

static const cliproxy_host_api* host;  /* set by the init */

CLIPROXY_HELPER char* b64_encode(const char* in, size_t n);
static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response);
static int reply(cliproxy_buffer* response, const char* text);
static void plugin_free(void* ptr, size_t len);

/* ---- answers ------------------------------------------------------------------------ */

#ifndef CLIPROXY_OWN_BUFFERS
/* A copy of text as the answer (freed by plugin_free when the host hands it back). */
static int reply(cliproxy_buffer* response, const char* text) {
    size_t n = strlen(text);
    char* buf = malloc(n);
    memcpy(buf, text, n);
    response->ptr = buf;
    response->len = n;
    return 0;
}

static void plugin_free(void* ptr, size_t len) { (void)len; free(ptr); }
#endif

/* {"ok":true,"result":<result>} */
CLIPROXY_HELPER int ok_reply(cliproxy_buffer* response, const char* result) {
    size_t n = strlen(result) + 32;
    char* text = malloc(n);
    int k = snprintf(text, n, "{\"ok\":true,\"result\":%s}", result);
#ifdef CLIPROXY_OWN_BUFFERS
    (void)k;
    reply(response, text);
    free(text);
#else
    response->ptr = text;  /* handed over as is: no second copy */
    response->len = (size_t)k;
#endif
    return 0;
}

/* {"<key>":"<base64 of text>"<extra>} as a success envelope. */
CLIPROXY_HELPER int ok_bytes(cliproxy_buffer* response, const char* key, const char* text,
                             const char* extra) {
    char* b = b64_encode(text, strlen(text));
    size_t n = strlen(b) + strlen(extra) + 64;
    char* result = malloc(n);
    snprintf(result, n, "{\"%s\":\"%s\"%s}", key, b, extra);
    ok_reply(response, result);
    free(result); free(b);
    return 0;
}

CLIPROXY_HELPER int unknown_method(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"unknown_method\","
                           "\"message\":\"unknown method\"}}");
}

/* ---- base64 --------------------------------------------------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

CLIPROXY_HELPER char* b64_encode(const char* in, size_t n) {
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

/* The decoded bytes (malloc'd, NUL-terminated); *out_len is their count. */
CLIPROXY_HELPER char* b64_decode(const char* in, size_t n, size_t* out_len) {
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

/* ---- JSON fields, by plain text search --------------------------------------------- */

/* Where "key": starts its value in json, or NULL. */
CLIPROXY_HELPER const char* find_value(const char* json, size_t n, const char* key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    size_t plen = strlen(pat);
    for (const char* p = json; p + plen <= json + n; p++)
        if (memcmp(p, pat, plen) == 0) return p + plen;
    return NULL;
}

/* [start, start + *len) of the first string value of "key":"..." in json, or NULL. */
CLIPROXY_HELPER const char* find_span(const char* json, size_t n, const char* key, size_t* len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    size_t plen = strlen(pat);
    for (const char* p = json; p + plen <= json + n; p++) {
        if (memcmp(p, pat, plen) == 0) {
            const char* s = p + plen;
            const char* q = s;
            while (q < json + n && *q != '"') q++;
            *len = (size_t)(q - s);
            return s;
        }
    }
    return NULL;
}

/* A copy of the first string value of "key":"..." in json, or NULL. */
CLIPROXY_HELPER char* find_string(const char* json, size_t n, const char* key) {
    size_t len;
    const char* s = find_span(json, n, key, &len);
    if (s == NULL) return NULL;
    char* out = malloc(len + 1);
    memcpy(out, s, len);
    out[len] = 0;
    return out;
}

/* The base64 field `key` decoded ("" when absent or null). */
CLIPROXY_HELPER char* find_bytes(const char* json, size_t n, const char* key) {
    char* b64 = find_string(json, n, key);
    size_t len;
    char* out = b64 ? b64_decode(b64, strlen(b64), &len) : strdup("");
    free(b64);
    return out;
}

/* s as the inside of a JSON string (a new string). */
CLIPROXY_HELPER char* json_escape(const char* s) {
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

/* ---- the host ------------------------------------------------------------------------ */

/* A host call with an n-byte request: the reply (malloc'd, NUL-terminated; its length in
 * *out_len when given), or NULL when the call failed. */
CLIPROXY_HELPER char* host_call_n(const char* method, const char* request, size_t n,
                                  size_t* out_len) {
    cliproxy_buffer out = {0};
    if (host->call(host->host_ctx, method, (const uint8_t*)request, n, &out) != 0) return NULL;
    char* text = malloc(out.len + 1);
    if (out.ptr) memcpy(text, out.ptr, out.len);
    text[out.len] = 0;
    if (out_len) *out_len = out.len;
    if (out.ptr) host->free_buffer(out.ptr, out.len);
    return text;
}

CLIPROXY_HELPER char* host_call(const char* method, const char* request) {
    return host_call_n(method, request, strlen(request), NULL);
}

/* A line appended to the file NATIVE_TEST_EVENTS names (nothing when unset). */
CLIPROXY_HELPER void event(const char* line) {
    const char* path = getenv("NATIVE_TEST_EVENTS");
    FILE* f = path ? fopen(path, "a") : NULL;
    if (f == NULL) return;
    fprintf(f, "%s\n", line);
    fclose(f);
}

/* ---- the entry points -------------------------------------------------------------- */

static int plugin_call(const char* method, const uint8_t* request, size_t request_len,
                       cliproxy_buffer* response) {
    response->ptr = NULL;
    response->len = 0;
    if (method == NULL) {
        reply(response, "{\"ok\":false,\"error\":{\"code\":\"invalid_method\","
                        "\"message\":\"method is required\"}}");
        return 1;
    }
    return plugin_dispatch(method, request ? (const char*)request : "", request_len, response);
}

#ifndef CLIPROXY_SHUTDOWN
#define CLIPROXY_SHUTDOWN NULL
#endif

#ifndef CLIPROXY_OWN_INIT
__attribute__((visibility("default")))
int cliproxy_plugin_init(const cliproxy_host_api* h, cliproxy_plugin_api* plugin) {
    host = h;
#ifdef CLIPROXY_ON_INIT
    CLIPROXY_ON_INIT;
#endif
    plugin->abi_version = 1;
    plugin->call = plugin_call;
    plugin->free_buffer = plugin_free;
    plugin->shutdown = CLIPROXY_SHUTDOWN;
    return 0;
}
#endif

#endif
