/* A CLIProxyAPI-ABI plugin for aogstream's tests of the request pipeline hooks: plain C,
 * libc only, request fields found by plain text search (as CPA's C examples read them).
 * It answers plugin.register with schema_version 3 (so stream-chunk calls carry no
 * request bodies) and declares:
 *   - model_provider + executor (`openai`): models c-routed, c-badroute and c-hooks-self;
 *     its executor answers "hello from c-hooks";
 *   - model_router: model.route sends RequestedModel c-routed to the executor of the
 *     plugin c-test as model c-echo, and c-badroute to a target that does not exist
 *     (the host must fall through to the model's own executor);
 *   - request_interceptor: a Body that says "please-terminate" ends the request with
 *     451 and {"error":{"message":"blocked by c-hooks"}}; one that says "rewrite-me" is
 *     rewritten to say "rewritten" and gets the header X-Hooked: before;
 *     request.intercept_after adds X-Hooked-After: yes to a rewritten one;
 *   - response_interceptor: "hello from C" in a unary answer becomes
 *     "HELLO FROM C (intercepted)";
 *   - response_stream_interceptor: a chunk holding "hello" gets it as "HELLO", a chunk
 *     holding " from" is dropped;
 *   - usage_plugin and request_lifecycle_plugin: recorded.
 * Events go, one line each, to the file named by NATIVE_TEST_EVENTS:
 *   "before to=<ToFormat>" / "after to=<ToFormat>" (for a rewritten request),
 *   "chunkinit original=<0|1> index=<ChunkIndex>", "chunk <index> history=<n> original=<0|1>",
 *   "usage model=<Model> requested=<Alias> in=<n> out=<n> total=<n> failed=<bool> seq=<n>",
 *   "complete <RequestedModel> <Outcome> <StatusCode>".
 * Built with -DFRONTEND it is the plugin c-gate instead: only frontend_auth_provider,
 * accepting requests with "Authorization: Bearer open-sesame" and recording
 * "auth <Method> <Path> <yes|no> body=<1 when the body it got has messages>".
 */
#include "cliproxy_plugin.h"

static long usage_seq;  /* a plain counter: the host delivers usage one at a time */

