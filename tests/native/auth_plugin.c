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
#include "cliproxy_plugin.h"

static int poll_count;


/* A host call's reply, "" when it failed. */
static char* host_text(const char* method, const char* request) {
    char* out = host_call(method, request);
    return out ? out : strdup("");
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
        char* out = host_text("host.auth.list", "{}");
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
        char* out = host_text("host.auth.get", greq);
        const char* json = strstr(out, "\"json\":");
        rc = answer(response, json ? json + 7 : out);
        free(out);
    } else if (strstr(payload, "save-auth")) {
        char* out = host_text("host.auth.save", "{\"name\":\"saved-by-plugin.json\",\"json\":"
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

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
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
    return unknown_method(response);
}
