/* A CLIProxyAPI-ABI plugin for aogstream's tests: plain C, no libraries beyond libc.
 *
 * Written as a third party writes one against CPA's ABI (spec/native-abi.md §1):
 * request fields are found by plain text search, answers are JSON envelopes in malloc
 * buffers released by free_buffer. It offers a model provider (models c-echo and
 * c-async) and an executor speaking `openai` (Chat Completions):
 *   - executor.execute answers a chat completion "hello from C", or, when the last
 *     message says "fetch <url>", the body host.http.do got from <url>, or for
 *     "fetchstream <url>" what host.http.do_stream/stream_read pulled from it, or for
 *     "ask <model>" / "askstream <model>" the gateway's own answer through
 *     host.model.execute / execute_stream + stream_read;
 *   - executor.execute_stream for c-echo answers synchronously (`chunks`); for c-async
 *     a thread of its own emits chunks with host.stream.emit and ends with
 *     host.stream.close; when the message says "forever" it emits until the host
 *     refuses a chunk (the client left) and records that.
 * It also offers management (spec §5.3): management.register answers one route
 * (GET and POST /c-test/status under /v0/management) and one resource (/page under
 * /v0/resource/plugins/<id>), and management.handle answers a JSON echo of the method,
 * path and body it got (or an HTML page for the resource).
 * And a command line: command_line.register answers the flags -greet (string, default
 * "world") and -loud (bool); command_line.execute prints "hello <greet>" (upper-cased
 * with -loud set), then the Args it got, and exits 3 when an argument is "fail".
 * "echo-payload" in the message makes executor.execute answer the payload it got, the
 * Model it was asked for, and whether the headers X-Hooked / X-Hooked-After reached it.
 * "fail429" in the message makes either answer an error envelope with http_status 429;
 * "failmid" makes c-async close its stream with an error after one chunk.
 * Every call logs through host.log. Events go, one line each, to the file named by
 * NATIVE_TEST_EVENTS: "register <config_yaml base64>" (plugin.register),
 * "reconfigure <config_yaml base64>" (plugin.reconfigure), "aborted <stream id> <ms>".
 *
 * Bad variants for the loader's error paths, by -D at build time: BAD_ABI (abi_version
 * 2), BAD_RC (init returns 3), BAD_JSON (plugin.register answers invalid JSON),
 * NO_INIT (the init symbol is missing).
 * CRASH (c-crash.so, for `isolation: process`): a third model c-crash whose executor
 * dereferences NULL (unary: at once; streamed: on the plugin's own thread after one
 * emitted chunk), and "whoami" in a message answers "pid <the process's pid>";
 * CRASH_INIT: init itself dereferences NULL.
 */
#define CLIPROXY_OWN_BUFFERS  /* reply() and plugin_free() below check the frees */
#define CLIPROXY_OWN_INIT     /* the load-failure variants */
#include "cliproxy_plugin.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ----------------------------------------------------------------- */

static int contains(const char* hay, size_t n, const char* needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return 1;
    return 0;
}

