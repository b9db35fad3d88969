// go-echo-plugin: a provider plugin written the way AOG's Go plugins are (hashicorp/go-plugin
// Serve, AOG's handshake, protocol.ProviderService), so that the tests can prove aogstream's host
// runs Go plugins unchanged. It echoes, streams tokens, fails and sleeps on request, and, like
// the Python echo test plugin, appends what it saw (notably cancellations and the Shutdown) as
// JSON lines to the file named by ECHO_PLUGIN_EVENTS, with CLOCK_MONOTONIC times.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/intel/aog/plugin-sdk/protocol"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// The manifest the plugin folder holds (plugin.json) is also what GetManifest answers.
//
//go:embed plugin.json
var manifestJSON []byte

// AOG's handshake (plugin-sdk/server/handshake.go): a host with another cookie or another
// protocol version refuses this plugin, and this plugin refuses to run without the cookie.
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "AOG_PLUGIN",
	MagicCookieValue: "aog-provider-plugin-v1",
}

var logger = hclog.New(&hclog.LoggerOptions{
	Name:       "go-echo-plugin",
	Level:      hclog.Trace,
	Output:     os.Stderr, // the real stderr: go-plugin's Serve swaps os.Stderr for a pipe later
	JSONFormat: true,
})

// ---- events ------------------------------------------------------------------------------

var eventsMu sync.Mutex

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func record(event string, fields map[string]interface{}) {
	path := os.Getenv("ECHO_PLUGIN_EVENTS")
	if path == "" {
		return
	}
	ev := map[string]interface{}{"event": event, "t": monotonic(), "pid": os.Getpid(), "plugin": "go"}
	for k, v := range fields {
		ev[k] = v
	}
	line, _ := json.Marshal(ev)
	eventsMu.Lock()
	defer eventsMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		logger.Error("cannot record event", "error", err)
		return
	}
	defer f.Close()
	f.Write(append(line, '\n'))
}

// ---- requests ----------------------------------------------------------------------------

type request map[string]interface{}

func parse(data []byte) request {
	req := request{}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &req); err != nil {
			return request{"_invalid": err.Error()}
		}
	}
	return req
}

func (r request) str(key string) string {
	if v, ok := r[key]; ok && v != nil {
		return fmt.Sprint(v)
	}
	return ""
}

func (r request) num(key string, def float64) float64 {
	if v, ok := r[key].(float64); ok {
		return v
	}
	return def
}

func (r request) has(key string) bool {
	v, ok := r[key]
	return ok && v != nil
}

func chunk(tag, content string, finished bool) []byte {
	out := map[string]interface{}{
		"id": tag, "model": "go-echo", "created_at": time.Now().UTC().Format(time.RFC3339Nano),
		"message":  map[string]string{"role": "assistant", "content": content},
		"finished": finished,
	}
	if finished {
		out["finish_reason"] = "stop"
	}
	b, _ := json.Marshal(out)
	return b
}

// sleep waits d or until ctx ends; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func seconds(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// ---- the service -------------------------------------------------------------------------

type echo struct {
	protocol.UnimplementedProviderServiceServer
}

func (echo) GetManifest(ctx context.Context, _ *protocol.GetManifestRequest) (*protocol.GetManifestResponse, error) {
	var compact map[string]interface{}
	if err := json.Unmarshal(manifestJSON, &compact); err != nil {
		return &protocol.GetManifestResponse{Code: 11, Message: err.Error()}, nil
	}
	b, _ := json.Marshal(compact)
	return &protocol.GetManifestResponse{Code: 0, Message: "success", ManifestJson: b}, nil
}

func (echo) HealthCheck(ctx context.Context, _ *protocol.HealthCheckRequest) (*protocol.HealthCheckResponse, error) {
	return &protocol.HealthCheckResponse{Code: 0, Message: "success"}, nil
}

func (echo) CheckEngine(ctx context.Context, _ *protocol.CheckEngineRequest) (*protocol.CheckEngineResponse, error) {
	return &protocol.CheckEngineResponse{Code: 0, Message: "success", Installed: true}, nil
}

func (echo) StartEngine(ctx context.Context, r *protocol.StartEngineRequest) (*protocol.StartEngineResponse, error) {
	logger.Debug("start engine (nothing to start)", "mode", r.Mode)
	return &protocol.StartEngineResponse{Code: 0, Message: "success"}, nil
}

func (echo) GetOperateStatus(ctx context.Context, _ *protocol.GetOperateStatusRequest) (*protocol.GetOperateStatusResponse, error) {
	return &protocol.GetOperateStatusResponse{Status: 1}, nil
}

