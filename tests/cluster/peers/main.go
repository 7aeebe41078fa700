// Command skein-test-peer: real gRPC and WebSocket peers for the proxy tests, built from the
// upstream grpc-go and gorilla/websocket modules (so the proxy is tested against the
// implementations users run, not against Skein's own code).
//
//	skein-test-peer grpc-serve --listen ADDR --name NAME [--fail-percent N] [--fail-code C]
//	skein-test-peer grpc-call  --target ADDR --count N [--stream K]
//	skein-test-peer ws-serve   --listen ADDR
//	skein-test-peer ws-call    --url ws://HOST/PATH --messages N
//
// The gRPC server implements grpc.health.v1.Health: Check answers SERVING (or fails with the
// configured code for fail-percent of calls) and sends its name in the `x-peer` header; Watch
// streams K updates then ends. The callers print one JSON line with what they saw.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: skein-test-peer grpc-serve|grpc-call|ws-serve|ws-call [flags]")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "grpc-serve":
		grpcServe(args)
	case "grpc-call":
		grpcCall(args)
	case "ws-serve":
		wsServe(args)
	case "ws-call":
		wsCall(args)
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, message)
	os.Exit(2)
}

type healthServer struct {
	healthpb.UnimplementedHealthServer
	name        string
	failPercent int
	failCode    codes.Code
}

func (s *healthServer) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-peer", s.name))
	if rand.Intn(100) < s.failPercent {
		return nil, status.Error(s.failCode, "failing on purpose")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *healthServer) Watch(request *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	_ = stream.SetHeader(metadata.Pairs("x-peer", s.name))
	count := 3
	fmt.Sscanf(request.Service, "%d", &count)
	for i := 0; i < count; i++ {
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return status.Error(codes.OK, "")
}

func grpcServe(args []string) {
	flags := flag.NewFlagSet("grpc-serve", flag.ExitOnError)
	listen := flags.String("listen", "0.0.0.0:9090", "address to listen on")
	name := flags.String("name", "grpc-peer", "name sent in the x-peer header")
	failPercent := flags.Int("fail-percent", 0, "percent of Check calls that fail")
	failCode := flags.Int("fail-code", int(codes.Unavailable), "gRPC status code of failures")
	_ = flags.Parse(args)
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err.Error())
	}
	server := grpc.NewServer()
	healthpb.RegisterHealthServer(server, &healthServer{name: *name, failPercent: *failPercent, failCode: codes.Code(*failCode)})
	if err := server.Serve(listener); err != nil {
		fail(err.Error())
	}
}

func grpcCall(args []string) {
	flags := flag.NewFlagSet("grpc-call", flag.ExitOnError)
	target := flags.String("target", "", "host:port to call")
	count := flags.Int("count", 1, "number of Check calls")
	stream := flags.Int("stream", 0, "instead, one Watch call expecting this many messages")
	_ = flags.Parse(args)
	conn, err := grpc.NewClient("passthrough:///"+*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err.Error())
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	result := map[string]any{}
	if *stream > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		watch, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: fmt.Sprint(*stream)})
		received := 0
		if err == nil {
			for {
				if _, err = watch.Recv(); err != nil {
					break
				}
				received++
			}
		}
		result["received"] = received
		result["code"] = status.Code(err).String()
		if err != nil && err.Error() == "EOF" {
			result["code"] = "OK"
		}
	} else {
		codesSeen := map[string]int{}
		peers := map[string]int{}
		for i := 0; i < *count; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var header metadata.MD
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header))
			cancel()
			codesSeen[status.Code(err).String()]++
			if names := header.Get("x-peer"); len(names) > 0 {
				peers[names[0]]++
			}
		}
		result["codes"] = codesSeen
		result["peers"] = peers
	}
	_ = json.NewEncoder(os.Stdout).Encode(result)
}

func wsServe(args []string) {
	flags := flag.NewFlagSet("ws-serve", flag.ExitOnError)
	listen := flags.String("listen", "0.0.0.0:8081", "address to listen on")
	_ = flags.Parse(args)
	upgrader := websocket.Upgrader{}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			kind, message, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(kind, append([]byte("echo:"), message...)); err != nil {
				return
			}
		}
	})
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fail(err.Error())
	}
}

func wsCall(args []string) {
	flags := flag.NewFlagSet("ws-call", flag.ExitOnError)
	url := flags.String("url", "", "ws:// URL")
	messages := flags.Int("messages", 3, "messages to send")
	_ = flags.Parse(args)
	dialer := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := dialer.Dial(*url, nil)
	if err != nil {
		fail(err.Error())
	}
	defer conn.Close()
	echoed := 0
	for i := 0; i < *messages; i++ {
		text := fmt.Sprintf("message %d", i)
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := conn.WriteMessage(websocket.TextMessage, []byte(text)); err != nil {
			break
		}
		_, reply, err := conn.ReadMessage()
		if err != nil || string(reply) != "echo:"+text {
			break
		}
		echoed++
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]int{"echoed": echoed})
}
