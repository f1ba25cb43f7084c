package node_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tallyauth/tally/node"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/nodetest"
	"github.com/tallyauth/tally/raft"
)

// TestSIEMSyslogToRsyslog: the SIEM events reach a real rsyslog (Debian's
// rsyslog and rsyslog-gnutls) as RFC 5424 messages over TCP with TLS, the
// node verifying rsyslog's certificate against the given CA: the audit
// record and the client-disabled event of an admin call arrive with their
// OCSF class as MSGID and the JSON line as the message, and no secret.
func TestSIEMSyslogToRsyslog(t *testing.T) {
	rsyslogd, err := exec.LookPath("rsyslogd")
	if err != nil {
		t.Skip("rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls)")
	}
	dir := t.TempDir()
	caDir, certDir := filepath.Join(dir, "ca"), filepath.Join(dir, "tls")
	if err := raft.InitCADir(caDir, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := raft.IssueNodeCertDir(caDir, certDir, raft.CertOptions{NodeID: "syslog", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	addr := freeAddrs(t, 1)[0]
	_, port, _ := net.SplitHostPort(addr)
	out := filepath.Join(dir, "received.log")
	conf := fmt.Sprintf(`global(workDirectory=%q
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile=%q
  defaultNetstreamDriverCertFile=%q
  defaultNetstreamDriverKeyFile=%q)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" port=%q address="127.0.0.1")
action(type="omfile" file=%q template="RSYSLOG_SyslogProtocol23Format")
`, dir, filepath.Join(caDir, raft.CACertFile), filepath.Join(certDir, raft.NodeCertFile), filepath.Join(certDir, raft.NodeKeyFile), port, out)
	confPath := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startRsyslog(t, rsyslogd, confPath, addr)

	n := nodetest.Start(t, nodetest.WithConfig(func(c *node.Config) {
		c.SIEMSyslog = addr
		c.SIEMSyslogCAFile = filepath.Join(caDir, raft.CACertFile)
	}))
	id, secret := n.CreateClient(t, &adminv1.CreateClientRequest{Tenant: "default", Name: "svc"})
	if _, err := n.Admin.DisableClient(context.Background(), connect.NewRequest(&adminv1.DisableClientRequest{Tenant: "default", ClientId: id})); err != nil {
		t.Fatal(err)
	}
	// <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
	line := regexp.MustCompile(`^<(\d+)>1 \S+ \S+ tally \d+ (\d+) - (\{.*\})$`)
	nodetest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		b, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte(n.AdminToken)) {
			t.Fatal("a secret reached syslog")
		}
		var audit, disabled bool
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("not an RFC 5424 message from tally: %q", l)
			}
			if m[1] < "80" || m[1] > "87" { // facility authpriv (10 × 8 + severity)
				t.Fatalf("PRI %s: want authpriv", m[1])
			}
			audit = audit || (m[2] == "6003" && strings.Contains(m[3], `"operation":"DisableClient"`))
			disabled = disabled || (m[2] == "3001" && strings.Contains(m[3], `"activity_name":"Disable"`))
		}
		if !audit || !disabled {
			return fmt.Errorf("audit %v, client disabled %v in %d bytes", audit, disabled, len(b))
		}
		return nil
	})
}

// rsyslog is a running rsyslogd of a test.
type rsyslog struct {
	t      *testing.T
	bin    string
	conf   string
	addr   string
	cmd    *exec.Cmd
	logs   *bytes.Buffer
	exited chan error
}

// startRsyslog runs rsyslogd in the foreground with conf and waits until
// it accepts connections on addr; it is killed at the end of the test.
func startRsyslog(t *testing.T, bin, conf, addr string) *rsyslog {
	r := &rsyslog{t: t, bin: bin, conf: conf, addr: addr}
	r.start()
	t.Cleanup(func() {
		if r.cmd != nil {
			r.kill()
		}
	})
	return r
}

func (r *rsyslog) start() {
	t := r.t
	t.Helper()
	r.logs = &bytes.Buffer{}
	r.cmd = exec.Command(r.bin, "-n", "-f", r.conf, "-i", r.conf+".pid")
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan error) { exited <- cmd.Wait() }(r.cmd, r.exited)
	nodetest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		select {
		case err := <-r.exited:
			r.exited <- err
			t.Fatalf("rsyslogd exited: %v: %s", err, r.logs.String())
		default:
		}
		c, err := net.DialTimeout("tcp", r.addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// kill ends rsyslogd with SIGKILL: no flush, no goodbye to its clients.
func (r *rsyslog) kill() {
	r.cmd.Process.Kill()
	<-r.exited
	r.cmd = nil
}
