/* A CLIProxyAPI-ABI executor plugin that speaks only OpenAI's Responses API (format
 * `openai-response`), whose answers carry a bare usage, for aogstream's test of CPA's
 * usage-detail normalisation (C, libc only; request fields found by plain text search).
 *
 * It declares a model provider (model c-resp, provider c-resp) and an executor whose
 * input and output formats are ["responses"] (CPA's alias of `openai-response`):
 *   - executor.execute answers a Responses `response` object whose text is
 *     "responses saw: <input> | instructions: <instructions>" (<input> the string `input`,
 *     else the first text part) when the Payload it got is a Responses request (it has
 *     "input" and no "messages"); else an error with http_status 400 saying so;
 *   - executor.execute_stream answers the same text as Responses events in `chunks`
 *     (response.created, output_item.added and two text deltas as bare JSON, one per chunk;
 *     then output_item.done and response.completed as two SSE frames in one chunk, as
 *     a network read of an upstream's SSE may carry them: the first a bare `data:` frame,
 *     the second with its `event:` line).
 * Every usage it writes has only "input_tokens":7 and "output_tokens":5: no
 * input_tokens_details, output_tokens_details or total_tokens (the host completes them).
 */
#include "cliproxy_plugin.h"

static int is_responses(const char* payload) {
    return strstr(payload, "\"input\":") != NULL && strstr(payload, "\"messages\":") == NULL;
}

static int not_responses(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"bad_format\",\"message\":"
                           "\"c-resp wants an OpenAI Responses request\",\"http_status\":400}}");
}

static char* said(const char* payload) {
    size_t n = strlen(payload);
    char* text = find_string(payload, n, "input");
    if (text == NULL) text = find_string(payload, n, "text");
    char* instr = find_string(payload, n, "instructions");
    size_t cap = (text ? strlen(text) : 0) + (instr ? strlen(instr) : 0) + 64;
    char* out = malloc(cap);
    snprintf(out, cap, "responses saw: %s | instructions: %s", text ? text : "",
             instr ? instr : "none");
    free(text); free(instr);
    return out;
}

#define USAGE "\"usage\":{\"input_tokens\":7,\"output_tokens\":5}"

/* The finished message item of the answer text (escaped). */
static char* message_item(const char* esc, const char* id) {
    size_t cap = strlen(esc) + 256;
    char* out = malloc(cap);
    snprintf(out, cap, "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\","
             "\"status\":\"completed\",\"content\":[{\"type\":\"output_text\",\"text\":\"%s\","
             "\"annotations\":[]}]}", id, esc);
    return out;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* payload = find_bytes(req, n, "Payload");
    if (!is_responses(payload)) { free(payload); return not_responses(response); }
    char* text = said(payload);
    char* esc = json_escape(text);
    char* item = message_item(esc, "msg_c1");
    size_t cap = strlen(item) + 400;
    char* body = malloc(cap);
    snprintf(body, cap,
             "{\"id\":\"resp_c1\",\"object\":\"response\",\"created_at\":1,\"status\":\"completed\","
             "\"model\":\"c-resp\",\"output\":[%s]," USAGE "}", item);
    int rc = ok_bytes(response, "Payload", body, ",\"Headers\":null,\"Metadata\":null");
    free(body); free(item); free(esc); free(text); free(payload);
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
    if (!is_responses(payload) || strstr(payload, "\"stream\":true") == NULL) {
        free(payload);
        return not_responses(response);
    }
    char* text = said(payload);
    char* esc = json_escape(text);
    size_t half = strlen(text) / 2;
    char* esc1;
    char* esc2;
    { char c = text[half]; text[half] = 0; esc1 = json_escape(text); text[half] = c;
      esc2 = json_escape(text + half); }
    char* item = message_item(esc, "msg_s1");
    size_t cap = 2 * strlen(item) + 2048;
    char* buf = malloc(cap);
    char* ev[5];
    snprintf(buf, cap, "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":"
             "{\"id\":\"resp_s1\",\"object\":\"response\",\"created_at\":1,\"status\":\"in_progress\","
             "\"model\":\"c-resp\",\"output\":[],\"usage\":null}}");
    ev[0] = chunk(buf);
    snprintf(buf, cap, "{\"type\":\"response.output_item.added\",\"sequence_number\":1,"
             "\"output_index\":0,\"item\":{\"id\":\"msg_s1\",\"type\":\"message\",\"role\":"
             "\"assistant\",\"status\":\"in_progress\",\"content\":[]}}");
    ev[1] = chunk(buf);
    snprintf(buf, cap, "{\"type\":\"response.output_text.delta\",\"sequence_number\":2,"
             "\"item_id\":\"msg_s1\",\"output_index\":0,\"content_index\":0,\"delta\":\"%s\"}", esc1);
    ev[2] = chunk(buf);
    snprintf(buf, cap, "{\"type\":\"response.output_text.delta\",\"sequence_number\":3,"
             "\"item_id\":\"msg_s1\",\"output_index\":0,\"content_index\":0,\"delta\":\"%s\"}", esc2);
    ev[3] = chunk(buf);
    snprintf(buf, cap,
             "data: {\"type\":\"response.output_item.done\","
             "\"sequence_number\":4,\"output_index\":0,\"item\":%s}\n\n"
             "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":5,"
             "\"response\":{\"id\":\"resp_s1\",\"object\":\"response\",\"created_at\":1,"
             "\"status\":\"completed\",\"model\":\"c-resp\",\"output\":[%s]," USAGE "}}\n\n",
             item, item);
    ev[4] = chunk(buf);
    size_t total = 64;
    for (int i = 0; i < 5; i++) total += strlen(ev[i]) + 1;
    char* result = malloc(total);
    snprintf(result, total, "{\"headers\":null,\"chunks\":[%s,%s,%s,%s,%s]}",
             ev[0], ev[1], ev[2], ev[3], ev[4]);
    int rc = ok_reply(response, result);
    for (int i = 0; i < 5; i++) free(ev[i]);
    free(result); free(buf); free(item); free(esc1); free(esc2); free(esc); free(text);
    free(payload);
    return rc;
}

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0)
        return ok_reply(response,
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"c-resp\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-resp\","
            "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_provider\":true,"
            "\"executor\":true,\"executor_input_formats\":[\"responses\"],"
            "\"executor_output_formats\":[\"responses\"]}}");
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"c-resp\",\"Models\":[{\"ID\":\"c-resp\"}],"
                                  "\"AuthUpdate\":null}");
    if (strcmp(method, "executor.execute") == 0) return execute(req, n, response);
    if (strcmp(method, "executor.execute_stream") == 0) return execute_stream(req, n, response);
    return unknown_method(response);
}
