/* A CLIProxyAPI-ABI plugin for aogstream's tests of per-auth models, auth import,
 * credential refresh, the scheduler slot and raw HTTP with a credential (C, libc
 * only; request fields found by plain text search, as CPA's C examples do).
 *
 * Built twice by tools/build-native-plugins.sh: c-authx.so (provider "c-authx", model
 * prefix "cx", executor_model_scope "both") and, with -DOAUTH_SCOPE, c-authy.so
 * (provider "c-authy", prefix "cy", scope "oauth") and, with -DSTATIC_SCOPE, c-authz.so
 * (provider "c-authz", prefix "cz", scope "static"). All declare auth_provider,
 * model_provider, executor (openai) and scheduler. A record's key is the "api_key" of
 * the StorageJSON it is given.
 *   - model.static: "<prefix>-static" (event "static <name>");
 *   - model.for_auth: "<prefix>-<AuthID>" and "<prefix>-shared"; a key containing
 *     "update-me" gets an AuthUpdate (key "k-updated", label "updated by for_auth"),
 *     any other an all-zero AuthUpdate (event "for_auth <name> <AuthID>");
 *   - auth.parse: a RawJSON holding "<prefix>_token" is handled, answering an Auth
 *     "<prefix>-single.json" and Auths "<prefix>-a.json", "<prefix>-b.json" (keys
 *     "<token>-single/-a/-b"); anything else is not handled (event
 *     "parse <name> provider=<Provider>");
 *   - auth.refresh: a key containing "fail" is refused (an error quoting the key,
 *     http_status 401); else an Auth whose only field is StorageJSON
 *     {"api_key":"renewed-<AuthID>"}, NextRefreshAfter 2999-01-01 (event
 *     "refresh <name> <AuthID>");
 *   - scheduler.pick (event "pick <name> model=<Model>"): a candidate "pick-me" is
 *     picked; "ghost" makes it name an unknown auth; "reject" makes it fail (403);
 *     "fill-1" delegates to fill-first; else not handled;
 *   - executor.execute: a key ending in "-expired" is refused with http_status 401;
 *     else "<Model> as <AuthID> with <key>";
 *   - executor.http_request: a URL containing "/local" answers StatusCode 0, header
 *     X-Local, body "local answer"; else the request is made through host.http.do with
 *     "Authorization: Bearer <key>" and the host's answer returned as it is (event
 *     "http <name> <AuthID> <Method>");
 *   - command_line (flag -login): prints "logged in" and returns the auth record
 *     "<prefix>-cli.json" (key "k-cli-secret").
 * Events go to the file named by NATIVE_TEST_EVENTS.
 */
#include "cliproxy_plugin.h"

#if defined(OAUTH_SCOPE)
#define NAME "c-authy"
#define PREFIX "cy"
#define SCOPE "oauth"
#elif defined(STATIC_SCOPE)
#define NAME "c-authz"
#define PREFIX "cz"
#define SCOPE "static"
#else
#define NAME "c-authx"
#define PREFIX "cx"
#define SCOPE "both"
#endif
#define ZERO_AUTH "{\"Provider\":\"\",\"ID\":\"\",\"FileName\":\"\",\"Label\":\"\",\"Prefix\":\"\"," \
    "\"ProxyURL\":\"\",\"Disabled\":false,\"StorageJSON\":null,\"Metadata\":null," \
    "\"Attributes\":null,\"NextRefreshAfter\":\"0001-01-01T00:00:00Z\"}"

/* The "api_key" of the request's StorageJSON ("" when none); caller frees. */
static char* key_of(const char* req, size_t n) {
    char* storage = find_bytes(req, n, "StorageJSON");
    char* key = find_string(storage, strlen(storage), "api_key");
    free(storage);
    return key ? key : strdup("");
}

static char* field_or_empty(const char* req, size_t n, const char* name) {
    char* v = find_string(req, n, name);
    return v ? v : strdup("");
}

static void event2(const char* what, const char* a, const char* b) {
    char line[512];
    snprintf(line, sizeof line, "%s %s %s%s%s", what, NAME, a, b[0] ? " " : "", b);
    event(line);
}

/* An AuthData of this provider named file, with StorageJSON {"api_key":key}. */
static void auth_data(char* out, size_t cap, const char* file, const char* key,
                      const char* label) {
    char storage[256];
    snprintf(storage, sizeof storage, "{\"api_key\":\"%s\"}", key);
    char* b = b64_encode(storage, strlen(storage));
    snprintf(out, cap, "{\"Provider\":\"" NAME "\",\"ID\":\"\",\"FileName\":\"%s\",\"Label\":\"%s\","
             "\"Prefix\":\"\",\"ProxyURL\":\"\",\"Disabled\":false,\"StorageJSON\":\"%s\","
             "\"Metadata\":null,\"Attributes\":null,"
             "\"NextRefreshAfter\":\"0001-01-01T00:00:00Z\"}", file, label, b);
    free(b);
}

