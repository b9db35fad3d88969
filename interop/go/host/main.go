// aog-go-host: launches one plugin executable the way AOG's Go host does (hashicorp/go-plugin
// client, AOG's handshake, gRPC only, no AutoMTLS, AOG_VERSION in the environment, the working
// directory two levels above the executable) and calls protocol.ProviderService on it, step by
// step, so that the tests can prove Python plugins run unchanged under a Go host.
//
// Steps come as a JSON array in -steps; each prints one JSON line on stdout with its result
// (the plugin's own stdout and stderr, and this host's hclog lines, go to stderr). Every run
// ends with go-plugin's Kill (Shutdown rpc, 2 s grace, then SIGKILL) and a "kill" line saying
// how the process ended.
//
//	aog-go-host -plugin path/to/bin/echo-plugin -steps '[{"op":"health"},{"op":"unary",...}]'
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/intel/aog/plugin-sdk/protocol"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

type providerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (providerPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("this is the host side")
}

func (providerPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return protocol.NewProviderServiceClient(c), nil
}

// step is one call to make; unused fields are ignored per op.
type step struct {
	Op          string          `json:"op"`
	Service     string          `json:"service"`
	Request     json.RawMessage `json:"request"`
	Auth        string          `json:"auth"`
	TimeoutMs   int             `json:"timeout_ms"`
	CancelAfter int             `json:"cancel_after"` // stream: cancel after this many chunks
	Messages    []bidiMsg       `json:"messages"`
	Expect      *int            `json:"expect"` // bidi: responses to read before ending
	End         string          `json:"end"`    // bidi: "close" (half-close) or "cancel"
}

type bidiMsg struct {
	Type string `json:"type"`
	Data string `json:"data"` // text
	B64  string `json:"b64"`  // binary
}

func (m bidiMsg) bytes() []byte {
	if m.B64 != "" {
		b, _ := base64.StdEncoding.DecodeString(m.B64)
		return b
	}
	return []byte(m.Data)
}

type result map[string]interface{}

var out = json.NewEncoder(os.Stdout)

func emit(r result) { out.Encode(r) }

// errFields reports a gRPC-level failure (business failures are in code/message instead).
func errFields(r result, err error) {
	if err == nil {
		r["grpc_code"] = "OK"
		return
	}
	st, _ := status.FromError(err)
	r["grpc_code"] = st.Code().String()
	r["error"] = st.Message()
}

func callCtx(s step) (context.Context, context.CancelFunc) {
	if s.TimeoutMs > 0 {
		return context.WithTimeout(context.Background(), time.Duration(s.TimeoutMs)*time.Millisecond)
	}
	return context.WithCancel(context.Background())
}