static void eventf(const char* fmt, const char* a, long b) {
    const char* path = getenv("NATIVE_TEST_EVENTS");
    if (path == NULL) return;
    FILE* f = fopen(path, "a");
    if (f == NULL) return;
    fprintf(f, fmt, a, b);
    fputc('\n', f);
    fclose(f);
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Answers carry their length in a header before the bytes the host sees, so
 * plugin_free can check that the host hands back the very pointer and length it got
 * (as Rust plugins rely on); a mismatch is recorded as a "badfree" event. */
static int reply(cliproxy_buffer* response, const char* text) {
    size_t n = strlen(text);
    char* buf = malloc(n + 16);
    memcpy(buf, &n, sizeof n);
    memcpy(buf + 16, text, n);
    response->ptr = buf + 16;
    response->len = n;
    return 0;
}

static void host_log(const char* level, const char* message, const char* cb) {
    char req[512];
    snprintf(req, sizeof req,
             "{\"level\":\"%s\",\"message\":\"%s\",\"fields\":{\"plugin\":\"c-test\"},"
             "\"host_callback_id\":\"%s\"}", level, message, cb ? cb : "");
    free(host_call("host.log", req));
}

static char* completion_chunk(const char* text, const char* finish) {
    char* esc = json_escape(text);
    size_t n = strlen(esc) + 256;
    char* out = malloc(n);
    if (finish)
        snprintf(out, n, "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                 "\"model\":\"c-echo\",\"choices\":[{\"index\":0,\"delta\":{},"
                 "\"finish_reason\":\"%s\"}]}", finish);
    else
        snprintf(out, n, "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
                 "\"model\":\"c-echo\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
                 "\"assistant\",\"content\":\"%s\"},\"finish_reason\":null}]}", esc);
    free(esc);
    return out;
}

/* ---- methods ----------------------------------------------------------------------- */

static int do_register(const char* req, size_t n, cliproxy_buffer* response, int again) {
#ifdef BAD_JSON
    (void)req; (void)n; (void)again;
    return reply(response, "{\"ok\":true,\"result\":{\"schema_version\":1,");
#else
    char* cfg = find_string(req, n, "config_yaml");
    eventf(again ? "reconfigure %s" : "register %s", cfg ? cfg : "", 0);
    free(cfg);
    host_log("info", "c-test registering", NULL);
    return ok_reply(response,
        "{\"schema_version\":1,\"metadata\":{\"Name\":\"c-test\",\"Version\":\"1.0.0\","
        "\"Author\":\"aogstream tests\",\"GitHubRepository\":\"https://example.invalid/c-test\","
        "\"Logo\":\"\",\"ConfigFields\":[]},\"capabilities\":{\"model_provider\":true,"
        "\"executor\":true,\"executor_input_formats\":[\"openai\"],"
        "\"executor_output_formats\":[\"chat-completions\"],\"management_api\":true,\"command_line_plugin\":true}}");
#endif
}

static char* user_text(const char* req, size_t n) {
    char* payload64 = find_string(req, n, "Payload");
    if (payload64 == NULL) return strdup("");
    size_t len;
    char* payload = b64_decode(payload64, strlen(payload64), &len);
    free(payload64);
    return payload;
}

/* host.http.do_stream, then stream_read until done, then stream_close: the answer
 * says how many bytes and reads it took and what the body's first and last bytes are. */
static char* fetch_stream(const char* url_start, const char* cb) {
    const char* end = url_start;
    while (*end && *end != '"' && *end != ' ') end++;
    char req[1024];
    snprintf(req, sizeof req, "{\"method\":\"GET\",\"url\":\"%.*s\",\"host_callback_id\":\"%s\"}",
             (int)(end - url_start), url_start, cb ? cb : "");
    char* out = host_call("host.http.do_stream", req);
    char* sid = out ? find_string(out, strlen(out), "stream_id") : NULL;
    free(out);
    if (sid == NULL) return strdup("do_stream failed");
    size_t total = 0;
    int reads = 0;
    char first = 0, last = 0;
    for (;;) {
        snprintf(req, sizeof req, "{\"stream_id\":\"%s\"}", sid);
        char* chunk = host_call("host.http.stream_read", req);
        if (chunk == NULL || strstr(chunk, "\"ok\":true") == NULL) { free(chunk); break; }
        char* p64 = find_string(chunk, strlen(chunk), "payload");
        int done = strstr(chunk, "\"done\":true") != NULL;
        free(chunk);
        if (p64) {
            size_t n;
            char* data = b64_decode(p64, strlen(p64), &n);
            if (n) { if (!total) first = data[0]; last = data[n - 1]; }
            total += n;
            reads++;
            free(data);
            free(p64);
        }
        if (done) break;
    }
    snprintf(req, sizeof req, "{\"stream_id\":\"%s\"}", sid);
    free(host_call("host.http.stream_close", req));
    free(sid);
    char* answer = malloc(128);
    snprintf(answer, 128, "streamed %zu bytes in %d reads, %c..%c", total, reads, first, last);
    return answer;
}

/* host.model.execute (or, streamed, execute_stream + stream_read until done): the
 * gateway's own chat answer for <model>, as text. */
static char* ask_model(const char* model_start, int streamed, const char* cb) {
    const char* end = model_start;
    while (*end && *end != '"' && *end != ' ') end++;
    const char* body = "{\"max_tokens\":12,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char* body64 = b64_encode(body, strlen(body));
    char req[1024];
    snprintf(req, sizeof req,
             "{\"entry_protocol\":\"openai\",\"exit_protocol\":\"openai\",\"model\":\"%.*s\","
             "\"stream\":%s,\"body\":\"%s\",\"host_callback_id\":\"%s\"}",
             (int)(end - model_start), model_start, streamed ? "true" : "false", body64,
             cb ? cb : "");
    free(body64);
    char* out = host_call(streamed ? "host.model.execute_stream" : "host.model.execute", req);
    if (out == NULL || strstr(out, "\"ok\":true") == NULL) {
        char* msg = out ? find_string(out, strlen(out), "message") : NULL;
        free(out);
        char* answer = malloc(512);
        snprintf(answer, 512, "refused: %s", msg ? msg : "?");
        free(msg);
        return answer;
    }
    if (!streamed) {
        char* b64 = find_string(out, strlen(out), "body");
        free(out);
        size_t n;
        char* text = b64 ? b64_decode(b64, strlen(b64), &n) : strdup("");
        free(b64);
        return text;
    }
    char* sid = find_string(out, strlen(out), "stream_id");
    free(out);
    size_t cap = 65536, used = 0;
    char* text = calloc(cap, 1);
    for (int i = 0; i < 10000 && sid; i++) {
        snprintf(req, sizeof req, "{\"stream_id\":\"%s\"}", sid);
        char* chunk = host_call("host.model.stream_read", req);
        if (chunk == NULL) break;
        char* p64 = find_string(chunk, strlen(chunk), "payload");
        int done = strstr(chunk, "\"done\":true") != NULL;
        free(chunk);
        if (p64) {
            size_t n;
            char* data = b64_decode(p64, strlen(p64), &n);
            if (used + n < cap) { memcpy(text + used, data, n); used += n; }
            free(data);
            free(p64);
        }
        if (done) break;
    }
    if (sid) {
        snprintf(req, sizeof req, "{\"stream_id\":\"%s\"}", sid);
        free(host_call("host.model.stream_close", req));
        free(sid);
    }
    return text;
}

#ifdef CRASH
static void crash_now(void) { *(volatile int*)NULL = 1; }  /* SIGSEGV, as a buggy plugin */
#endif

static int failure_429(cliproxy_buffer* response) {
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"rate_limited\","
                           "\"message\":\"slow down\",\"retryable\":true,\"http_status\":429}}");
}