static int for_auth(const char* req, size_t n, cliproxy_buffer* response) {
    char* id = field_or_empty(req, n, "AuthID");
    char* key = key_of(req, n);
    event2("for_auth", id, "");
    char update[1024];
    if (strstr(key, "update-me")) auth_data(update, sizeof update, "", "k-updated",
                                            "updated by for_auth");
    else snprintf(update, sizeof update, "%s", ZERO_AUTH);
    char result[2048];
    snprintf(result, sizeof result, "{\"Provider\":\"" NAME "\",\"Models\":[{\"ID\":\"" PREFIX
             "-%s\"},{\"ID\":\"" PREFIX "-shared\"}],\"AuthUpdate\":%s}", id, update);
    free(id); free(key);
    return ok_reply(response, result);
}

static int parse(const char* req, size_t n, cliproxy_buffer* response) {
    char* provider = field_or_empty(req, n, "Provider");
    char* raw = find_bytes(req, n, "RawJSON");
    event2("parse", "provider=", provider);
    char* token = find_string(raw, strlen(raw), PREFIX "_token");
    free(provider); free(raw);
    if (token == NULL)
        return ok_reply(response, "{\"Handled\":false,\"Auth\":null,\"Auths\":null}");
    char k1[128], k2[128], k3[128], a1[1024], a2[1024], a3[1024], result[4096];
    snprintf(k1, sizeof k1, "%s-single", token);
    snprintf(k2, sizeof k2, "%s-a", token);
    snprintf(k3, sizeof k3, "%s-b", token);
    auth_data(a1, sizeof a1, PREFIX "-single.json", k1, "");
    auth_data(a2, sizeof a2, PREFIX "-a.json", k2, "imported a");
    auth_data(a3, sizeof a3, PREFIX "-b.json", k3, "imported b");
    snprintf(result, sizeof result, "{\"Handled\":true,\"Auth\":%s,\"Auths\":[%s,%s]}", a1, a2,
             a3);
    free(token);
    return ok_reply(response, result);
}

static int refresh(const char* req, size_t n, cliproxy_buffer* response) {
    char* id = field_or_empty(req, n, "AuthID");
    char* key = key_of(req, n);
    event2("refresh", id, "");
    char text[2048];
    if (strstr(key, "fail")) {
        snprintf(text, sizeof text, "{\"ok\":false,\"error\":{\"code\":\"refresh_failed\","
                 "\"message\":\"refresh refused for %s\",\"http_status\":401}}", key);
        free(id); free(key);
        return reply(response, text);
    }
    char storage[256];
    snprintf(storage, sizeof storage, "{\"api_key\":\"renewed-%s\"}", id);
    char* b = b64_encode(storage, strlen(storage));
    snprintf(text, sizeof text, "{\"Auth\":{\"Provider\":\"\",\"ID\":\"\",\"FileName\":\"\","
             "\"Label\":\"\",\"Prefix\":\"\",\"ProxyURL\":\"\",\"Disabled\":false,"
             "\"StorageJSON\":\"%s\",\"Metadata\":null,\"Attributes\":null,"
             "\"NextRefreshAfter\":\"0001-01-01T00:00:00Z\"},"
             "\"NextRefreshAfter\":\"2999-01-01T00:00:00Z\"}", b);
    free(b); free(id); free(key);
    return ok_reply(response, text);
}

