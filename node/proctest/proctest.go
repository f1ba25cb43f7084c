// Package proctest starts real `tally serve` processes for tests: the
// configuration users start (as `make cluster` does), not an in-process
// harness. It builds the tally binary once per test binary, creates a
// cluster CA, node certificates, a key-encryption key and an admin
// credential with the binary's own admin commands, and starts the nodes with
// one shared issuer on loopback ports.
//
// Faults are real: Kill sends SIGKILL, Freeze SIGSTOP, Stop SIGTERM; a
// stopped or killed node restarts with Start on the same ports and data.
// Every process is killed when the test ends, and the tail of each node's
// log is printed when the test failed.
package proctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary builds ./cmd/tally once per test binary and returns its path. The
// build lands in a temporary directory outside the repository.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "tally-proctest-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "tally")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/tally")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("proctest: go build ./cmd/tally: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

// moduleRoot finds the directory of go.mod above the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("proctest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Ports are one node's loopback ports.
type Ports struct {
	HTTP, Raft, NATS, NATSCluster int
}

// Options configure a cluster. The zero value is three voters in two
// regions (east, east, west), like `make cluster`.
type Options struct {
	// Nodes is the number of voters; default 3.
	Nodes int
	// Regions names each node's region; default east for all but the last
	// node of three or more, which is west.
	Regions []string
	// MaxStale is every node's staleness bound; default 5s.
	MaxStale time.Duration
	// Issuer is the one issuer base of the cluster; default
	// http://127.0.0.1:<a free port>.
	Issuer string
	// Args returns extra `tally serve` arguments for node i (0-based),
	// appended after the defaults, so they override them.
	Args func(i int, c *Cluster) []string
	// Env is extra environment for every node.
	Env []string
	// NoWait starts the nodes without waiting until they are ready.
	NoWait bool
	// Bin is the tally binary the nodes start with (and that creates the
	// cluster's secrets); default Binary(tb). Proc.Bin changes one node's.
	Bin string
}

// Cluster is a set of tally processes that form one Raft cluster.
type Cluster struct {
	tb         testing.TB
	Bin        string
	Dir        string
	CADir      string
	KEKFile    string
	TokenFile  string
	AdminToken string
	Issuer     string
	opts       Options
	nodes      []*Proc
}

// Proc is one `tally serve` process of a cluster.
type Proc struct {
	c       *Cluster
	Index   int
	ID      string
	Region  string
	Ports   Ports
	DataDir string
	TLSDir  string
	LogFile string
	// Bin is the binary the next Start runs, if not the cluster's (a
	// rolling upgrade sets it between Stop and Start).
	Bin string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	frozen bool
}

// FreePort returns a loopback TCP port that is free now and stays
// reserved for the test: a node binds it seconds later, and binds it again
// after a restart. A port the kernel picks for ":0" lies in its ephemeral
// range, where any process's next outgoing connection may take it in the
// meantime (and hold it through TIME_WAIT); so the port is picked below
// that range, and a lock file keeps other proctest users (other test
// binaries on the machine) off it until the test ends.
func FreePort(tb testing.TB) int {
	tb.Helper()
	low := ephemeralLow()
	if low < 12000 {
		// No room below the ephemeral range: let the kernel pick.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	dir := filepath.Join(os.TempDir(), "tally-proctest-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		tb.Fatal(err)
	}
	for range 1000 {
		port := 10000 + mrand.IntN(low-10000)
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			tb.Fatal(err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // another test holds it
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			f.Close()
			continue
		}
		ln.Close()
		tb.Cleanup(func() { f.Close() })
		return port
	}
	tb.Fatal("proctest: no free port below the ephemeral range")
	return 0
}