static int do_execute(const char* req, size_t n, cliproxy_buffer* response) {
    char* cb = find_string(req, n, "host_callback_id");
    char* check = user_text(req, n);
    int fail = strstr(check, "fail429") != NULL;
    free(check);
    if (fail) { free(cb); return failure_429(response); }
#ifdef CRASH
    char* asked = find_string(req, n, "Model");
    if (asked && strcmp(asked, "c-crash") == 0) crash_now();
    free(asked);
#endif
    host_log("info", "c-test executing", cb);
    char* payload = user_text(req, n);
    char* answer = strdup("hello from C");
    const char* fetch = strstr(payload, "fetch ");
    const char* pull = strstr(payload, "fetchstream ");
    const char* ask = strstr(payload, "ask ");
    const char* askstream = strstr(payload, "askstream ");
    if (askstream) {
        free(answer);
        answer = ask_model(askstream + 10, 1, cb);
    } else if (ask) {
        free(answer);
        answer = ask_model(ask + 4, 0, cb);
    } else if (pull) {
        free(answer);
        answer = fetch_stream(pull + 12, cb);
    } else if (fetch) {
        fetch += 6;
        const char* end = fetch;
        while (*end && *end != '"' && *end != ' ') end++;
        char url[512];
        snprintf(url, sizeof url, "%.*s", (int)(end - fetch), fetch);
        char http_req[1024];
        snprintf(http_req, sizeof http_req,
                 "{\"method\":\"GET\",\"url\":\"%s\",\"headers\":{\"X-Plugin\":[\"c-test\"]},"
                 "\"host_callback_id\":\"%s\"}", url, cb ? cb : "");
        char* out = host_call("host.http.do", http_req);
        free(answer);
        if (out && strstr(out, "\"ok\":true")) {
            char* body64 = find_string(out, strlen(out), "Body");
            size_t blen;
            answer = body64 ? b64_decode(body64, strlen(body64), &blen) : strdup("");
            free(body64);
        } else {
            answer = strdup("http failed");
        }
        free(out);
    }
#ifdef CRASH
    if (strstr(payload, "whoami")) {
        free(answer);
        answer = malloc(32);
        snprintf(answer, 32, "pid %ld", (long)getpid());
    }
#endif
    if (strstr(payload, "echo-payload")) {  /* what reached the executor, for hook tests */
        char* model = find_string(req, n, "Model");
        size_t cap = strlen(payload) + 256;
        free(answer);
        answer = malloc(cap);
        snprintf(answer, cap, "%s model=%s%s%s", payload, model ? model : "",
                 contains(req, n, "\"X-Hooked\":[\"before\"]") ? " [X-Hooked]" : "",
                 contains(req, n, "\"X-Hooked-After\":[\"yes\"]") ? " [X-Hooked-After]" : "");
        free(model);
    }
    char* esc = json_escape(answer);
    size_t cap = strlen(esc) + 512;
    char* body = malloc(cap);
    snprintf(body, cap,
             "{\"id\":\"c1\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"c-echo\","
             "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},"
             "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,"
             "\"completion_tokens\":3,\"total_tokens\":4}}", esc);
    char* body64 = b64_encode(body, strlen(body));
    size_t rcap = strlen(body64) + 64;
    char* result = malloc(rcap);
    snprintf(result, rcap, "{\"Payload\":\"%s\",\"Headers\":null,\"Metadata\":null}", body64);
    ok_reply(response, result);
    free(result); free(body64); free(body); free(esc); free(answer); free(payload); free(cb);
    return 0;
}

