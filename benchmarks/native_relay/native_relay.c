/* native-relay: a CLIProxyAPI-ABI executor (C, libc only) that relays OpenAI chat to the
 * benchmarks' stub engine, the in-process twin of benchmarks/relay_plugin.
 *
 * It declares only an executor speaking `openai` (no models: aogstream routes the
 * models nobody else serves to such an executor). Its outbound HTTP goes through the
 * host, as CPA asks of plugins: executor.execute POSTs the payload with host.http.do
 * and answers the body; executor.execute_stream opens host.http.do_stream, pulls the
 * SSE answer with host.http.stream_read, and pushes each `data:` payload with
 * host.stream.emit (before its call returns), then host.stream.close.
 * With `transport: direct` in its config it talks HTTP/1.1 to the stub itself instead
 * (one keep-alive connection per calling thread, plain sockets), as plugins that do
 * their own I/O do: then a chunk costs one host.stream.emit and nothing else.
 * The stub's address (host:port) comes from AOGSTREAM_BENCH_STUB. Built by
 * tools/build-native-plugins.sh into .cache/native-plugins/native-relay.so.
 */
/* The ABI boilerplate shared with the C test plugins; B64_INDEX is filled at init. */
static void index_b64(void);
#define CLIPROXY_ON_INIT index_b64()
#include "../../tests/native/cliproxy_plugin.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

static int direct;  /* transport: direct in the plugin's config */
static signed char B64_INDEX[256];

static void index_b64(void) {
    memset(B64_INDEX, -1, sizeof B64_INDEX);
    for (int i = 0; i < 64; i++) B64_INDEX[(uint8_t)B64[i]] = (signed char)i;
}

/* Appends the decoded base64 text [in, in+n) to out (room for n*3/4 bytes needed). */
static size_t b64_decode_into(const char* in, size_t n, char* out) {
    uint32_t v = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int d = B64_INDEX[(uint8_t)in[i]];
        if (d < 0) break;
        v = (v << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) { bits -= 8; out[o++] = (char)((v >> bits) & 0xff); }
    }
    return o;
}

static int reply_text(cliproxy_buffer* response, char* text, size_t n) {
    response->ptr = text;
    response->len = n;
    return 0;
}

static int fail_reply(cliproxy_buffer* response, const char* message) {
    size_t n = strlen(message) + 96;
    char* text = malloc(n);
    int k = snprintf(text, n, "{\"ok\":false,\"error\":{\"code\":\"relay_failed\","
                     "\"message\":\"%s\",\"http_status\":502}}", message);
    return reply_text(response, text, (size_t)k);
}

/* The host.http request for the stub: POST <stub>/v1/chat/completions with the payload. */
static char* stub_request(const char* req, size_t n, size_t* len) {
    const char* stub = getenv("AOGSTREAM_BENCH_STUB");
    size_t plen;
    const char* payload = find_span(req, n, "Payload", &plen);
    size_t cblen = 0;
    const char* cb = find_span(req, n, "host_callback_id", &cblen);
    if (stub == NULL || payload == NULL) return NULL;
    size_t cap = plen + cblen + strlen(stub) + 256;
    char* out = malloc(cap);
    *len = (size_t)snprintf(out, cap,
        "{\"method\":\"POST\",\"url\":\"http://%s/v1/chat/completions\",\"headers\":"
        "{\"Content-Type\":[\"application/json\"]},\"body\":\"%.*s\","
        "\"host_callback_id\":\"%.*s\"}", stub, (int)plen, payload, (int)cblen, cb ? cb : "");
    return out;
}

static int execute(const char* req, size_t n, cliproxy_buffer* response) {
    size_t len;
    char* http = stub_request(req, n, &len);
    if (http == NULL) return fail_reply(response, "AOGSTREAM_BENCH_STUB is not set");
    size_t out_len;
    char* out = host_call_n("host.http.do", http, len, &out_len);
    free(http);
    size_t blen;
    const char* body = out ? find_span(out, out_len, "Body", &blen) : NULL;
    if (body == NULL) { free(out); return fail_reply(response, "the stub did not answer"); }
    size_t cap = blen + 96;
    char* text = malloc(cap);
    int k = snprintf(text, cap, "{\"ok\":true,\"result\":{\"Payload\":\"%.*s\","
                     "\"Headers\":null,\"Metadata\":null}}", (int)blen, body);
    free(out);
    return reply_text(response, text, (size_t)k);
}