// ephemeralLow is the lowest port of the kernel's ephemeral range (Linux
// default 32768), or 0 if unknown.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// Start creates the cluster's secrets and certificates and starts every
// node, waiting until all are ready (unless NoWait).
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.MaxStale == 0 {
		opts.MaxStale = 5 * time.Second
	}
	if len(opts.Regions) == 0 {
		for i := 0; i < opts.Nodes; i++ {
			r := "east"
			if opts.Nodes >= 3 && i == opts.Nodes-1 {
				r = "west"
			}
			opts.Regions = append(opts.Regions, r)
		}
	}
	if len(opts.Regions) != opts.Nodes {
		tb.Fatalf("proctest: %d regions for %d nodes", len(opts.Regions), opts.Nodes)
	}
	c := &Cluster{tb: tb, Bin: opts.Bin, Dir: tb.TempDir(), opts: opts}
	if c.Bin == "" {
		c.Bin = Binary(tb)
	}
	c.Issuer = opts.Issuer
	if c.Issuer == "" {
		c.Issuer = fmt.Sprintf("http://127.0.0.1:%d", FreePort(tb))
	}
	c.CADir = filepath.Join(c.Dir, "ca")
	c.run("admin", "cluster", "ca", "init", "--out", c.CADir)
	c.KEKFile = filepath.Join(c.Dir, "kek")
	c.TokenFile = filepath.Join(c.Dir, "admin-token")
	c.AdminToken = randomText(tb)
	writeSecret(tb, c.KEKFile, randomText(tb))
	writeSecret(tb, c.TokenFile, c.AdminToken)

	for i := 0; i < opts.Nodes; i++ {
		p := &Proc{c: c, Index: i, ID: fmt.Sprintf("node%d", i+1), Region: opts.Regions[i]}
		p.Ports = Ports{HTTP: FreePort(tb), Raft: FreePort(tb), NATS: FreePort(tb), NATSCluster: FreePort(tb)}
		base := filepath.Join(c.Dir, p.ID)
		p.DataDir = filepath.Join(base, "data")
		p.TLSDir = filepath.Join(base, "tls")
		p.LogFile = filepath.Join(c.Dir, p.ID+".log")
		c.run("admin", "cluster", "node-cert", "--ca", c.CADir, "--node-id", p.ID, "--ip", "127.0.0.1", "--out", p.TLSDir)
		c.nodes = append(c.nodes, p)
	}
	tb.Cleanup(c.cleanup)
	for _, p := range c.nodes {
		if err := p.Start(); err != nil {
			tb.Fatal(err)
		}
	}
	if !opts.NoWait {
		c.WaitReady(90 * time.Second)
	}
	return c
}

// run runs the tally binary with args and fails the test on error.
func (c *Cluster) run(args ...string) string {
	c.tb.Helper()
	out, err := exec.Command(c.Bin, args...).CombinedOutput()
	if err != nil {
		c.tb.Fatalf("proctest: tally %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Peers is the --peers value of the cluster.
func (c *Cluster) Peers() string {
	var parts []string
	for _, p := range c.nodes {
		parts = append(parts, fmt.Sprintf("%s=127.0.0.1:%d", p.ID, p.Ports.Raft))
	}
	return strings.Join(parts, ",")
}

// Args are the `tally serve` arguments of node p: the defaults, then
// Options.Args.
func (p *Proc) Args() []string {
	args := []string{"serve",
		"--node-id", p.ID,
		"--region", p.Region,
		"--data-dir", p.DataDir,
		"--tls-dir", p.TLSDir,
		"--listen", fmt.Sprintf("127.0.0.1:%d", p.Ports.HTTP),
		"--raft-bind", fmt.Sprintf("127.0.0.1:%d", p.Ports.Raft),
		"--issuer", p.c.Issuer,
		"--peers", p.c.Peers(),
		"--kek-file", p.c.KEKFile,
		"--admin-token-file", p.c.TokenFile,
		"--max-stale", p.c.opts.MaxStale.String(),
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", p.Ports.NATS),
	}
	// The event log as `make cluster` wires it: the nodes' embedded NATS
	// servers form one NATS cluster.
	if len(p.c.nodes) > 1 {
		var routes []string
		for _, o := range p.c.nodes {
			if o != p {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", o.Ports.NATSCluster))
			}
		}
		args = append(args, "--nats-cluster-listen", fmt.Sprintf("127.0.0.1:%d", p.Ports.NATSCluster),
			"--nats-routes", strings.Join(routes, ","))
	}
	if p.c.opts.Args != nil {
		args = append(args, p.c.opts.Args(p.Index, p.c)...)
	}
	return args
}

// Start starts the node's process (again, after Kill or Stop). It returns
// once the process has started, not when it is ready.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.exited:
		default:
			return fmt.Errorf("proctest: %s is running", p.ID)
		}
	}
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	bin := p.c.Bin
	if p.Bin != "" {
		bin = p.Bin
	}
	cmd := exec.Command(bin, p.Args()...)
	cmd.Env = append(os.Environ(), p.c.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("proctest: starting %s: %w", p.ID, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	p.cmd, p.exited, p.frozen = cmd, exited, false
	return nil
}

// Pid is the process id of the node's current process (0 if never started).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the node's process has started and not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the current process exits.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

// Signal sends sig to the node's process.
func (p *Proc) Signal(sig syscall.Signal) error {
	pid := p.Pid()
	if pid == 0 {
		return fmt.Errorf("proctest: %s was never started", p.ID)
	}
	return syscall.Kill(pid, sig)
}

// Kill sends SIGKILL and waits until the process is gone.
func (p *Proc) Kill() {
	p.c.tb.Helper()
	p.Thaw()
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.c.tb.Fatalf("proctest: kill %s: %v", p.ID, err)
	}
	<-p.Exited()
}

// Stop sends SIGTERM and waits up to 30s for a clean exit, then kills.
// It reports whether the process exited by itself.
func (p *Proc) Stop() bool {
	p.Thaw()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return false
	}
	select {
	case <-p.Exited():
		return true
	case <-time.After(30 * time.Second):
		p.Signal(syscall.SIGKILL)
		<-p.Exited()
		return false
	}
}