static int pick(const char* req, size_t n, cliproxy_buffer* response) {
    char* model = field_or_empty(req, n, "Model");
    event2("pick", "model=", model);
    free(model);
    const char* cands = strstr(req, "\"Candidates\":");
    if (cands == NULL) cands = req;
    if (strstr(cands, "\"ID\":\"pick-me\""))
        return ok_reply(response, "{\"AuthID\":\"pick-me\",\"DelegateBuiltin\":\"\","
                                  "\"Handled\":true}");
    if (strstr(cands, "\"ID\":\"ghost\""))
        return ok_reply(response, "{\"AuthID\":\"no-such-auth\",\"DelegateBuiltin\":\"\","
                                  "\"Handled\":true}");
    if (strstr(cands, "\"ID\":\"reject\""))
        return reply(response, "{\"ok\":false,\"error\":{\"code\":\"scheduler_denied\","
                               "\"message\":\"scheduler says no\",\"http_status\":403}}");
    if (strstr(cands, "\"ID\":\"fill-1\""))
        return ok_reply(response, "{\"AuthID\":\"\",\"DelegateBuiltin\":\"fill-first\","
                                  "\"Handled\":true}");
    return ok_reply(response, "{\"AuthID\":\"\",\"DelegateBuiltin\":\"\",\"Handled\":false}");
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* id = field_or_empty(req, n, "AuthID");
    char* key = key_of(req, n);
    char* model = field_or_empty(req, n, "Model");
    int rc;
    if (strlen(key) >= 8 && strcmp(key + strlen(key) - 8, "-expired") == 0) {
        rc = reply(response, "{\"ok\":false,\"error\":{\"code\":\"unauthorized\",\"message\":"
                             "\"the credential has expired\",\"http_status\":401}}");
    } else {
        char text[1024], body[2048];
        snprintf(text, sizeof text, "%s as %s with %s", model, id, key);
        snprintf(body, sizeof body,
                 "{\"id\":\"x1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"%s\","
                 "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
                 "\"%s\"},\"finish_reason\":\"stop\"}]}", model, text);
        rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    }
    free(id); free(key); free(model);
    return rc;
}

static int http_request(const char* req, size_t n, cliproxy_buffer* response) {
    char* id = field_or_empty(req, n, "AuthID");
    char* method = field_or_empty(req, n, "Method");
    char* url = field_or_empty(req, n, "URL");
    char* key = key_of(req, n);
    char* body = find_string(req, n, "Body");
    event2("http", id, method);
    int rc;
    if (strstr(url, "/local")) {
        rc = ok_bytes(response, "Body", "local answer",
                      ",\"StatusCode\":0,\"Headers\":{\"X-Local\":[\"yes\"]}");
    } else {
        size_t cap = strlen(url) + strlen(key) + (body ? strlen(body) : 0) + 256;
        char* hreq = malloc(cap);
        snprintf(hreq, cap, "{\"method\":\"%s\",\"url\":\"%s\",\"headers\":{\"Authorization\":"
                 "[\"Bearer %s\"]},\"body\":%s%s%s}", method, url, key, body ? "\"" : "",
                 body ? body : "null", body ? "\"" : "");
        char* out = host_call("host.http.do", hreq);
        rc = reply(response, out && out[0] ? out : "{\"ok\":false,\"error\":{\"code\":"
                                                   "\"x\",\"message\":\"host.http.do failed\"}}");
        free(out); free(hreq);
    }
    free(id); free(method); free(url); free(key); free(body);
    return rc;
}

static int command(cliproxy_buffer* response) {
    char auth[1024], extra[1200];
    auth_data(auth, sizeof auth, PREFIX "-cli.json", "k-cli-secret", "from the command line");
    snprintf(extra, sizeof extra, ",\"Stderr\":null,\"Auths\":[%s],\"ExitCode\":0", auth);
    return ok_bytes(response, "Stdout", "logged in\n", extra);
}

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"" NAME "\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/" NAME
            "\",\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"auth_provider\":true,"
            "\"model_provider\":true,\"executor\":true,\"scheduler\":true,"
            "\"command_line_plugin\":true,"
            "\"executor_model_scope\":\"" SCOPE "\",\"executor_input_formats\":[\"openai\"],"
            "\"executor_output_formats\":[\"openai\"]}}");
    if (strcmp(method, "auth.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"" NAME "\"}");
    if (strcmp(method, "model.static") == 0) {
        event2("static", "", "");
        return ok_reply(response, "{\"Provider\":\"" NAME "\",\"Models\":[{\"ID\":\"" PREFIX
                                  "-static\"}],\"AuthUpdate\":null}");
    }
    if (strcmp(method, "command_line.register") == 0)
        return ok_reply(response, "{\"Flags\":[{\"Name\":\"login\",\"Usage\":\"log in\","
                                  "\"Type\":\"bool\",\"DefaultValue\":\"false\"}]}");
    if (strcmp(method, "command_line.execute") == 0) return command(response);
    if (strcmp(method, "model.for_auth") == 0) return for_auth(req, n, response);
    if (strcmp(method, "auth.parse") == 0) return parse(req, n, response);
    if (strcmp(method, "auth.refresh") == 0) return refresh(req, n, response);
    if (strcmp(method, "scheduler.pick") == 0) return pick(req, n, response);
    if (strcmp(method, "executor.execute") == 0) return execute(req, n, response);
    if (strcmp(method, "executor.http_request") == 0) return http_request(req, n, response);
    return unknown_method(response);
}