static long find_long(const char* json, size_t n, const char* key) {
    const char* p = find_value(json, n, key);
    return p ? strtol(p, NULL, 10) : 0;
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

/* ---- methods ----------------------------------------------------------------------- */

static int intercept(const char* req, size_t n, cliproxy_buffer* response, int after) {
    char* body = find_bytes(req, n, "Body");
    char* to = find_string(req, n, "ToFormat");
    char line[128];
    int rc;
    if (strstr(body, "please-terminate")) {
        const char* msg = "{\"error\":{\"message\":\"blocked by c-hooks\"}}";
        char* b = b64_encode(msg, strlen(msg));
        char result[512];
        snprintf(result, sizeof result, "{\"Terminate\":true,\"StatusCode\":451,"
                 "\"ResponseHeaders\":null,\"ResponseBody\":\"%s\"}", b);
        free(b);
        rc = ok_reply(response, result);
    } else if (!after && strstr(body, "rewrite-me")) {
        snprintf(line, sizeof line, "before to=%s", to ? to : "");
        event(line);
        char* fresh = replace(body, "rewrite-me", "rewritten");
        rc = ok_bytes(response, "Body", fresh, ",\"Headers\":{\"X-Hooked\":[\"before\"]}");
        free(fresh);
    } else if (after && strstr(body, "rewritten")) {
        snprintf(line, sizeof line, "after to=%s", to ? to : "");
        event(line);
        rc = ok_reply(response, "{\"Headers\":{\"X-Hooked-After\":[\"yes\"]},\"Body\":null}");
    } else {
        rc = ok_reply(response, "{}");
    }
    free(body); free(to);
    return rc;
}

static int intercept_response(const char* req, size_t n, cliproxy_buffer* response) {
    char* body = find_bytes(req, n, "Body");
    int rc;
    if (strstr(body, "hello from C")) {
        char* fresh = replace(body, "hello from C", "HELLO FROM C (intercepted)");
        rc = ok_bytes(response, "Body", fresh, ",\"Headers\":null,\"ClearHeaders\":null");
        free(fresh);
    } else {
        rc = ok_reply(response, "{\"Body\":null}");
    }
    free(body);
    return rc;
}

static int intercept_chunk(const char* req, size_t n, cliproxy_buffer* response) {
    long index = find_long(req, n, "ChunkIndex");
    const char* orig = find_value(req, n, "OriginalRequest");
    int has_original = orig && *orig == '"';
    char line[160];
    if (index < 0) {
        snprintf(line, sizeof line, "chunkinit original=%d index=%ld", has_original, index);
        event(line);
        return ok_reply(response, "{}");
    }
    int history = 0;
    const char* h = find_value(req, n, "HistoryChunks");
    if (h && *h == '[')
        for (const char* p = h + 1; *p && *p != ']'; p++) if (*p == '"') history++;
    snprintf(line, sizeof line, "chunk %ld history=%d original=%d", index, history / 2,
             has_original);
    event(line);
    char* body = find_bytes(req, n, "Body");
    int rc;
    if (strstr(body, "\" from\"")) {
        rc = ok_reply(response, "{\"DropChunk\":true}");
    } else if (strstr(body, "\"hello\"")) {
        char* fresh = replace(body, "\"hello\"", "\"HELLO\"");
        rc = ok_bytes(response, "Body", fresh, ",\"DropChunk\":false");
        free(fresh);
    } else {
        rc = ok_reply(response, "{\"Body\":null}");
    }
    free(body);
    return rc;
}

static int route(const char* req, size_t n, cliproxy_buffer* response) {
    char* model = find_string(req, n, "RequestedModel");
    int rc;
    if (model && strcmp(model, "c-routed") == 0)
        rc = ok_reply(response, "{\"Handled\":true,\"TargetKind\":\"executor\","
                                "\"Target\":\"c-test\",\"TargetModel\":\"c-echo\","
                                "\"Reason\":\"test route\"}");
    else if (model && strcmp(model, "c-badroute") == 0)
        rc = ok_reply(response, "{\"Handled\":true,\"TargetKind\":\"executor\","
                                "\"Target\":\"nobody\",\"TargetModel\":\"x\"}");
    else
        rc = ok_reply(response, "{\"Handled\":false}");
    free(model);
    return rc;
}

static int usage(const char* req, size_t n, cliproxy_buffer* response) {
    char* model = find_string(req, n, "Model");
    char* alias = find_string(req, n, "Alias");
    const char* failed = find_value(req, n, "Failed");
    char line[256];
    usage_seq++;
    snprintf(line, sizeof line, "usage model=%s requested=%s in=%ld out=%ld total=%ld "
             "failed=%s seq=%ld", model ? model : "", alias ? alias : "",
             find_long(req, n, "InputTokens"), find_long(req, n, "OutputTokens"),
             find_long(req, n, "TotalTokens"),
             failed && strncmp(failed, "true", 4) == 0 ? "true" : "false", usage_seq);
    event(line);
    free(model); free(alias);
    return ok_reply(response, "{}");
}

static int complete(const char* req, size_t n, cliproxy_buffer* response) {
    char* model = find_string(req, n, "RequestedModel");
    char* outcome = find_string(req, n, "Outcome");
    char line[256];
    snprintf(line, sizeof line, "complete %s %s %ld", model ? model : "",
             outcome ? outcome : "", find_long(req, n, "StatusCode"));
    event(line);
    free(model); free(outcome);
    return ok_reply(response, "{}");
}

#ifdef FRONTEND
/* frontend_auth.authenticate: yes for "Authorization: Bearer open-sesame". */
static int authenticate(const char* req, size_t n, cliproxy_buffer* response) {
    char* method = find_string(req, n, "Method");
    char* path = find_string(req, n, "Path");
    char* body = find_bytes(req, n, "Body");
    const char* auth = find_value(req, n, "Authorization");
    int yes = auth && strncmp(auth, "[\"Bearer open-sesame\"]", 22) == 0;
    char line[512];
    snprintf(line, sizeof line, "auth %s %s %s body=%d", method ? method : "",
             path ? path : "", yes ? "yes" : "no", strstr(body, "\"messages\"") != NULL);
    event(line);
    free(method); free(path); free(body);
    return ok_reply(response, yes ? "{\"Authenticated\":true,\"Principal\":\"tester\","
                                    "\"Metadata\":{\"team\":\"qa\"}}"
                                  : "{\"Authenticated\":false}");
}
#endif

static const char* ANSWER =
    "{\"id\":\"h1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"c-hooks-self\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
    "\"hello from c-hooks\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,"
    "\"completion_tokens\":5,\"total_tokens\":7}}";

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
#ifdef FRONTEND
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":3,\"metadata\":{\"Name\":\"c-gate\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-gate\","
            "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{"
            "\"frontend_auth_provider\":true}}");
    if (strcmp(method, "frontend_auth.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"c-gate\"}");
    if (strcmp(method, "frontend_auth.authenticate") == 0) return authenticate(req, n, response);
#endif
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":3,\"metadata\":{\"Name\":\"c-hooks\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-hooks\","
            "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_provider\":true,"
            "\"executor\":true,\"executor_input_formats\":[\"openai\"],"
            "\"executor_output_formats\":[\"openai\"],\"model_router\":true,"
            "\"request_interceptor\":true,\"response_interceptor\":true,"
            "\"response_stream_interceptor\":true,\"usage_plugin\":true,"
            "\"request_lifecycle_plugin\":true}}");
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"c-hooks\",\"Models\":[{\"ID\":\"c-routed\"},"
                                  "{\"ID\":\"c-badroute\"},{\"ID\":\"c-hooks-self\"}],"
                                  "\"AuthUpdate\":null}");
    if (strcmp(method, "model.route") == 0) return route(req, n, response);
    if (strcmp(method, "request.intercept_before") == 0) return intercept(req, n, response, 0);
    if (strcmp(method, "request.intercept_after") == 0) return intercept(req, n, response, 1);
    if (strcmp(method, "response.intercept_after") == 0)
        return intercept_response(req, n, response);
    if (strcmp(method, "response.intercept_stream_chunk") == 0)
        return intercept_chunk(req, n, response);
    if (strcmp(method, "usage.handle") == 0) return usage(req, n, response);
    if (strcmp(method, "request.complete") == 0) return complete(req, n, response);
    if (strcmp(method, "executor.execute") == 0)
        return ok_bytes(response, "Payload", ANSWER, ",\"Headers\":null,\"Metadata\":null");
    if (strcmp(method, "executor.execute_stream") == 0) {
        const char* chunk = "{\"id\":\"h1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
            "\"model\":\"c-hooks-self\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
            "\"hooks\"},\"finish_reason\":\"stop\"}]}";
        char* b = b64_encode(chunk, strlen(chunk));
        size_t cap = strlen(b) + 64;
        char* result = malloc(cap);
        snprintf(result, cap, "{\"headers\":null,\"chunks\":[{\"Payload\":\"%s\"}]}", b);
        ok_reply(response, result);
        free(result); free(b);
        return 0;
    }
    return unknown_method(response);
}