struct async_job { char* stream_id; int forever; int failmid; int crash; };


static void* emit_loop(void* arg) {
    struct async_job* job = arg;
    const char* words[] = {"hello", " from", " a C", " thread"};
    int total = job->forever ? 1000000 : 4;
    for (int i = 0; i < total; i++) {
        char* chunk = completion_chunk(words[i % 4], NULL);
        char* c64 = b64_encode(chunk, strlen(chunk));
        size_t cap = strlen(c64) + 128;
        char* req = malloc(cap);
        snprintf(req, cap, "{\"stream_id\":\"%s\",\"payload\":\"%s\"}", job->stream_id, c64);
        char* out = host_call("host.stream.emit", req);
        int refused = out == NULL || strstr(out, "\"ok\":true") == NULL;
        free(out); free(req); free(c64); free(chunk);
        if (refused) {
            eventf("aborted %s %ld", job->stream_id, now_ms());
            free(job->stream_id); free(job);
            return NULL;
        }
#ifdef CRASH
        if (job->crash) crash_now();
#endif
        if (job->forever) usleep(5000);
        if (job->failmid) {
            char close_req[256];
            snprintf(close_req, sizeof close_req,
                     "{\"stream_id\":\"%s\",\"error\":\"upstream broke\"}", job->stream_id);
            free(host_call("host.stream.close", close_req));
            free(job->stream_id); free(job);
            return NULL;
        }
    }
    char* last = completion_chunk("", "stop");
    char* c64 = b64_encode(last, strlen(last));
    char req[1024];
    snprintf(req, sizeof req, "{\"stream_id\":\"%s\",\"payload\":\"%s\"}", job->stream_id, c64);
    free(host_call("host.stream.emit", req));
    snprintf(req, sizeof req, "{\"stream_id\":\"%s\"}", job->stream_id);
    free(host_call("host.stream.close", req));
    free(c64); free(last); free(job->stream_id); free(job);
    return NULL;
}

