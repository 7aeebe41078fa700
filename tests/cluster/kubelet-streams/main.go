// Command skein-kubelet-streams: the kubelet's streaming endpoints (exec, attach, port-forward)
// for `skein dev node`, served with the upstream kubelet streaming code (k8s.io/cri-streaming),
// so the SPDY and WebSocket protocols the apiserver speaks are the real implementations.
//
//	skein-kubelet-streams --socket PATH --skein PATH --cluster NAME
//
// It serves plain HTTP on a Unix socket that only root can use; the node's kubelet API checks
// the apiserver's client certificate and the pod, then hands it the request (with its upgrade)
// in this form:
//
//	/exec/NAMESPACE/POD/CONTAINER?command=...&input=1&output=1&error=1&tty=0
//	/attach/NAMESPACE/POD/CONTAINER?...
//	/portForward/NAMESPACE/POD
//
// A command runs as `skein dev exec` (which enters the container's namespaces) with the
// streams wired to it; its exit code goes back as the kubelet reports one. Each forwarded
// connection runs `skein dev connect`, which dials localhost:PORT inside the pod's network
// namespace, as the kubelet does (the pod IP would go through the mesh's capture rules).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet's own defaults (its streaming server's config).
const (
	idleTimeout           = 4 * time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

type server struct {
	skein   string
	cluster string
}

func main() {
	socket := flag.String("socket", "", "Unix socket to serve on (replaced if it exists)")
	skein := flag.String("skein", "skein", "the skein binary (its dev exec and dev connect commands)")
	cluster := flag.String("cluster", "", "the local cluster the node belongs to")
	flag.Parse()
	if *socket == "" || *cluster == "" {
		log.Fatal("--socket and --cluster are required")
	}
	s := &server{skein: *skein, cluster: *cluster}

	// Whoever can connect can run commands in every pod: root only, from the moment it exists.
	syscall.Umask(0o077)
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Fatalf("removing the old %s: %v", *socket, err)
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatalf("listening on %s: %v", *socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.serveExec)
	mux.HandleFunc("/attach/{namespace}/{pod}/{container}", s.serveAttach)
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.servePortForward)
	log.Printf("serving exec, attach and port-forward on %s", *socket)
	log.Fatal(http.Serve(listener, mux))
}

// podName is how a pod is named to `skein dev exec` and `skein dev connect`.
func podName(r *http.Request) string {
	return r.PathValue("namespace") + "/" + r.PathValue("pod")
}

func (s *server) serveExec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeExec(w, r, s, podName(r), "", r.PathValue("container"), r.URL.Query()["command"],
		opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (s *server) serveAttach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommand.ServeAttach(w, r, s, podName(r), "", r.PathValue("container"),
		opts, idleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (s *server) servePortForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, s, podName(r), "", opts,
		idleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// command prepares `skein ARGS...` in its own process group, so ending the request ends
// everything it started (the command inside the container is skein's child).
func (s *server) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, s.skein, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// The node's own log filter would put skein's debug lines on the user's stderr.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SKEIN_LOG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// feed copies in to the command's stdin until in ends, then closes it. Not waited for: a
// client that never closes its stdin must not keep the request open after the command exits
// (the stream is closed then, which ends the copy).
func feed(cmd *exec.Cmd, in io.Reader) error {
	if in == nil {
		return nil
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	go func() {
		_, _ = io.Copy(stdin, in)
		_ = stdin.Close()
	}()
	return nil
}

// ExecInContainer runs cmd in the container through `skein dev exec`.
func (s *server) ExecInContainer(ctx context.Context, name, _ string, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	args := append([]string{"dev", "exec", "--cluster", s.cluster, name, "-c", container, "--"}, cmd...)
	c := s.command(ctx, args...)
	var err error
	if tty {
		err = runWithTerminal(c, in, out, resize)
	} else {
		// An absent stream is a nil interface here too: the command gets /dev/null.
		c.Stdout, c.Stderr = out, errOut
		if err = feed(c, in); err == nil {
			err = c.Run()
		}
	}
	return exitError(err)
}

// AttachContainer would join the container's own stdin and output, which the dev node does not
// keep (a container's output goes to its log file, its stdin is closed).
func (s *server) AttachContainer(_ context.Context, name, _ string, container string,
	_ io.Reader, _, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	return fmt.Errorf("the Skein dev node cannot attach to a container (%s, container %s): "+
		"its output is in `kubectl logs -f`, and `kubectl exec` runs commands beside it", name, container)
}

// PortForward copies stream to and from localhost:port inside the pod's network namespace.
func (s *server) PortForward(ctx context.Context, name, _ string, port int32, stream io.ReadWriteCloser) error {
	c := s.command(ctx, "dev", "connect", "--cluster", s.cluster, name, strconv.Itoa(int(port)))
	var stderr bytes.Buffer
	c.Stdout, c.Stderr = stream, &stderr
	if err := feed(c, stream); err != nil {
		return err
	}
	if err := c.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return errors.New(msg)
		}
		return err
	}
	return nil
}

// exitError turns skein's exit status into the one the streaming code reports as the
// command's exit code (kubectl exec exits with it).
func exitError(err error) error {
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() >= 0 {
		return utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
	}
	return err
}

// runWithTerminal runs c on a new pseudo-terminal: its controlling terminal and all three of
// its standard streams, sized as the client's terminal (resize).
func runWithTerminal(c *exec.Cmd, in io.Reader, out io.WriteCloser, resize <-chan remotecommand.TerminalSize) error {
	ptmx, tty, err := openPty()
	if err != nil {
		return fmt.Errorf("opening a terminal: %w", err)
	}
	defer ptmx.Close()
	c.Stdin, c.Stdout, c.Stderr = tty, tty, tty
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = c.Start()
	// The child has its copy; the terminal ends (reads fail) once the child's side is closed.
	tty.Close()
	if err != nil {
		return err
	}
	go func() {
		for size := range resize {
			_ = unix.IoctlSetWinsize(int(ptmx.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Height, Col: size.Width})
		}
	}()
	if in != nil {
		go func() { _, _ = io.Copy(ptmx, in) }()
	}
	copied := make(chan struct{})
	go func() {
		if out != nil {
			_, _ = io.Copy(out, ptmx)
		}
		close(copied)
	}()
	err = c.Wait()
	if out != nil {
		<-copied
	}
	return err
}

// openPty opens a new pseudo-terminal pair: its controlling side and the terminal.
func openPty() (*os.File, *os.File, error) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	fd := int(ptmx.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("unlocking the terminal: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("numbering the terminal: %w", err)
	}
	tty, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		ptmx.Close()
		return nil, nil, err
	}
	return ptmx, tty, nil
}
