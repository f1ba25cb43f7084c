package node

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
)

func relpTestEvents(n int) ([]SIEMEvent, [][]byte) {
	var evs []SIEMEvent
	var lines [][]byte
	for i := range n {
		evs = append(evs, SIEMEvent{ClassUID: 3001, Time: 1, Metadata: SIEMMetadata{UID: fmt.Sprintf("c-%d-0", i+1)}})
		lines = append(lines, []byte(fmt.Sprintf(`{"n":%d}`, i+1)))
	}
	return evs, lines
}

// FuzzReadRELPFrame: any bytes from a server are a frame within the
// grammar or an error, never a panic or more data than allowed.
func FuzzReadRELPFrame(f *testing.F) {
	for _, s := range []string{
		"1 rsp 6 200 OK\n", "0 serverclose 0\n", "2 rsp 0\n", "3 rsp 0 \n",
		"1 rsp 59 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0\ncommands=syslog\n",
		"12 rsp 999999999 x", "x rsp 1 a\n", "1  rsp 0\n", "1 rsp 2 500 error\n", "1234567890 rsp 0\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			fr, err := readRELPFrame(r, 1024)
			if err != nil {
				return
			}
			if len(fr.data) > 1024 || fr.cmd == "" || fr.txnr > relpMaxTxnr {
				t.Fatalf("frame %+v", fr)
			}
			relpResponse(fr.data)
		}
	})
}

// FuzzRELPSession: a session whose server answers with arbitrary bytes
// ends with an error or with every message acknowledged, never a panic;
// an event counts as acknowledged only after a 200 for its own txnr.
func FuzzRELPSession(f *testing.F) {
	for _, s := range []string{
		"1 rsp 6 200 OK\n2 rsp 6 200 OK\n3 rsp 6 200 OK\n",
		"2 rsp 6 200 OK\n1 rsp 6 200 OK\n3 rsp 9 500 error\n",
		"1 rsp 6 200 OK\n1 rsp 6 200 OK\n", "0 serverclose 0\n", "1 syslog 3 abc\n", "7 rsp 6 200 OK\n",
		"1 rsp 9999 200", "1 rsp 2 20\n", "1 rsp 6 200 OK",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go io.Copy(io.Discard, server)
		go func() {
			server.Write(b)
			server.Close()
		}()
		s := &relpSink{msg: &syslogSink{addr: "fuzz", host: "h", pid: "1"}, conn: client, br: bufio.NewReader(client), bw: bufio.NewWriter(client)}
		evs, lines := relpTestEvents(3)
		err := s.write(evs, lines)
		if err == nil && (s.acked != nil || !bytes.Contains(b, []byte("200"))) {
			t.Fatalf("write succeeded on %q (acked %v)", b, s.acked)
		}
		if err != nil && s.conn != nil && !strings.Contains(err.Error(), "refused") {
			t.Fatalf("connection kept after %v", err)
		}
		s.close()
	})
}

// relpTestServer is a TLS listener whose connections are handled by the
// test's function with the frames the client sent.
type relpTestServer struct {
	ln       net.Listener
	ca       string
	mu       sync.Mutex
	received []string // DATA of the syslog frames, in arrival order
}