static int emit(const char* sid, const char* data, size_t n) {
    char* b = b64_encode(data, n);
    size_t cap = strlen(b) + strlen(sid) + 48;
    char* req = malloc(cap);
    int k = snprintf(req, cap, "{\"stream_id\":\"%s\",\"payload\":\"%s\"}", sid, b);
    size_t out_len;
    char* out = host_call_n("host.stream.emit", req, (size_t)k, &out_len);
    int ok = out != NULL && strstr(out, "\"ok\":true") != NULL;
    free(out); free(req); free(b);
    return ok;
}

/* Pull the stub's SSE answer and emit each data payload, in this call's thread. */
static int execute_stream(const char* req, size_t n, cliproxy_buffer* response) {
    char* sid = find_string(req, n, "stream_id");
    size_t len;
    char* http = stub_request(req, n, &len);
    if (http == NULL || sid == NULL) {
        free(http); free(sid);
        return fail_reply(response, "AOGSTREAM_BENCH_STUB is not set");
    }
    size_t out_len;
    char* out = host_call_n("host.http.do_stream", http, len, &out_len);
    free(http);
    char* hsid = out ? find_string(out, out_len, "stream_id") : NULL;
    free(out);
    if (hsid == NULL) { free(sid); return fail_reply(response, "the stub did not answer"); }
    char rreq[128];
    int rlen = snprintf(rreq, sizeof rreq, "{\"stream_id\":\"%s\"}", hsid);
    size_t cap = 1 << 16, used = 0;
    char* buf = malloc(cap);
    int open = 1;
    while (open) {
        char* chunk = host_call_n("host.http.stream_read", rreq, (size_t)rlen, &out_len);
        if (chunk == NULL || strstr(chunk, "\"ok\":true") == NULL) { free(chunk); break; }
        size_t plen;
        const char* p64 = find_span(chunk, out_len, "payload", &plen);
        int done = strstr(chunk, "\"done\":true") != NULL;
        if (p64) {
            if (used + plen + 4 > cap) {
                while (used + plen + 4 > cap) cap *= 2;
                buf = realloc(buf, cap);
            }
            used += b64_decode_into(p64, plen, buf + used);
        }
        free(chunk);
        /* every complete event: its "data: " line */
        size_t start = 0;
        for (size_t i = 0; i + 1 < used; i++) {
            if (buf[i] != '\n' || buf[i + 1] != '\n') continue;
            const char* ev = buf + start;
            size_t evlen = i - start;
            start = i + 2;
            if (evlen > 6 && memcmp(ev, "data: ", 6) == 0) {
                ev += 6; evlen -= 6;
                if (evlen == 6 && memcmp(ev, "[DONE]", 6) == 0) continue;
                if (!emit(sid, ev, evlen)) { open = 0; break; }  /* the client left */
            }
        }
        memmove(buf, buf + start, used - start);
        used -= start;
        if (done) break;
    }
    free(buf);
    free(host_call_n("host.http.stream_close", rreq, (size_t)rlen, NULL));
    char creq[128];
    int clen = snprintf(creq, sizeof creq, "{\"stream_id\":\"%s\"}", sid);
    free(host_call_n("host.stream.close", creq, (size_t)clen, NULL));
    free(sid); free(hsid);
    return ok_reply(response, "{\"headers\":null}");
}

/* ---- transport: direct (a minimal HTTP/1.1 client for the stub) -------------------- */

static __thread int conn_fd = -1;
static __thread char rbuf[65536];
static __thread size_t rlen, rpos;

static void conn_close(void) {
    if (conn_fd >= 0) close(conn_fd);
    conn_fd = -1;
    rlen = rpos = 0;
}