static int do_execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* cb = find_string(req, n, "host_callback_id");
    host_log("debug", "c-test streaming", cb);
    free(cb);
    char* model = find_string(req, n, "Model");
    int async_mode = model && strcmp(model, "c-async") == 0;
    int crash = model && strcmp(model, "c-crash") == 0;
    async_mode = async_mode || crash;
    free(model);
    char* check = user_text(req, n);
    int fail = strstr(check, "fail429") != NULL;
    free(check);
    if (fail) return failure_429(response);
    if (async_mode) {
        struct async_job* job = malloc(sizeof *job);
        job->stream_id = find_string(req, n, "stream_id");
        char* payload = user_text(req, n);
        job->forever = strstr(payload, "forever") != NULL;
        job->failmid = strstr(payload, "failmid") != NULL;
        job->crash = crash;
        free(payload);
        pthread_t t;
        pthread_create(&t, NULL, emit_loop, job);
        pthread_detach(t);
        return ok_reply(response, "{\"headers\":null}");
    }
    const char* words[] = {"hello", " from", " C"};
    char result[8192];
    size_t o = (size_t)snprintf(result, sizeof result, "{\"headers\":null,\"chunks\":[");
    for (int i = 0; i < 4; i++) {
        char* chunk = i < 3 ? completion_chunk(words[i], NULL) : completion_chunk("", "stop");
        char* c64 = b64_encode(chunk, strlen(chunk));
        o += (size_t)snprintf(result + o, sizeof result - o, "%s{\"Payload\":\"%s\"}",
                              i ? "," : "", c64);
        free(c64); free(chunk);
    }
    snprintf(result + o, sizeof result - o, "]}");
    return ok_reply(response, result);
}

/* command_line.execute: greet, list the arguments, exit 3 on "fail". */
static int do_command(const char* req, size_t n, cliproxy_buffer* response) {
    const char* flags = strstr(req, "\"TriggeredFlags\"");
    const char* greet_at = flags ? strstr(flags, "\"greet\":{") : NULL;
    char* greet = greet_at ? find_string(greet_at, n - (size_t)(greet_at - req), "Value") : NULL;
    const char* loud_at = flags ? strstr(flags, "\"loud\":{") : NULL;
    int loud = loud_at && strstr(loud_at, "\"Value\":true") != NULL;
    const char* args = strstr(req, "\"Args\":");
    char argbuf[512] = "null";
    if (args && args[7] == '[') {
        const char* end = strchr(args + 7, ']');
        size_t len = end ? (size_t)(end - (args + 7)) + 1 : 0;
        if (len < sizeof argbuf) { memcpy(argbuf, args + 7, len); argbuf[len] = 0; }
    }
    char out[1024];
    snprintf(out, sizeof out, "hello %s\nargs %s\n", greet ? greet : "world", argbuf);
    if (loud) for (char* p = out; *p; p++) if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 32);
    int code = strstr(argbuf, "\"fail\"") != NULL ? 3 : 0;
    char* out64 = b64_encode(out, strlen(out));
    char* err64 = b64_encode("c-test ran\n", 11);
    char result[2048];
    snprintf(result, sizeof result, "{\"Stdout\":\"%s\",\"Stderr\":\"%s\",\"Auths\":null,"
             "\"ExitCode\":%d}", out64, err64, code);
    free(out64); free(err64); free(greet);
    return ok_reply(response, result);
}

/* management.handle: a JSON echo for routes, an HTML page for the resource. */
static int do_manage(const char* req, size_t n, cliproxy_buffer* response) {
    char* method = find_string(req, n, "Method");
    char* path = find_string(req, n, "Path");
    char* body64 = find_string(req, n, "Body");
    size_t blen = 0;
    char* body = body64 ? b64_decode(body64, strlen(body64), &blen) : strdup("");
    char* text;
    const char* type;
    int status = 200;
    if (path && strstr(path, "/v0/resource/plugins/") == path) {
        text = strdup("<html><body><h1>c-test page</h1></body></html>");
        type = "text/html";
    } else {
        char* eb = json_escape(body ? body : "");
        char* em = json_escape(method ? method : "");
        char* ep = json_escape(path ? path : "");
        size_t len = strlen(eb) + strlen(em) + strlen(ep) + 96;
        text = malloc(len);
        snprintf(text, len, "{\"plugin\":\"c-test\",\"method\":\"%s\",\"path\":\"%s\","
                 "\"body\":\"%s\"}", em, ep, eb);
        free(eb); free(em); free(ep);
        type = "application/json";
        if (method && strcmp(method, "POST") == 0) status = 201;
    }
    char* text64 = b64_encode(text, strlen(text));
    size_t len = strlen(text64) + 160;
    char* result = malloc(len);
    snprintf(result, len, "{\"StatusCode\":%d,\"Headers\":{\"Content-Type\":[\"%s\"],"
             "\"X-C-Test\":[\"yes\"]},\"Body\":\"%s\"}", status, type, text64);
    int rc = ok_reply(response, result);
    free(result); free(text64); free(text); free(body); free(body64); free(method); free(path);
    return rc;
}

