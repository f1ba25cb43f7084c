package node_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

// syslogCerts makes a CA, the collector's certificate for 127.0.0.1 and a
// client certificate for the node (all from raft's node-certificate
// tooling), under dir.
func syslogCerts(t *testing.T, dir string) (ca, serverDir, clientDir string) {
	t.Helper()
	caDir := filepath.Join(dir, "ca")
	serverDir, clientDir = filepath.Join(dir, "server"), filepath.Join(dir, "client")
	if err := raft.InitCADir(caDir, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := raft.IssueNodeCertDir(caDir, serverDir, raft.CertOptions{NodeID: "syslog", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := raft.IssueNodeCertDir(caDir, clientDir, raft.CertOptions{NodeID: "tally-node", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(caDir, raft.CACertFile), serverDir, clientDir
}

// siemUIDs is the set of metadata.uid in a file of lines, each holding one
// SIEM JSON line (alone, or as the message of a syslog line), and how many
// lines there were.
func siemUIDs(t *testing.T, path string) (map[string]bool, int) {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return map[string]bool{}, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	uids, lines := map[string]bool{}, 0
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		i := strings.IndexByte(l, '{')
		if i < 0 {
			continue
		}
		var e node.SIEMEvent
		if err := json.Unmarshal([]byte(l[i:]), &e); err != nil {
			continue // a line being written
		}
		uids[e.Metadata.UID] = true
		lines++
	}
	return uids, lines
}

// TestSIEMRELPAtLeastOnce: the SIEM events reach a real rsyslog (Debian's
// rsyslog-relp, imrelp over TLS requiring a valid client certificate --
// librelp's TLS always asks for one --, direct queues so that an
// acknowledged message is in its output file) over RELP while admin calls keep making
// events; rsyslogd is killed with SIGKILL mid-stream and started again a
// second later, three times. Every event of the node's own SIEM file arrives in
// rsyslog's output at least once (duplicates allowed: the messages
// unacknowledged when it died are sent again).
func TestSIEMRELPAtLeastOnce(t *testing.T) {
	rsyslogd, err := exec.LookPath("rsyslogd")
	if err != nil {
		t.Skip("rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls rsyslog-relp)")
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so"); err != nil {
		if m, _ := filepath.Glob("/usr/lib/*/rsyslog/imrelp.so"); len(m) == 0 {
			t.Skip("imrelp not installed (apt-get install rsyslog-relp)")
		}
	}
	dir := t.TempDir()
	ca, serverDir, clientDir := syslogCerts(t, dir)
	addr := freeAddrs(t, 1)[0]
	_, port, _ := net.SplitHostPort(addr)
	out := filepath.Join(dir, "received.log")
	conf := fmt.Sprintf(`global(workDirectory=%q)
main_queue(queue.type="Direct")
module(load="imrelp")
input(type="imrelp" port=%q address="127.0.0.1" tls="on"
  tls.caCert=%q tls.myCert=%q tls.myPrivKey=%q tls.authMode="certvalid")
action(type="omfile" file=%q template="RSYSLOG_SyslogProtocol23Format" queue.type="Direct")
`, dir, port, ca, filepath.Join(serverDir, raft.NodeCertFile), filepath.Join(serverDir, raft.NodeKeyFile), out)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	rs := startRsyslog(t, rsyslogd, confPath, addr)

	truth := filepath.Join(dir, "siem.jsonl")
	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.SIEMFile = truth
		c.SIEMSyslog = addr
		c.SIEMSyslogProtocol = "relp"
		c.SIEMSyslogCAFile = ca
		c.SIEMSyslogCertFile = filepath.Join(clientDir, raft.NodeCertFile)
		c.SIEMSyslogKeyFile = filepath.Join(clientDir, raft.NodeKeyFile)
	}))

	// A stream of events: each client creation is an audit record, each
	// disable one more and a client-disabled event.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var made atomic.Int64
	done := make(chan error, 1)
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			res, err := n.Admin.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{Tenant: "default", Name: fmt.Sprintf("svc-%d", i)}))
			if err == nil {
				_, err = n.Admin.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: res.Msg.GetClient().GetClientId()}))
			}
			if err != nil {
				if ctx.Err() != nil {
					err = nil
				}
				done <- err
				return
			}
			made.Add(1)
		}
		done <- nil
	}()

	// Three times: kill rsyslogd once it has written more of the stream,
	// while the stream goes on; start it again a second later.
	var before []int
	for range 3 {
		seen, _ := siemUIDs(t, out)
		nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			if got, _ := siemUIDs(t, out); len(got) < len(seen)+20 {
				return fmt.Errorf("%d events at rsyslog", len(got))
			}
			return nil
		})
		rs.kill()
		got, _ := siemUIDs(t, out)
		before = append(before, len(got))
		time.Sleep(time.Second)
		rs.start()
	}
	// More events after the last restart, then stop the stream.
	killedAt := made.Load()
	nodetest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if made.Load() < killedAt+50 {
			return fmt.Errorf("%d clients since the kill", made.Load()-killedAt)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var want, got map[string]bool
	var lines int
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		want, _ = siemUIDs(t, truth)
		got, lines = siemUIDs(t, out)
		missing := 0
		for uid := range want {
			if !got[uid] {
				missing++
			}
		}
		if missing > 0 || len(want) == 0 {
			return fmt.Errorf("%d of %d events missing at rsyslog", missing, len(want))
		}
		return nil
	})
	t.Logf("%d events: %v at rsyslog at the kills, %d distinct at rsyslog in %d lines (%d duplicates)",
		len(want), before, len(got), lines, lines-len(got))
	if b, err := os.ReadFile(out); err == nil && bytes.Contains(b, []byte(n.AdminToken)) {
		t.Fatal("a secret reached syslog")
	}
}