func since(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

func runStep(pc protocol.ProviderServiceClient, rpc plugin.ClientProtocol, s step) result {
	r := result{"op": s.Op}
	ctx, cancel := callCtx(s)
	defer cancel()
	t0 := time.Now()
	defer func() { r["elapsed_ms"] = since(t0) }()
	switch s.Op {
	case "ping": // go-plugin's liveness check: grpc.health.v1 for the service "plugin"
		errFields(r, rpc.Ping())
	case "manifest":
		resp, err := pc.GetManifest(ctx, &protocol.GetManifestRequest{})
		errFields(r, err)
		if err == nil {
			r["code"], r["message"] = resp.Code, resp.Message
			r["manifest"] = json.RawMessage(resp.ManifestJson)
		}
	case "health":
		resp, err := pc.HealthCheck(ctx, &protocol.HealthCheckRequest{})
		errFields(r, err)
		if err == nil {
			r["code"], r["message"] = resp.Code, resp.Message
		}
	case "operate_status":
		resp, err := pc.GetOperateStatus(ctx, &protocol.GetOperateStatusRequest{})
		errFields(r, err)
		if err == nil {
			r["status"] = resp.Status
		}
	case "unary":
		resp, err := pc.InvokeService(ctx, &protocol.InvokeServiceRequest{
			ServiceName: s.Service, RequestData: s.Request, AuthInfo: s.Auth})
		errFields(r, err)
		if err == nil {
			r["code"], r["message"] = resp.Code, resp.Message
			r["response"] = string(resp.ResponseData)
		}
	case "stream":
		streamStep(ctx, cancel, pc, s, r)
	case "bidi":
		bidiStep(ctx, cancel, pc, s, r)
	default:
		r["error"] = "unknown op " + s.Op
	}
	return r
}

// streamStep reads the stream as AOG's host does: chunk_data concatenated into one SSE body,
// ending at the first is_final, at EOF or at the first non-success code.
func streamStep(ctx context.Context, cancel context.CancelFunc, pc protocol.ProviderServiceClient, s step, r result) {
	st, err := pc.InvokeServiceStream(ctx, &protocol.InvokeServiceRequest{
		ServiceName: s.Service, RequestData: s.Request, AuthInfo: s.Auth})
	chunks := []result{}
	var body strings.Builder
	for err == nil {
		var m *protocol.InvokeServiceStreamResponse
		m, err = st.Recv()
		if err != nil {
			break
		}
		chunks = append(chunks, result{"code": m.Code, "message": m.Message,
			"data": string(m.ChunkData), "is_final": m.IsFinal, "metadata": m.Metadata})
		if m.Code != 0 && m.Code != 200 {
			break
		}
		body.Write(m.ChunkData)
		if m.IsFinal {
			break
		}
		if s.CancelAfter > 0 && len(chunks) >= s.CancelAfter {
			cancel()
			r["cancelled"] = true
			break
		}
	}
	if err == io.EOF {
		err = nil
	}
	r["chunks"], r["body"] = chunks, body.String()
	errFields(r, err)
}

func bidiStep(ctx context.Context, cancel context.CancelFunc, pc protocol.ProviderServiceClient, s step, r result) {
	conn := fmt.Sprintf("go-host-%d", time.Now().UnixNano())
	r["conn"] = conn
	st, err := pc.InvokeServiceBidi(ctx)
	if err != nil {
		errFields(r, err)
		return
	}
	// Reader: every response, until EOF or an error.
	type item struct {
		m   *protocol.InvokeServiceBidiResponse
		err error
	}
	recv := make(chan item, 64)
	go func() {
		for {
			m, err := st.Recv()
			recv <- item{m, err}
			if err != nil {
				return
			}
		}
	}()
	for i, m := range s.Messages {
		req := &protocol.InvokeServiceBidiRequest{Data: m.bytes(), MessageType: m.Type}
		if i == 0 { // as AOG's host: the first message carries the session's identity
			req.IsFirst, req.ServiceName, req.AuthInfo = true, s.Service, s.Auth
			req.Metadata = map[string]string{"ws_conn_id": conn}
		}
		if err := st.Send(req); err != nil {
			break
		}
	}
	expect := len(s.Messages)
	if s.Expect != nil {
		expect = *s.Expect
	}
	responses := []result{}
	var last error
	ended := false
	add := func(m *protocol.InvokeServiceBidiResponse) {
		one := result{"code": m.Code, "message": m.Message, "type": m.MessageType}
		if m.MessageType == "binary" {
			one["b64"] = base64.StdEncoding.EncodeToString(m.Data)
		} else {
			one["data"] = string(m.Data)
		}
		responses = append(responses, one)
	}
	for len(responses) < expect && !ended {
		it := <-recv
		if it.err != nil {
			last, ended = it.err, true
			break
		}
		add(it.m)
		if it.m.Code != 0 && it.m.Code != 200 {
			break
		}
	}
	if !ended {
		if s.End == "cancel" {
			cancel()
			r["cancelled"] = true
		} else {
			st.CloseSend()
		}
		for it := range recv {
			if it.err != nil {
				last = it.err
				break
			}
			add(it.m)
		}
	}
	if last == io.EOF {
		last = nil
	}
	r["responses"] = responses
	errFields(r, last)
}

// logWriter passes go-plugin's host log (hclog JSON) to stderr and notes a forced kill.
type logWriter struct {
	mu     sync.Mutex
	forced bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	if strings.Contains(string(p), "plugin failed to exit gracefully") {
		w.forced = true
	}
	w.mu.Unlock()
	return os.Stderr.Write(p)
}

func main() {
	exe := flag.String("plugin", "", "the plugin executable (platforms entry of its plugin.yaml)")
	steps := flag.String("steps", "[]", "JSON array of calls to make")
	version := flag.Int("protocol-version", 1, "the app protocol version this host speaks (AOG's is 1)")
	startTimeout := flag.Duration("start-timeout", time.Minute, "go-plugin's StartTimeout")
	flag.Parse()
	var plan []step
	if err := json.Unmarshal([]byte(*steps), &plan); err != nil || *exe == "" {
		fmt.Fprintln(os.Stderr, "usage: aog-go-host -plugin EXE -steps JSON-ARRAY (", err, ")")
		os.Exit(2)
	}
	path, _ := filepath.Abs(*exe)
	name := filepath.Base(path)
	logs := &logWriter{}
	cmd := exec.Command(path)
	cmd.Dir = filepath.Dir(filepath.Dir(path)) // AOG: bin/<exe> → the plugin folder
	cmd.Env = []string{"AOG_VERSION=v0.7"}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  uint(*version),
			MagicCookieKey:   "AOG_PLUGIN",
			MagicCookieValue: "aog-provider-plugin-v1",
		},
		Plugins:          map[string]plugin.Plugin{"provider": providerPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     *startTimeout,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "plugin-" + name, Level: hclog.Debug, Output: logs, JSONFormat: true}),
		SyncStdout: os.Stderr, // our stdout carries the results
		SyncStderr: os.Stderr,
	})
	start := result{"op": "start"}
	t0 := time.Now()
	rpc, err := client.Client()
	var pc protocol.ProviderServiceClient
	if err == nil {
		var raw interface{}
		raw, err = rpc.Dispense("provider")
		if err == nil {
			pc = raw.(protocol.ProviderServiceClient)
		}
	}
	start["elapsed_ms"] = since(t0)
	if err != nil {
		start["error"] = err.Error()
		emit(start)
		client.Kill()
		os.Exit(1)
	}
	rc := client.ReattachConfig()
	start["network"], start["address"] = rc.Addr.Network(), rc.Addr.String()
	start["protocol"], start["pid"] = string(rc.Protocol), rc.Pid
	start["version"] = client.NegotiatedVersion()
	emit(start)
	for _, s := range plan {
		emit(runStep(pc, rpc, s))
	}
	kill := result{"op": "kill"}
	t1 := time.Now()
	client.Kill()
	kill["elapsed_ms"] = since(t1)
	kill["forced"] = logs.forced
	if ps := cmd.ProcessState; ps != nil {
		kill["exit_code"] = ps.ExitCode() // -1 when a signal ended it
		kill["exit"] = ps.String()
	}
	emit(kill)
}
