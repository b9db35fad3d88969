/* A CLIProxyAPI-ABI auth-provider plugin for aogstream's tests (C, libc only; request
 * fields found by plain text search).
 *
 * It declares auth_provider (auth.identifier "c-auth"), a model provider (model
 * c-keyed, provider c-auth) and an executor speaking `openai`:
 *   - auth.login.start answers a URL and a state; auth.login.poll answers "pending" on
 *     every odd poll and "success" on every even one, with the record c-auth-<n>.json
 *     whose StorageJSON is {"api_key":"key-<n>","email":"user<n>@example.invalid"};
 *   - executor.execute reads the api_key of the StorageJSON it got: none → "served
 *     without a credential"; one ending in "-limited" → an error with http_status 429;
 *     else "served with <key> as <AuthID>". A message "list-auths" answers the names
 *     host.auth.list gives; "get-auth <index>" the json host.auth.get gives;
 *     "save-auth" saves saved-by-plugin.json through host.auth.save and answers its name.
 * Events go to the file named by NATIVE_TEST_EVENTS: "login-start base=<BaseURL>",
 * "poll <n> <pending|success>".
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
static const cliproxy_host_api* host;
static int poll_count;

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


static char* host_call(const char* method, const char* request) {
    cliproxy_buffer out = {0};
    if (host->call(host->host_ctx, method, (const uint8_t*)request, strlen(request), &out) != 0)
        return strdup("");
    char* text = malloc(out.len + 1);
    if (out.ptr) memcpy(text, out.ptr, out.len);
    text[out.len] = 0;
    if (out.ptr) host->free_buffer(out.ptr, out.len);
    return text;
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

static int answer(cliproxy_buffer* response, const char* text) {
    char* esc = json_escape(text);
    size_t cap = strlen(esc) + 400;
    char* body = malloc(cap);
    snprintf(body, cap,
             "{\"id\":\"a1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"c-keyed\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
             "\"finish_reason\":\"stop\"}]}", esc);
    int rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    free(body); free(esc);
    return rc;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    char* storage = find_bytes(req, n, "StorageJSON");
    char* auth_id = find_string(req, n, "AuthID");
    char* key = find_string(storage, strlen(storage), "api_key");
    char text[4096];
    int rc;
    if (strstr(payload, "list-auths")) {
        char* out = host_call("host.auth.list", "{}");
        size_t o = (size_t)snprintf(text, sizeof text, "auths:");
        for (const char* p = strstr(out, "\"name\":\""); p; p = strstr(p + 8, "\"name\":\"")) {
            const char* q = strchr(p + 8, '"');
            if (q == NULL) break;
            o += (size_t)snprintf(text + o, sizeof text - o, " %.*s", (int)(q - p - 8), p + 8);
        }
        free(out);
        rc = answer(response, text);
    } else if (strstr(payload, "get-auth ")) {
        const char* idx = strstr(payload, "get-auth ") + 9;
        const char* end = idx;
        while (*end && *end != '"' && *end != ' ') end++;
        char greq[256];
        snprintf(greq, sizeof greq, "{\"auth_index\":\"%.*s\"}", (int)(end - idx), idx);
        char* out = host_call("host.auth.get", greq);
        const char* json = strstr(out, "\"json\":");
        rc = answer(response, json ? json + 7 : out);
        free(out);
    } else if (strstr(payload, "save-auth")) {
        char* out = host_call("host.auth.save", "{\"name\":\"saved-by-plugin.json\",\"json\":"
                                                "{\"type\":\"c-auth\",\"api_key\":\"key-saved\"}}");
        rc = answer(response, out);
        free(out);
    } else if (key == NULL) {
        rc = answer(response, "served without a credential");
    } else if (strlen(key) > 8 && strcmp(key + strlen(key) - 8, "-limited") == 0) {
        rc = reply(response, "{\"ok\":false,\"error\":{\"code\":\"rate_limited\",\"message\":"
                             "\"this key is rate limited\",\"http_status\":429}}");
    } else {
        snprintf(text, sizeof text, "served with %s as %s", key, auth_id ? auth_id : "");
        rc = answer(response, text);
    }
    free(payload); free(storage); free(auth_id); free(key);
    return rc;
}

static int login_start(const char* req, size_t n, cliproxy_buffer* response) {
    char* base = find_string(req, n, "BaseURL");
    char line[512];
    snprintf(line, sizeof line, "login-start base=%s", base ? base : "");
    event(line);
    free(base);
    return ok_reply(response, "{\"Provider\":\"c-auth\",\"URL\":\"https://example.invalid/login\","
                              "\"State\":\"st-c-auth\",\"ExpiresAt\":\"0001-01-01T00:00:00Z\","
                              "\"Metadata\":{\"step\":\"1\"}}");
}

static int login_poll(cliproxy_buffer* response) {
    int k = ++poll_count;
    char line[64];
    snprintf(line, sizeof line, "poll %d %s", k, k % 2 ? "pending" : "success");
    event(line);
    if (k % 2) return ok_reply(response, "{\"Status\":\"pending\",\"Message\":\"\",\"Auth\":null,"
                                         "\"Auths\":null}");
    int id = k / 2;
    char storage[256];
    snprintf(storage, sizeof storage, "{\"api_key\":\"key-%d\",\"email\":\"user%d@example.invalid\"}",
             id, id);
    char* b = b64_encode(storage, strlen(storage));
    char result[1024];
    snprintf(result, sizeof result,
             "{\"Status\":\"success\",\"Message\":\"\",\"Auth\":null,\"Auths\":[{\"Provider\":"
             "\"c-auth\",\"ID\":\"acct-%d\",\"FileName\":\"c-auth-%d.json\",\"Label\":\"account %d\","
             "\"Prefix\":\"\",\"ProxyURL\":\"\",\"Disabled\":false,\"StorageJSON\":\"%s\","
             "\"Metadata\":null,\"Attributes\":null,\"NextRefreshAfter\":\"0001-01-01T00:00:00Z\"}]}",
             id, id, id, b);
    free(b);
    return ok_reply(response, result);
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
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"c-auth\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-auth\","
            "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"auth_provider\":true,"
            "\"model_provider\":true,\"executor\":true,\"executor_input_formats\":[\"openai\"],"
            "\"executor_output_formats\":[\"openai\"]}}");
    if (strcmp(method, "auth.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"C-Auth\"}");
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"c-auth\",\"Models\":[{\"ID\":\"c-keyed\"}],"
                                  "\"AuthUpdate\":null}");
    if (strcmp(method, "auth.login.start") == 0) return login_start(req, n, response);
    if (strcmp(method, "auth.login.poll") == 0) return login_poll(response);
    if (strcmp(method, "executor.execute") == 0) return execute(req, n, response);
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"unknown_method\","
                           "\"message\":\"unknown method\"}}");
}

static void plugin_free(void* ptr, size_t len) { (void)len; free(ptr); }

__attribute__((visibility("default")))
int cliproxy_plugin_init(const cliproxy_host_api* h, cliproxy_plugin_api* plugin) {
    host = h;
    plugin->abi_version = 1;
    plugin->call = plugin_call;
    plugin->free_buffer = plugin_free;
    plugin->shutdown = NULL;
    return 0;
}
