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
#include "cliproxy_plugin.h"

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

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
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
    return unknown_method(response);
}