// Freeze stops the process with SIGSTOP (it keeps its sockets, answers
// nothing); Thaw resumes it.
func (p *Proc) Freeze() {
	p.c.tb.Helper()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		p.c.tb.Fatalf("proctest: SIGSTOP %s: %v", p.ID, err)
	}
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// Thaw resumes a frozen process (SIGCONT); a no-op otherwise.
func (p *Proc) Thaw() {
	p.mu.Lock()
	frozen := p.frozen
	p.frozen = false
	p.mu.Unlock()
	if frozen {
		p.Signal(syscall.SIGCONT)
	}
}

// URL is the node's own HTTP base URL.
func (p *Proc) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", p.Ports.HTTP) }

// NATSURLs are every node's embedded NATS client URL, comma-separated
// (what make cluster prints as TALLY_NATS_URL).
func (c *Cluster) NATSURLs() string {
	var urls []string
	for _, p := range c.nodes {
		urls = append(urls, p.NATSURL())
	}
	return strings.Join(urls, ",")
}

// NATSURL is the node's embedded NATS client URL.
func (p *Proc) NATSURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.Ports.NATS) }

// Ready reports whether GET /readyz answers 200.
func (p *Proc) Ready() bool {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(p.URL() + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady waits until the node is ready, failing the test after timeout
// or when the process exits.
func (p *Proc) WaitReady(timeout time.Duration) {
	p.c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for !p.Ready() {
		select {
		case <-p.Exited():
			p.c.tb.Fatalf("proctest: %s exited before it was ready; log:\n%s", p.ID, p.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			p.c.tb.Fatalf("proctest: %s not ready after %s; log:\n%s", p.ID, timeout, p.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LogTail returns the last n lines of the node's log.
func (p *Proc) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Node returns node i (0-based).
func (c *Cluster) Node(i int) *Proc { return c.nodes[i] }

// Nodes returns every node.
func (c *Cluster) Nodes() []*Proc { return append([]*Proc(nil), c.nodes...) }

// WaitReady waits until every running node is ready.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.tb.Helper()
	for _, p := range c.nodes {
		if p.Running() {
			p.WaitReady(timeout)
		}
	}
}

// Member is one member of the cluster status (the admin API's JSON).
type Member struct {
	ID           string `json:"id"`
	Region       string `json:"region"`
	Leader       bool   `json:"leader"`
	State        string `json:"state"`
	Health       string `json:"health"`
	AppliedIndex uint64 `json:"appliedIndex,string"`
	CommitIndex  uint64 `json:"commitIndex,string"`
}

// Status asks node p for the cluster status (ClusterAdminService.Status).
func (c *Cluster) Status(ctx context.Context, p *Proc) (leaderID string, members []Member, err error) {
	var out struct {
		LeaderID string   `json:"leaderId"`
		Members  []Member `json:"members"`
	}
	if err := c.Call(ctx, p, "/tally.cluster.v1.ClusterAdminService/Status", map[string]any{}, &out); err != nil {
		return "", nil, err
	}
	return out.LeaderID, out.Members, nil
}

// Call makes a Connect unary JSON call with the admin token to node p.
func (c *Cluster) Call(ctx context.Context, p *Proc, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL()+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &CallError{Status: resp.StatusCode, Body: string(b)}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// CallError is a non-200 answer of Call.
type CallError struct {
	Status int
	Body   string
}

func (e *CallError) Error() string { return "proctest: HTTP " + strconv.Itoa(e.Status) + ": " + e.Body }

// Leader returns the node that the running nodes agree leads, waiting up to
// timeout for one.
func (c *Cluster) Leader(timeout time.Duration) *Proc {
	c.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, p := range c.nodes {
			if !p.Running() || p.frozenNow() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			id, _, err := c.Status(ctx, p)
			cancel()
			if err != nil || id == "" {
				continue
			}
			for _, q := range c.nodes {
				if q.ID == id && q.Running() && !q.frozenNow() {
					return q
				}
			}
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("proctest: no leader within %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *Proc) frozenNow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

// Followers returns the running nodes other than leader.
func (c *Cluster) Followers(leader *Proc) []*Proc {
	var out []*Proc
	for _, p := range c.nodes {
		if p != leader && p.Running() {
			out = append(out, p)
		}
	}
	return out
}

func (c *Cluster) cleanup() {
	for _, p := range c.nodes {
		if p.Running() {
			p.Thaw()
			p.Signal(syscall.SIGKILL)
			<-p.Exited()
		}
	}
	if c.tb.Failed() {
		for _, p := range c.nodes {
			c.tb.Logf("proctest: last lines of %s:\n%s", p.ID, p.LogTail(30))
		}
	}
}

func randomText(tb testing.TB) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func writeSecret(tb testing.TB, path, v string) {
	if err := os.WriteFile(path, []byte(v), 0o600); err != nil {
		tb.Fatal(err)
	}
}
