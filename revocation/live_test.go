package revocation

import (
	"fmt"
	"testing"
)

func TestJTISeenKeepsTheLastN(t *testing.T) {
	s := newJTISeen(3)
	for i := range 5 {
		if !s.add(fmt.Sprint(i)) {
			t.Fatalf("jti %d reported as seen before it was added", i)
		}
	}
	if s.add("4") {
		t.Fatal("a jti added again reported as new")
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := s.has(fmt.Sprint(i)); got != want {
			t.Errorf("has(%d) = %v, want %v (the last 3 are kept)", i, got, want)
		}
	}
}

func TestUnverifiedJTI(t *testing.T) {
	// {"alg":"none"} . {"jti":"tally-7-0","aud":["a","b"]} . (no signature)
	raw := "eyJhbGciOiJub25lIn0.eyJqdGkiOiJ0YWxseS03LTAiLCJhdWQiOlsiYSIsImIiXX0."
	if got := unverifiedJTI([]byte(raw)); got != "tally-7-0" {
		t.Errorf("unverifiedJTI = %q, want tally-7-0", got)
	}
	for _, bad := range []string{"", "not a jwt", "a.b.c", "eyJhbGciOiJub25lIn0.bm90IGpzb24."} {
		if got := unverifiedJTI([]byte(bad)); got != "" {
			t.Errorf("unverifiedJTI(%q) = %q, want empty", bad, got)
		}
	}
}

func TestConnectNATSEachRefusesBadConfig(t *testing.T) {
	ok := NATSConfig{URLs: "nats://127.0.0.1:1", Tenant: "default", ClientID: "rs", ClientSecret: "s"}
	for name, c := range map[string]NATSConfig{
		"no urls":        {Tenant: ok.Tenant, ClientID: ok.ClientID, ClientSecret: ok.ClientSecret},
		"no secret":      {URLs: ok.URLs, Tenant: ok.Tenant, ClientID: ok.ClientID},
		"wildcard id":    {URLs: ok.URLs, Tenant: ok.Tenant, ClientID: "rs.*", ClientSecret: "s"},
		"tenant with >":  {URLs: ok.URLs, Tenant: "a>", ClientID: ok.ClientID, ClientSecret: "s"},
		"not a nats url": {URLs: "nats://[::1", Tenant: ok.Tenant, ClientID: ok.ClientID, ClientSecret: "s"},
	} {
		conns, err := ConnectNATSEach(c)
		if err == nil {
			for _, nc := range conns {
				nc.Close()
			}
			t.Errorf("%s: ConnectNATSEach accepted %+v", name, c)
		}
	}
	// A server that is not up yet: one connection per URL, retrying.
	conns, err := ConnectNATSEach(NATSConfig{URLs: "nats://127.0.0.1:1, nats://127.0.0.1:2", Tenant: "default", ClientID: "rs", ClientSecret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	if len(conns) != 2 {
		t.Fatalf("%d connections for 2 URLs", len(conns))
	}
	for _, nc := range conns {
		if nc.IsConnected() || nc.IsClosed() {
			t.Errorf("connection to a closed port: connected %v, closed %v; want reconnecting", nc.IsConnected(), nc.IsClosed())
		}
	}
}
