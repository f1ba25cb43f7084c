package raft_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tallyauth/tally/raft"
)

func TestApplyProfile(t *testing.T) {
	for _, tc := range []struct {
		profile   string
		heartbeat time.Duration
		batch     int
		wantErr   bool
	}{
		{raft.ProfileLAN, 500 * time.Millisecond, 64, false},
		{"", 500 * time.Millisecond, 64, false},
		{raft.ProfileWAN, 2500 * time.Millisecond, 256, false},
		{"moon", 0, 0, true},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			c := raft.DefaultConfig()
			c.ID, c.DataDir = "n1", t.TempDir()
			c.HeartbeatTimeout = time.Minute // overwritten by a valid profile
			err := c.ApplyProfile(tc.profile)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ApplyProfile(%q) = %v", tc.profile, err)
			}
			if tc.wantErr {
				return
			}
			if c.HeartbeatTimeout != tc.heartbeat || c.MaxAppendEntries != tc.batch {
				t.Errorf("heartbeat %v batch %d", c.HeartbeatTimeout, c.MaxAppendEntries)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("profile %q does not validate: %v", tc.profile, err)
			}
			if c.LeaderLeaseTimeout > c.HeartbeatTimeout || c.ElectionTimeout < c.HeartbeatTimeout {
				t.Errorf("inconsistent timing %+v", c)
			}
		})
	}
}

func TestValidateBootstrapServers(t *testing.T) {
	a := raft.Member{ID: "a", Addr: "127.0.0.1:1", Voter: true}
	b := raft.Member{ID: "b", Addr: "127.0.0.1:2", Voter: true}
	for _, tc := range []struct {
		name    string
		servers []raft.Member
		want    string
	}{
		{"ok", []raft.Member{a, b}, ""},
		{"self missing", []raft.Member{b}, "do not include this node"},
		{"duplicate", []raft.Member{a, b, b}, "listed twice"},
		{"self non-voter", []raft.Member{{ID: "a", Addr: "127.0.0.1:1"}, b}, "must be a voter"},
		{"no address", []raft.Member{a, {ID: "b", Voter: true}}, "address are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := raft.DefaultConfig()
			c.ID, c.DataDir, c.BootstrapServers = "a", t.TempDir(), tc.servers
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