static int plugin_dispatch(const char* method, const char* req, size_t request_len,
                           cliproxy_buffer* response) {
    if (strcmp(method, "plugin.register") == 0)
        return do_register(req, request_len, response, 0);
    if (strcmp(method, "plugin.reconfigure") == 0)
        return do_register(req, request_len, response, 1);
    if (strcmp(method, "management.register") == 0)
        return ok_reply(response, "{\"routes\":[{\"Method\":\"get\",\"Path\":\"/c-test/status/\","
                                  "\"Menu\":\"\",\"Description\":\"c-test status\"},"
                                  "{\"Method\":\"POST\",\"Path\":\"/v0/management/c-test/status\","
                                  "\"Menu\":\"\",\"Description\":\"c-test echo\"},"
                                  "{\"Method\":\"GET\",\"Path\":\"/plugins\",\"Menu\":\"\","
                                  "\"Description\":\"taken by the host\"}],"
                                  "\"Resources\":[{\"Path\":\"page\",\"Menu\":\"C test\","
                                  "\"Description\":\"a page\"}]}");
    if (strcmp(method, "management.handle") == 0) return do_manage(req, request_len, response);
    if (strcmp(method, "command_line.register") == 0)
        return ok_reply(response, "{\"Flags\":[{\"Name\":\"greet\",\"Usage\":\"who to greet\","
                                  "\"Type\":\"string\",\"DefaultValue\":\"world\"},"
                                  "{\"Name\":\"loud\",\"Usage\":\"shout\",\"Type\":\"\","
                                  "\"DefaultValue\":\"false\"}]}");
    if (strcmp(method, "command_line.execute") == 0) return do_command(req, request_len, response);
#ifdef CRASH
#define EXTRA_MODELS ",{\"ID\":\"c-crash\"}"
#else
#define EXTRA_MODELS ""
#endif
    if (strcmp(method, "model.static") == 0)
        return ok_reply(response, "{\"Provider\":\"C-Test\",\"Models\":[{\"ID\":\"c-echo\"},"
                                  "{\"ID\":\"c-async\"}" EXTRA_MODELS "],\"AuthUpdate\":null}");
    if (strcmp(method, "executor.execute") == 0) return do_execute(req, request_len, response);
    if (strcmp(method, "executor.execute_stream") == 0)
        return do_execute_stream(req, request_len, response);
    return reply(response, "{\"ok\":false,\"error\":{\"code\":\"unknown_method\","
                           "\"message\":\"unknown method\",\"http_status\":501}}");
}

static void plugin_free(void* ptr, size_t len) {
    if (ptr == NULL) return;
    char* base = (char*)ptr - 16;
    size_t given;
    memcpy(&given, base, sizeof given);
    if (given != len) eventf("badfree%s %ld", "", (long)len);
    free(base);
}

static void plugin_shutdown(void) { eventf("shutdown%s", "", 0); }

#ifdef NO_INIT
#define INIT_NAME cliproxy_plugin_init_missing
#else
#define INIT_NAME cliproxy_plugin_init
#endif

__attribute__((visibility("default")))
int INIT_NAME(const cliproxy_host_api* h, cliproxy_plugin_api* plugin) {
    host = h;
#ifdef CRASH_INIT
    *(volatile int*)NULL = 1;  /* crashes while being loaded (for isolation: process) */
#endif
#ifdef BAD_RC
    (void)plugin;
    return 3;
#endif
#ifdef BAD_ABI
    plugin->abi_version = 2;
#else
    plugin->abi_version = 1;
#endif
    plugin->call = plugin_call;
    plugin->free_buffer = plugin_free;
    plugin->shutdown = plugin_shutdown;
    return 0;
}