func (echo) InvokeService(ctx context.Context, r *protocol.InvokeServiceRequest) (*protocol.InvokeServiceResponse, error) {
	req := parse(r.RequestData)
	tag := req.str("id")
	record("unary", map[string]interface{}{"service": r.ServiceName, "id": tag})
	logger.Debug("invoke", "service", r.ServiceName, "id", tag)
	if req.has("_invalid") {
		return &protocol.InvokeServiceResponse{Code: 2, Message: "request_data is not JSON: " + req.str("_invalid")}, nil
	}
	if !sleep(ctx, seconds(req.num("sleep", 0))) {
		record("cancelled", map[string]interface{}{"service": r.ServiceName, "id": tag})
		logger.Info("call cancelled by the host", "id", tag)
		return nil, ctx.Err()
	}
	if req.has("fail_code") {
		msg := req.str("fail_message")
		if msg == "" {
			msg = "asked to fail"
		}
		logger.Warn("failing on request", "id", tag, "code", int(req.num("fail_code", 11)))
		return &protocol.InvokeServiceResponse{Code: int32(req.num("fail_code", 11)), Message: msg}, nil
	}
	var out []byte
	if r.ServiceName == "chat" {
		var b strings.Builder
		for i := 0; i < int(req.num("tokens", 5)); i++ {
			fmt.Fprintf(&b, "tok%d ", i)
		}
		out = chunk(tag, b.String(), true)
	} else {
		out, _ = json.Marshal(map[string]interface{}{"id": tag, "service": r.ServiceName, "echo": req, "plugin": "go"})
	}
	return &protocol.InvokeServiceResponse{Code: 0, Message: "success", ResponseData: out}, nil
}

func (echo) InvokeServiceStream(r *protocol.InvokeServiceRequest, s protocol.ProviderService_InvokeServiceStreamServer) error {
	ctx := s.Context()
	req := parse(r.RequestData)
	tag := req.str("id")
	n := int(req.num("tokens", 5))
	interval := seconds(req.num("interval", 0))
	meta := map[string]string{"content-type": "text/event-stream"}
	record("stream-start", map[string]interface{}{"service": r.ServiceName, "id": tag})
	sent := 0
	cancelled := func() error {
		record("cancelled", map[string]interface{}{"service": r.ServiceName, "id": tag, "sent": sent})
		logger.Info("stream cancelled by the host", "id", tag, "sent", sent)
		return ctx.Err()
	}
	if !sleep(ctx, seconds(req.num("first_delay", 0))) {
		return cancelled()
	}
	for i := 0; i < n; i++ {
		if req.has("error_after") && i == int(req.num("error_after", 0)) {
			logger.Error("failing mid-stream on request", "id", tag, "sent", sent)
			return s.Send(&protocol.InvokeServiceStreamResponse{Code: 11, Message: "asked to fail mid-stream", IsFinal: true})
		}
		data := append(append([]byte("data: "), chunk(tag, fmt.Sprintf("tok%d ", i), false)...), '\n', '\n')
		if err := s.Send(&protocol.InvokeServiceStreamResponse{Code: 0, ChunkData: data, Metadata: meta}); err != nil {
			return cancelled()
		}
		sent++
		if !sleep(ctx, interval) {
			return cancelled()
		}
	}
	last := append(append([]byte("data: "), chunk(tag, "", true)...), '\n', '\n')
	if err := s.Send(&protocol.InvokeServiceStreamResponse{Code: 0, ChunkData: last, Metadata: meta}); err != nil {
		return cancelled()
	}
	// AOG's reference plugins end with an empty final chunk.
	if err := s.Send(&protocol.InvokeServiceStreamResponse{Code: 0, IsFinal: true, Metadata: meta}); err != nil {
		return cancelled()
	}
	record("stream-end", map[string]interface{}{"id": tag, "sent": sent})
	return nil
}

func (echo) InvokeServiceBidi(s protocol.ProviderService_InvokeServiceBidiServer) error {
	ctx := s.Context()
	first, err := s.Recv()
	if err != nil {
		return err
	}
	if !first.IsFirst || first.ServiceName == "" {
		return s.Send(&protocol.InvokeServiceBidiResponse{Code: 2, Message: "the first message must have is_first and service_name"})
	}
	conn := first.Metadata["ws_conn_id"]
	record("bidi-start", map[string]interface{}{"conn": conn, "service": first.ServiceName})
	handle := func(m *protocol.InvokeServiceBidiRequest) (bool, error) {
		if m.MessageType == "text" && string(m.Data) == "fail" {
			logger.Warn("failing the session on request", "conn", conn)
			return false, s.Send(&protocol.InvokeServiceBidiResponse{Code: 11, Message: "asked to fail"})
		}
		return true, s.Send(&protocol.InvokeServiceBidiResponse{Code: 0, Data: m.Data, MessageType: m.MessageType})
	}
	msg := first
	for {
		if len(msg.Data) > 0 || msg.MessageType != "" {
			more, err := handle(msg)
			if err != nil || !more {
				if ctx.Err() != nil {
					record("cancelled", map[string]interface{}{"conn": conn})
				}
				return err
			}
		}
		msg, err = s.Recv()
		if err == io.EOF {
			record("bidi-end", map[string]interface{}{"conn": conn})
			return nil
		}
		if err != nil {
			record("cancelled", map[string]interface{}{"conn": conn})
			logger.Info("session cancelled by the host", "conn", conn)
			return err
		}
	}
}

// ---- go-plugin ---------------------------------------------------------------------------

type providerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (providerPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	protocol.RegisterProviderServiceServer(s, echo{})
	return nil
}

func (providerPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return protocol.NewProviderServiceClient(c), nil
}

func main() {
	record("start", nil)
	logger.Info("serving", "pid", os.Getpid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         plugin.PluginSet{"provider": providerPlugin{}},
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          logger.Named("go-plugin"),
	})
	// Serve returns when the host's Shutdown rpc stopped the gRPC server.
	record("shutdown", nil)
	logger.Info("stopped on the host's Shutdown")
}
