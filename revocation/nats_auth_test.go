package revocation

import (
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// refusingAuth admits user "rs" with password "s" unless refusing is set,
// and counts the refusals it gave.
type refusingAuth struct {
	refusing atomic.Bool
	refused  atomic.Int64
}

func (a *refusingAuth) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	if a.refusing.Load() || o == nil || o.Username != "rs" || o.Password != "s" {
		a.refused.Add(1)
		return false
	}
	return true
}

func startAuthServer(t *testing.T, port int, auth server.Authentication) *server.Server {
	t.Helper()
	// The port was chosen and released (a restart must come back on the
	// same one): another process may hold it for a moment, so a server
	// that does not come up is tried again, within a minute.
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := server.NewServer(&server.Options{
			Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true,
			CustomClientAuthentication: auth,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if s.ReadyForConnections(5 * time.Second) {
			return s
		}
		s.Shutdown()
		s.WaitForShutdown()
		if time.Now().After(deadline) {
			t.Fatalf("nats server not ready on port %d within a minute", port)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A tally node refuses a resource server's credentials for a while after
// it restarts (until its replica has caught up with the leader, it cannot
// vouch for them). nats.go by default closes a connection for good after
// the same authorization error twice in a row; a connection of
// ConnectNATSEach is held to one server, so one restart of that node would
// end it for the rest of the resource server's run, and with every node
// restarted once (a rolling restart) the resource server would follow live
// revocations on none. The connections keep retrying instead.
func TestNATSConnectionsOutlastRefusalsOfARestartingServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	auth := &refusingAuth{}
	srv := startAuthServer(t, port, auth)
	c := NATSConfig{URLs: "nats://127.0.0.1:" + strconv.Itoa(port), Tenant: "default", ClientID: "rs", ClientSecret: "s"}
	each, err := ConnectNATSEach(c)
	if err != nil {
		t.Fatal(err)
	}
	main, err := ConnectNATS(c)
	if err != nil {
		t.Fatal(err)
	}
	conns := append([]*nats.Conn{main}, each...)
	t.Cleanup(func() {
		for _, nc := range conns {
			nc.Close()
		}
	})
	waitConnected := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for _, nc := range conns {
			for !nc.IsConnected() {
				if nc.IsClosed() {
					t.Fatalf("%s: a connection was closed for good (last error: %v)", what, nc.LastError())
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: a connection is not back after 30 s (status %v)", what, nc.Status())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	waitConnected("first connect")

	// The server restarts and refuses the credentials until several
	// reconnect attempts of every connection were refused.
	srv.Shutdown()
	srv.WaitForShutdown()
	auth.refusing.Store(true)
	srv = startAuthServer(t, port, auth)
	t.Cleanup(srv.Shutdown)
	deadline := time.Now().Add(30 * time.Second)
	for auth.refused.Load() < int64(3*len(conns)) {
		for _, nc := range conns {
			if nc.IsClosed() {
				t.Fatalf("a connection gave up after %d refusals (last error: %v)", auth.refused.Load(), nc.LastError())
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d refusals in 30 s", auth.refused.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	auth.refusing.Store(false)
	waitConnected("after the refusals")
}