// TestSIEMSyslogClientCertificates: a real rsyslog that requires and
// verifies client certificates by name (imtcp with the gtls driver in
// x509/name mode, imrelp with tls.authMode name, both permitting only the
// node's certificate name) accepts the node's messages when it presents
// --siem-syslog-cert/--siem-syslog-key, and refuses a connection without
// a certificate or with another certificate of the same CA. Over RELP the
// refusal is the write's error; over plain TLS (no acknowledgement) it is
// the server's alert on the connection and nothing in its output.
func TestSIEMSyslogClientCertificates(t *testing.T) {
	rsyslogd, err := exec.LookPath("rsyslogd")
	if err != nil {
		t.Skip("rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls rsyslog-relp)")
	}
	if m, _ := filepath.Glob("/usr/lib/*/rsyslog/imrelp.so"); len(m) == 0 {
		t.Skip("imrelp not installed (apt-get install rsyslog-relp)")
	}
	dir := t.TempDir()
	ca, serverDir, clientDir := syslogCerts(t, dir)
	caDir := filepath.Dir(ca)
	otherDir := filepath.Join(dir, "other")
	if err := raft.IssueNodeCertDir(caDir, otherDir, raft.CertOptions{NodeID: "intruder", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	peer := "tally-node" + raft.NodeNameSuffix
	addrs := freeAddrs(t, 2)
	tcpAddr, relpAddr := addrs[0], addrs[1]
	_, tcpPort, _ := net.SplitHostPort(tcpAddr)
	_, relpPort, _ := net.SplitHostPort(relpAddr)
	out := filepath.Join(dir, "received.log")
	serverCert, serverKey := filepath.Join(serverDir, raft.NodeCertFile), filepath.Join(serverDir, raft.NodeKeyFile)
	conf := fmt.Sprintf(`global(workDirectory=%q
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile=%q
  defaultNetstreamDriverCertFile=%q
  defaultNetstreamDriverKeyFile=%q)
main_queue(queue.type="Direct")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name" permittedPeer=[%q])
input(type="imtcp" port=%q address="127.0.0.1")
module(load="imrelp")
input(type="imrelp" port=%q address="127.0.0.1" tls="on"
  tls.caCert=%q tls.myCert=%q tls.myPrivKey=%q tls.authMode="name" tls.permittedPeer=[%q])
action(type="omfile" file=%q template="RSYSLOG_SyslogProtocol23Format" queue.type="Direct")
`, dir, ca, serverCert, serverKey, peer, tcpPort, relpPort, ca, serverCert, serverKey, peer, out)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startRsyslog(t, rsyslogd, confPath, tcpAddr)
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", relpAddr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})

	cfg := func(proto, addr, certDir string) node.Config {
		c := node.Config{NodeID: "n1", SIEMSyslog: addr, SIEMSyslogProtocol: proto, SIEMSyslogCAFile: ca}
		if certDir != "" {
			c.SIEMSyslogCertFile, c.SIEMSyslogKeyFile = filepath.Join(certDir, raft.NodeCertFile), filepath.Join(certDir, raft.NodeKeyFile)
		}
		return c
	}
	// RELP: refused without the certificate and with another name.
	for name, certDir := range map[string]string{"no certificate": "", "another name": otherDir} {
		if err := node.SIEMSyslogDeliver(cfg("relp", relpAddr, certDir), "relp-"+name); err == nil {
			t.Fatalf("relp with %s: delivered", name)
		} else {
			t.Logf("relp with %s: %v", name, err)
		}
	}
	if err := node.SIEMSyslogDeliver(cfg("relp", relpAddr, clientDir), "relp-accepted"); err != nil {
		t.Fatalf("relp with the node's certificate: %v", err)
	}
	// TLS: the server ends the handshake with an alert the client reads.
	for name, certDir := range map[string]string{"no certificate": "", "another name": otherDir} {
		tc := &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		pem, _ := os.ReadFile(ca)
		tc.RootCAs = x509.NewCertPool()
		tc.RootCAs.AppendCertsFromPEM(pem)
		if certDir != "" {
			c, err := tls.LoadX509KeyPair(filepath.Join(certDir, raft.NodeCertFile), filepath.Join(certDir, raft.NodeKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tcpAddr, tc)
		if err == nil {
			msg := "<86>1 - - tally - 3001 - {\"metadata\":{\"uid\":\"tls-" + name + "\"}}"
			fmt.Fprintf(conn, "%d %s", len(msg), msg)
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("tls with %s: the server kept the connection", name)
			}
		}
		t.Logf("tls with %s: %v", name, err)
	}
	if err := node.SIEMSyslogDeliver(cfg("tls", tcpAddr, clientDir), "tls-accepted"); err != nil {
		t.Fatalf("tls with the node's certificate: %v", err)
	}
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, _ := siemUIDs(t, out)
		if !got["relp-accepted"] || !got["tls-accepted"] {
			return fmt.Errorf("received %v", got)
		}
		if len(got) != 2 {
			t.Fatalf("a refused client's message was written: %v", got)
		}
		return nil
	})
}