static int conn_open(void) {
    const char* stub = getenv("AOGSTREAM_BENCH_STUB");
    if (stub == NULL) return -1;
    const char* colon = strrchr(stub, ':');
    if (colon == NULL) return -1;
    char addr[64];
    snprintf(addr, sizeof addr, "%.*s", (int)(colon - stub), stub);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr*)&sa, sizeof sa) != 0) { close(fd); return -1; }
    conn_fd = fd;
    rlen = rpos = 0;
    return 0;
}

static int fill(void) {
    if (rpos > 0) { memmove(rbuf, rbuf + rpos, rlen - rpos); rlen -= rpos; rpos = 0; }
    if (rlen == sizeof rbuf) return -1;
    ssize_t k = recv(conn_fd, rbuf + rlen, sizeof rbuf - rlen, 0);
    if (k <= 0) return -1;
    rlen += (size_t)k;
    return 0;
}

/* The next line (without CRLF) into out; -1 when the connection ends. */
static int read_line(char* out, size_t cap) {
    for (;;) {
        for (size_t i = rpos; i + 1 < rlen; i++) {
            if (rbuf[i] == '\r' && rbuf[i + 1] == '\n') {
                size_t n = i - rpos < cap - 1 ? i - rpos : cap - 1;
                memcpy(out, rbuf + rpos, n);
                out[n] = 0;
                rpos = i + 2;
                return 0;
            }
        }
        if (fill() != 0) return -1;
    }
}

static int read_n(char* out, size_t n) {
    size_t got = 0;
    while (got < n) {
        if (rpos == rlen && fill() != 0) return -1;
        size_t k = rlen - rpos < n - got ? rlen - rpos : n - got;
        memcpy(out + got, rbuf + rpos, k);
        rpos += k;
        got += k;
    }
    return 0;
}

/* POST the payload; on return the headers are read: chunked or content length. */
static int post(const char* body, size_t n, int* chunked, long* clen, int* keep) {
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v1/chat/completions HTTP/1.1\r\nHost: stub\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", n);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (conn_fd < 0 && conn_open() != 0) return -1;
        char line[1024];
        if (send(conn_fd, head, (size_t)hn, MSG_NOSIGNAL) != hn ||
            send(conn_fd, body, n, MSG_NOSIGNAL) != (ssize_t)n ||
            read_line(line, sizeof line) != 0) {
            conn_close();  /* a kept connection the stub closed: once more on a new one */
            continue;
        }
        *chunked = 0; *clen = -1; *keep = 1;
        while (read_line(line, sizeof line) == 0 && line[0]) {
            for (char* c = line; *c && *c != ':'; c++) if (*c >= 'A' && *c <= 'Z') *c += 32;
            if (strncmp(line, "content-length:", 15) == 0) *clen = atol(line + 15);
            if (strncmp(line, "transfer-encoding:", 18) == 0 && strstr(line, "chunked"))
                *chunked = 1;
            if (strncmp(line, "connection:", 11) == 0 && strstr(line, "close")) *keep = 0;
        }
        return 0;
    }
    return -1;
}

static int execute_direct(const char* req, size_t n, cliproxy_buffer* response) {
    size_t plen;
    const char* p64 = find_span(req, n, "Payload", &plen);
    if (p64 == NULL) return fail_reply(response, "no Payload");
    char* body = malloc(plen);
    size_t blen = b64_decode_into(p64, plen, body);
    int chunked, keep;
    long clen;
    if (post(body, blen, &chunked, &clen, &keep) != 0 || chunked || clen < 0) {
        free(body); conn_close();
        return fail_reply(response, "the stub did not answer");
    }
    free(body);
    char* answer = malloc((size_t)clen + 1);
    if (read_n(answer, (size_t)clen) != 0) {
        free(answer); conn_close();
        return fail_reply(response, "the stub's answer broke");
    }
    if (!keep) conn_close();
    char* b = b64_encode(answer, (size_t)clen);
    free(answer);
    size_t cap = strlen(b) + 96;
    char* text = malloc(cap);
    int k = snprintf(text, cap, "{\"ok\":true,\"result\":{\"Payload\":\"%s\","
                     "\"Headers\":null,\"Metadata\":null}}", b);
    free(b);
    return reply_text(response, text, (size_t)k);
}

