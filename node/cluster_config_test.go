package node

import (
	"strings"
	"testing"
)

func TestValidateCluster(t *testing.T) {
	peers := []Peer{{ID: "node1", RaftAddr: "127.0.0.1:7001"}, {ID: "node2", RaftAddr: "127.0.0.1:7002"}}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"single node", func(*Config) {}, ""},
		{"peers", func(c *Config) { c.Peers, c.TLSDir = peers, "/tls" }, ""},
		{"join", func(c *Config) { c.Join, c.TLSDir = "127.0.0.1:7001", "/tls" }, ""},
		{"nonvoter join", func(c *Config) { c.Join, c.Nonvoter, c.TLSDir = "127.0.0.1:7001", true, "/tls" }, ""},
		{"peers without tls", func(c *Config) { c.Peers = peers }, "node certificates"},
		{"join without tls", func(c *Config) { c.Join = "127.0.0.1:7001" }, "node certificates"},
		{"peers and join", func(c *Config) { c.Peers, c.Join, c.TLSDir = peers, "127.0.0.1:7001", "/tls" }, "exclusive"},
		{"self not in peers", func(c *Config) { c.Peers, c.TLSDir = peers[1:], "/tls" }, "do not include this node"},
		{"duplicate peer", func(c *Config) { c.Peers, c.TLSDir = append(peers, peers[1]), "/tls" }, "listed twice"},
		{"bad peer address", func(c *Config) { c.Peers, c.TLSDir = []Peer{{ID: "node1", RaftAddr: "nope"}}, "/tls" }, "raft address"},
		{"bad peer id", func(c *Config) { c.Peers, c.TLSDir = []Peer{peers[0], {ID: "a b", RaftAddr: "127.0.0.1:1"}}, "/tls" }, "not a node id"},
		{"self nonvoter peer", func(c *Config) {
			c.Peers, c.TLSDir = []Peer{{ID: "node1", RaftAddr: "127.0.0.1:1", Nonvoter: true}}, "/tls"
		}, "must be a voter"},
		{"nonvoter without join", func(c *Config) { c.Nonvoter = true }, "must join"},
		{"bad join", func(c *Config) { c.Join, c.TLSDir = "nohost", "/tls" }, "join address"},
		{"bad advertise", func(c *Config) { c.RaftAdvertise = "x" }, "advertise"},
		{"bad profile", func(c *Config) { c.RaftProfile = "moon" }, "raft profile"},
		{"zero max stale", func(c *Config) { c.MaxStale = 0 }, "max stale"},
		{"dev listens beyond loopback", func(c *Config) { c.Listen = "0.0.0.0:8080" }, "keeps everything on loopback"},
		{"dev nats beyond loopback", func(c *Config) { c.NATSListen = "10.0.0.1:4222" }, "nats listen"},
		{"dev on ::1", func(c *Config) { c.Listen = "[::1]:8080" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Dev = true
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}