func startRELPTestServer(t *testing.T, handle func(srv *relpTestServer, conn net.Conn, r *bufio.Reader)) *relpTestServer {
	t.Helper()
	dir := t.TempDir()
	caDir, certDir := filepath.Join(dir, "ca"), filepath.Join(dir, "tls")
	if err := raft.InitCADir(caDir, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := raft.IssueNodeCertDir(caDir, certDir, raft.CertOptions{NodeID: "relp", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, raft.NodeCertFile), filepath.Join(certDir, raft.NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &relpTestServer{ln: ln, ca: filepath.Join(caDir, raft.CACertFile)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				handle(srv, c, bufio.NewReader(c))
			}()
		}
	}()
	return srv
}

func (srv *relpTestServer) sink(t *testing.T) *relpSink {
	t.Helper()
	pem, err := os.ReadFile(srv.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return newRELPSink(&syslogSink{addr: srv.ln.Addr().String(), tls: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, host: "h", pid: "1"})
}

// readClientFrame reads one frame of the client (the same grammar).
func readClientFrame(r *bufio.Reader) (relpFrame, error) { return readRELPFrame(r, 1<<20) }

// answerOpen reads the client's open and answers it with rsp.
func answerOpen(c net.Conn, r *bufio.Reader, rsp string) error {
	f, err := readClientFrame(r)
	if err != nil {
		return err
	}
	if f.cmd != "open" || !strings.Contains(string(f.data), "commands=syslog") {
		return fmt.Errorf("first frame %q %q", f.cmd, f.data)
	}
	_, err = fmt.Fprintf(c, "%d rsp %d %s\n", f.txnr, len(rsp), rsp)
	return err
}

const relpOpenOK = "200 OK\nrelp_version=0\nrelp_software=test\ncommands=syslog"

// TestRELPBadServers: a server that breaks the protocol or refuses makes
// write fail (no panic, the position does not move), and the messages a
// server acknowledged before the failure are not sent again.
func TestRELPBadServers(t *testing.T) {
	evs, lines := relpTestEvents(3)
	for name, answer := range map[string]string{
		"garbage":           "hello world\n",
		"open refused":      "1 rsp 15 500 not allowed\n",
		"no syslog command": "1 rsp 36 200 OK\nrelp_version=0\ncommands=foo\n",
		"open wrong txnr":   "9 rsp 6 200 OK\n",
		"huge datalen":      "1 rsp 999999999 200 OK\n",
		"truncated":         "1 rsp 50 200 OK\n",
		"serverclose":       "0 serverclose 0\n",
		"unknown command":   "1 syslog 2 hi\n",
	} {
		t.Run(name, func(t *testing.T) {
			srv := startRELPTestServer(t, func(_ *relpTestServer, c net.Conn, r *bufio.Reader) {
				readClientFrame(r)
				io.WriteString(c, answer)
				if name == "truncated" {
					c.Close()
				}
			})
			s := srv.sink(t)
			defer s.close()
			if err := s.write(evs, lines); err == nil {
				t.Fatal("write succeeded")
			} else {
				t.Log(err)
			}
		})
	}
	for name, answers := range map[string]string{
		// After the open: answers to the syslog frames (txnr 2, 3, 4).
		"response to an unknown txnr": "2 rsp 6 200 OK\n77 rsp 6 200 OK\n",
		"two responses to one txnr":   "2 rsp 6 200 OK\n2 rsp 6 200 OK\n",
		"bad status":                  "2 rsp 2 OK\n",
		"connection lost":             "2 rsp 6 200 OK\n",
		"refused":                     "2 rsp 6 200 OK\n3 rsp 14 500 queue full\n4 rsp 6 200 OK\n",
	} {
		t.Run(name, func(t *testing.T) {
			var sessions atomic.Int32
			srv := startRELPTestServer(t, func(srv *relpTestServer, c net.Conn, r *bufio.Reader) {
				n := sessions.Add(1)
				if err := answerOpen(c, r, relpOpenOK); err != nil {
					t.Error(err)
					return
				}
				if n > 1 { // a well-behaved server the second time
					for {
						f, err := readClientFrame(r)
						if err != nil {
							return
						}
						if f.cmd == "syslog" {
							srv.mu.Lock()
							srv.received = append(srv.received, string(f.data))
							srv.mu.Unlock()
						}
						fmt.Fprintf(c, "%d rsp 6 200 OK\n", f.txnr)
					}
				}
				for range 3 {
					readClientFrame(r)
				}
				io.WriteString(c, answers)
				if name != "refused" {
					c.Close()
				}
				io.Copy(io.Discard, r)
			})
			s := srv.sink(t)
			defer s.close()
			err := s.write(evs, lines)
			if err == nil {
				t.Fatal("write succeeded")
			}
			t.Log(err)
			if name == "refused" {
				// The session goes on: only the refused message again.
				if s.conn == nil {
					t.Fatal("connection dropped after a refusal")
				}
				s.drop()
			}
			if err := s.write(evs, lines); err != nil {
				t.Fatal(err)
			}
			// Sent again: what was not acknowledged before the failure.
			want := map[string][]string{
				"refused":    {string(lines[1])},
				"bad status": {string(lines[0]), string(lines[1]), string(lines[2])},
			}[name]
			if want == nil {
				want = []string{string(lines[1]), string(lines[2])}
			}
			srv.mu.Lock()
			defer srv.mu.Unlock()
			if len(srv.received) != len(want) {
				t.Fatalf("sent again: %q, want %q", srv.received, want)
			}
			for i, w := range want {
				if !strings.HasSuffix(srv.received[i], w) {
					t.Fatalf("sent again: %q, want %q", srv.received, want)
				}
			}
		})
	}
}