static int emit(const char* sid, const char* data, size_t n);

static int execute_stream_direct(const char* req, size_t n, cliproxy_buffer* response) {
    char* sid = find_string(req, n, "stream_id");
    size_t plen;
    const char* p64 = find_span(req, n, "Payload", &plen);
    if (sid == NULL || p64 == NULL) { free(sid); return fail_reply(response, "bad request"); }
    char* body = malloc(plen);
    size_t blen = b64_decode_into(p64, plen, body);
    int chunked, keep;
    long clen;
    int rc = post(body, blen, &chunked, &clen, &keep);
    free(body);
    if (rc != 0 || !chunked) {
        free(sid); conn_close();
        return fail_reply(response, "the stub did not stream");
    }
    size_t cap = 1 << 16, used = 0;
    char* buf = malloc(cap);
    int ok = 1, open = 1;
    char line[64];
    while (open && ok) {
        if (read_line(line, sizeof line) != 0) { ok = 0; break; }
        size_t size = (size_t)strtoul(line, NULL, 16);
        if (size == 0) { read_line(line, sizeof line); break; }
        if (used + size > cap) { while (used + size > cap) cap *= 2; buf = realloc(buf, cap); }
        if (read_n(buf + used, size) != 0 || read_line(line, sizeof line) != 0) { ok = 0; break; }
        used += size;
        size_t start = 0;
        for (size_t i = 0; i + 1 < used; i++) {
            if (buf[i] != '\n' || buf[i + 1] != '\n') continue;
            const char* ev = buf + start;
            size_t evlen = i - start;
            start = i + 2;
            if (evlen > 6 && memcmp(ev, "data: ", 6) == 0) {
                ev += 6; evlen -= 6;
                if (evlen == 6 && memcmp(ev, "[DONE]", 6) == 0) continue;
                if (!emit(sid, ev, evlen)) { open = 0; break; }  /* the client left */
            }
        }
        memmove(buf, buf + start, used - start);
        used -= start;
    }
    free(buf);
    if (!ok || !open || !keep) conn_close();  /* unread bytes: the connection is spent */
    char creq[128];
    int clen2 = snprintf(creq, sizeof creq, "{\"stream_id\":\"%s\"%s}", sid,
                         ok ? "" : ",\"error\":\"the stub's stream broke\"");
    free(host_call_n("host.stream.close", creq, (size_t)clen2, NULL));
    free(sid);
    return ok_reply(response, "{\"headers\":null}");
}

static int plugin_dispatch(const char* method, const char* req, size_t request_len,
                           cliproxy_buffer* response) {
    if (strcmp(method, "plugin.register") == 0 || strcmp(method, "plugin.reconfigure") == 0) {
        size_t clen;
        const char* c64 = find_span(req, request_len, "config_yaml", &clen);
        if (c64) {
            char* cfg = calloc(clen + 4, 1);
            b64_decode_into(c64, clen, cfg);
            direct = strstr(cfg, "transport: direct") != NULL;
            free(cfg);
        }
        return ok_reply(response,
            "{\"schema_version\":1,\"metadata\":{\"Name\":\"native-relay\",\"Version\":\"1.0.0\","
            "\"Author\":\"aogstream benchmarks\",\"GitHubRepository\":"
            "\"https://example.invalid/native-relay\",\"Logo\":\"\",\"ConfigFields\":[]},"
            "\"capabilities\":{\"executor\":true,\"executor_input_formats\":[\"openai\"],"
            "\"executor_output_formats\":[\"openai\"]}}");
    }
    if (strcmp(method, "executor.identifier") == 0)
        return ok_reply(response, "{\"identifier\":\"native-relay\"}");
    if (strcmp(method, "executor.execute") == 0)
        return direct ? execute_direct(req, request_len, response)
                      : execute(req, request_len, response);
    if (strcmp(method, "executor.execute_stream") == 0)
        return direct ? execute_stream_direct(req, request_len, response)
                      : execute_stream(req, request_len, response);
    return unknown_method(response);
}
