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
#include "cliproxy_plugin.h"

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
#ifdef GEMINI
#define THINKING_APPLIER ""
#else
#define THINKING_APPLIER ",\"thinking_applier\":true"
#endif

/* ---- methods ----------------------------------------------------------------------- */

static int refuse(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"bad_format\",\"message\":\""
                           NAME " wants an " FORMAT " request\",\"http_status\":400}}");
}

#ifdef GEMINI
#define GEMINI_USAGE "\"usageMetadata\":{\"promptTokenCount\":6,\"candidatesTokenCount\":4," \
                     "\"totalTokenCount\":10}"

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

/* What the executor answers to the request (recorded first), or NULL to refuse it. */
static char* answer_text(const char* req, size_t n) {
    char* payload = find_bytes(req, n, "Payload");
    char* source = find_string(req, n, "SourceFormat");
    char* format = find_string(req, n, "Format");
    size_t cap = strlen(payload) + 128;
    char* line = malloc(cap);
    snprintf(line, cap, "gemini payload source=%s format=%s %s", source ? source : "",
             format ? format : "", payload);
    event(line);
    char* text = said(payload);
    free(line); free(source); free(format); free(payload);
    return text;
}

/* A partial GenerateContentResponse frame holding one text part. */
static char* frame(const char* text) {
    char* esc = json_escape(text);
    size_t cap = strlen(esc) + 256;
    char* out = malloc(cap);
    snprintf(out, cap, "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":"
             "[{\"text\":\"%s\"}]},\"index\":0}],\"modelVersion\":\"c-gemini\"}\n\n", esc);
    free(esc);
    return out;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* text = answer_text(req, n);
    if (text == NULL) return refuse(response);
    char* esc = json_escape(text);
    size_t cap = strlen(esc) + 512;
    char* body = malloc(cap);
    snprintf(body, cap, "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":"
             "\"%s\"}]},\"finishReason\":\"STOP\",\"index\":0}]," GEMINI_USAGE ","
             "\"modelVersion\":\"c-gemini\",\"responseId\":\"g1\"}", esc);
    int rc = ok_payload(response, body);
    free(body); free(esc); free(text);
    return rc;
}

static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* text = answer_text(req, n);
    if (text == NULL) return refuse(response);
    size_t half = strlen(text) / 2;
    char* second = frame(text + half);
    text[half] = 0;
    char* first = frame(text);
    const char* chunks[3] = {
        first, second,
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[]},"
        "\"finishReason\":\"STOP\",\"index\":0}]," GEMINI_USAGE ","
        "\"modelVersion\":\"c-gemini\"}\n\n"};
    int rc = ok_chunks(response, chunks, 3);
    free(first); free(second); free(text);
    return rc;
}
#else
/* The "line" of an x-lines request, JSON-escaped, put into `shape` (a printf format
 * with one %s); NULL when the request is not an x-lines one (refused). */
static char* answer_text(const char* req, size_t n, const char* shape) {
    char* payload = find_bytes(req, n, "Payload");
    char* line = find_string(payload, strlen(payload), "line");
    free(payload);
    if (line == NULL) return NULL;
    char* esc = json_escape(line);
    size_t cap = strlen(esc) + strlen(shape) + 1;
    char* out = malloc(cap);
    snprintf(out, cap, shape, esc);
    free(esc); free(line);
    return out;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* body = answer_text(req, n, "{\"text\":\"lines saw: %s mark\"}");
    if (body == NULL) return refuse(response);
    int rc = ok_payload(response, body);
    free(body);
    return rc;
}

static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* piece = answer_text(req, n, "{\"piece\":\"%s mark\"}");
    if (piece == NULL) return refuse(response);
    const char* chunks[3] = {"{\"piece\":\"lines saw: \"}", piece, "{\"done\":true}"};
    int rc = ok_chunks(response, chunks, 3);
    free(piece);
    return rc;
}
#endif

static int plugin_dispatch(const char* method, const char* req, size_t n,
                           cliproxy_buffer* response) {
    if (is_registration(method))
        return ok_reply(response, CLIPROXY_REGISTRATION(1, NAME,
            "\"model_provider\":true,\"executor\":true,\"executor_input_formats\":[\"" FORMAT
            "\"],\"executor_output_formats\":[\"" FORMAT "\"]" THINKING_APPLIER));
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
    return unknown_method(response);
}
