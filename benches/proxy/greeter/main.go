// Command greeter is the gRPC server app of benches/proxy.sh: grpc-go's helloworld Greeter, whose
// SayHello answers a fixed 1 KiB message (the same payload size as the HTTP workload), with server
// reflection so ghz needs no .proto file. Plain-text HTTP/2 (h2c), one listener.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"runtime"
	"strings"

	"google.golang.org/grpc"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/reflection"
)

type server struct {
	pb.UnimplementedGreeterServer
	reply string
}

func (s *server) SayHello(_ context.Context, _ *pb.HelloRequest) (*pb.HelloReply, error) {
	return &pb.HelloReply{Message: s.reply}, nil
}

func main() {
	addr := flag.String("listen", "0.0.0.0:50051", "address to listen on")
	procs := flag.Int("procs", 1, "GOMAXPROCS (one core, like the other apps)")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	s := grpc.NewServer()
	pb.RegisterGreeterServer(s, &server{reply: strings.Repeat("x", 1024)})
	reflection.Register(s)
	log.Printf("greeter listening on %s", lis.Addr())
	if err := s.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
